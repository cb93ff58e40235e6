"""training/diloco.py: a run stopped in the middle of an outer step (a fragment's τ-delayed merge
still pending) and resumed through parallel/checkpoint.py ends bit for bit like an uninterrupted run,
metrics rows and byte counters included; bad flags fail before any training."""
import pathlib

import jax
import numpy as np
import pytest

from event_scalars import assert_events_match_metrics
from parallel import checkpoint as ckpt_lib
from training import diloco as train_diloco
from training import run as common
from training.config import from_flat

TINY = dict(num_layers=2, num_heads=2, d_model=32, mlp_dim=64, seq_len=16, batch_size=8, steps=12, warmup_steps=2,
            eval_every=6, eval_batches=2, log_every=2, checkpoint_every=5, algo="streaming", workers=2,
            inner_steps=4, fragments=2, overlap_tau=1, alpha=0.6, outer_precision="fp4")


def final_arrays(workdir):
    step, tree = ckpt_lib.read_latest_raw(pathlib.Path(workdir) / "checkpoints")
    return step, jax.tree.leaves(tree)


def test_resume_mid_outer_step_is_bit_identical(devices, tmp_path):
    straight = train_diloco.train(from_flat(train_diloco.TrainDiLoCoConfig, dict(workdir=str(tmp_path / "a"), **TINY)))
    # step 6: fragment 1 synced at 6, its merge (τ = 1) is due at 7; fragment 0 is half-way (syncs at 8)
    first = train_diloco.train(from_flat(train_diloco.TrainDiLoCoConfig,
                                         dict(workdir=str(tmp_path / "b"), stop_after=6, **TINY)))
    assert first["step"] == 6 and first["preempted"]
    resumed = train_diloco.train(from_flat(train_diloco.TrainDiLoCoConfig, dict(workdir=str(tmp_path / "b"), **TINY)))
    assert resumed["resumed_from"] == 6 and resumed["step"] == 12
    step_a, leaves_a = final_arrays(tmp_path / "a")
    step_b, leaves_b = final_arrays(tmp_path / "b")
    assert step_a == step_b == 12 and len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)
    rows = lambda d: common.MetricsWriter.read(pathlib.Path(d) / "metrics.jsonl")  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert assert_events_match_metrics(tmp_path / "a") == assert_events_match_metrics(tmp_path / "b")  # TensorBoard
    for key in ("bytes_sent", "peak_bytes", "mesh_bytes_sent", "payload_bytes", "syncs", "val_loss"):
        assert straight[key] == resumed[key], key
    # 12 steps, H=4, P=2: fragment 1 syncs at 2, 6, 10 and fragment 0 at 4, 8, 12
    assert straight["syncs"] == 6
    # the byte budget computed without training is what the run counted
    budget = train_diloco.byte_budget(from_flat(train_diloco.TrainDiLoCoConfig, dict(workdir=str(tmp_path / "c"), **TINY)))
    assert budget == {k: straight[k] for k in budget}


def test_comparison_counts_dp_between_the_same_m_workers():
    """DP's bytes are compared over the link between each row's M workers: 2 (M-1)/M of its gradient bytes
    per step (a hierarchical all-reduce), not its ring over every device."""
    dp = {"algo": "dp", "workers": 2, "inner_steps": 1, "fragments": 1, "overlap_tau": 0, "outer_precision": "fp32",
          "step": 10, "val_loss": 2.0, "payload_bytes": 1000, "peak_payload_bytes": 100, "bytes_sent": 1000.0,
          "peak_bytes": 100.0, "mesh_bytes_sent": 1750.0}
    sd = {**dp, "algo": "streaming", "workers": 4, "inner_steps": 5, "bytes_sent": 30.0, "peak_bytes": 15.0,
          "mesh_bytes_sent": 1530.0, "val_loss": 2.1}
    row = train_diloco.comparison_table([("sd", sd), ("dp", dp)])[0]
    assert row["bytes_reduction_vs_dp"] == pytest.approx(1500 / 30)  # 2 * 3/4 * 1000 between 4 workers
    assert row["peak_reduction_vs_dp"] == pytest.approx(150 / 15)
    assert row["mesh_bytes_reduction_vs_dp"] == pytest.approx(1750 / 1530)
    assert row["val_loss_ratio_to_dp"] == pytest.approx(1.05)


@pytest.mark.parametrize("overrides,needle", [
    (dict(inner_steps=30, fragments=4), "inner_steps=30 must be a multiple of fragments=4"),
    (dict(inner_steps=4, fragments=2, overlap_tau=2), "overlap_tau=2 must be < inner_steps/fragments"),
    (dict(alpha=2.0), "alpha=2.0 must be in [0, 1]"),
    (dict(batch_size=9), "batch_size=9 must be a multiple of"),
])
def test_bad_flags_raise_before_training(tmp_path, overrides, needle):
    with pytest.raises(ValueError) as e:
        from_flat(train_diloco.TrainDiLoCoConfig, dict(workdir=str(tmp_path), **{**TINY, **overrides}))
    assert needle in str(e.value)
    assert not any(tmp_path.iterdir())


def test_workers_not_dividing_the_devices_fails_before_training(devices, tmp_path):
    cfg = from_flat(train_diloco.TrainDiLoCoConfig,
                    dict(workdir=str(tmp_path / "w3"), **{**TINY, "workers": 3, "batch_size": 9}))
    with pytest.raises(ValueError, match="workers=3 must divide the number of devices 8"):
        train_diloco.train(cfg)
    assert not (tmp_path / "w3").exists()
