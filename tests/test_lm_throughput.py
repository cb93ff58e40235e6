"""Throughput figures (tokens/s, MFU) and the device check's parsing of both sides' outputs."""
import json
import pathlib
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from event_scalars import assert_events_match_metrics
from models.transformer import DecoderLM, TransformerConfig
from parallel import moe as moe_lib
from training import lm
from training import throughput as tp
from training.benchmarks import lm_device
from training.config import from_flat

DATA = pathlib.Path(__file__).parent / "data"


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("TPU v5 lite", 197e12), ("TPU v4", 275e12), ("cpu", None)])
def test_peak_flops_by_device_kind(kind, peak):
    assert tp.peak_flops(kind) == peak
    row = tp.throughput(10.0, 1000, 1e9, kind, 2)
    assert row["tokens_per_sec"] == 10_000
    assert row["mfu"] == ("unknown" if peak is None else pytest.approx(1e13 / (2 * peak)))


def test_flops_per_token_matches_xla_cost_of_the_forward():
    """6 N + 12 L d T is 3x the forward's matmul FLOPs; XLA's own count of the forward (matmuls plus a little
    elementwise work) must land just above a third of it."""
    cfg = TransformerConfig(vocab_size=256, num_layers=2, num_heads=4, d_model=256, mlp_dim=512, max_seq_len=128,
                            dtype="float32", attention="xla")
    model = DecoderLM(cfg)
    tokens = jnp.zeros((2, 128), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens)["params"])
    n = sum(x.size for x in jax.tree.leaves(params))
    forward = jax.jit(lambda p: model.apply({"params": p}, tokens)).lower(params).compile().cost_analysis()
    forward = forward[0] if isinstance(forward, list) else forward
    per_token = forward["flops"] / tokens.size
    formula = tp.flops_per_token(n, cfg.num_layers, cfg.d_model, 128)
    assert 1.0 <= per_token / (formula / 3) < 1.1, (per_token, formula / 3)


def test_active_params_count_routed_experts_only():
    cfg = TransformerConfig(vocab_size=32, num_layers=1, num_heads=2, d_model=16, mlp_dim=24, max_seq_len=8)
    moe = moe_lib.MoEConfig(num_experts=8, top_k=2)
    model = DecoderLM(cfg, ffn_factory=moe_lib.moe_ffn_factory(moe, None, hidden=12))
    params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    experts = sum(params["block_0"]["ffn"][k].size for k in ("w_gate", "w_up", "w_down"))
    total = sum(x.size for x in jax.tree.leaves(params))
    assert experts == 3 * 8 * 16 * 12
    assert tp.active_params(params, 2, 8) == total - experts + experts * 2 // 8
    assert tp.active_params(params) == total


def test_parse_nanogpt_log_from_the_h200_run():
    log = (DATA / "nanogpt_baby_h200.log").read_text()
    got = lm_device.parse_nanogpt(log, lm_device.BABY, "NVIDIA H200")
    # by hand: iterations 100..1900 not at an evaluation step (500, 1000, 1500 include one); iter 0 compiles
    times = [float(line.split("time ")[1].split("ms")[0]) for line in log.splitlines()
             if line.startswith("iter ") and int(line.split()[1][:-1]) % 500 and not line.startswith("iter 0:")]
    assert got["ms_per_step"] == pytest.approx(statistics.median(times))
    assert got["val_loss"]["2000"] == 1.4564 and got["val_loss"]["500"] == 1.7129
    assert got["parameters"] == 10_650_000
    assert got["tokens_per_sec"] == pytest.approx(64 * 256 * 1000 / got["ms_per_step"])
    assert got["mfu"] == pytest.approx(got["tokens_per_sec"] * (6 * 10.65e6 + 12 * 6 * 384 * 256) / 989e12)


def test_train_lm_rows_and_summary_carry_throughput(tmp_path):
    cfg = from_flat(lm.TrainLMConfig, dict(workdir=str(tmp_path), steps=6, log_every=2, eval_every=6,
                                           eval_batches=1, warmup_steps=1, num_layers=1, num_heads=2, d_model=32,
                                           mlp_dim=64, seq_len=16, batch_size=8))
    summary = lm.train(cfg)
    assert summary["dtype"] == "float32" and summary["attention"] == "xla"  # auto, resolved for the CPU
    assert summary["mfu"] == "unknown" and summary["tokens_per_sec"] == pytest.approx(
        summary["loop_steps_per_sec"] * 8 * 16)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["dtype"] == "float32"
    got = lm_device.parse_train_lm(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "tokens_per_sec" in r] == [2, 4, 6]  # step 1 (compiling) is left out
    assert got["ms_per_step"] == pytest.approx(1000 * 128 / statistics.median(
        r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r))
    assert got["val_loss"] == {"6": summary["val_loss"]} and np.isfinite(got["ms_per_step"])
    scalars = assert_events_match_metrics(tmp_path)  # TensorBoard: every number of every row, read back
    assert [s for s, _ in scalars["tokens_per_sec"]] == [2, 4, 6] and [s for s, _ in scalars["val_loss"]] == [6]


def test_rates_right_after_an_evaluation_match_the_others(tmp_path, monkeypatch):
    """The steps dispatched before an evaluation (asynchronous dispatch) finish before its timer starts, so
    their time is not subtracted from the row's as evaluation time: tokens/s of a row whose interval holds an
    evaluation (at steps 19 and 38, between the rows at 10, 20, 30, 40) matches the others. Before the fix
    the evaluation found its parameters still being computed and those rows read about twice the others."""
    ready_at_eval = []
    original = lm.evaluate

    def evaluate(eval_loss_fn, params, batches, mesh):
        ready_at_eval.append(all(x.is_ready() for x in jax.tree.leaves(params)))
        return original(eval_loss_fn, params, batches, mesh)

    monkeypatch.setattr(lm, "evaluate", evaluate)
    cfg = from_flat(lm.TrainLMConfig, dict(workdir=str(tmp_path), steps=40, log_every=10, eval_every=19,
                                           eval_batches=2, num_layers=1, num_heads=2, d_model=32, mlp_dim=64,
                                           seq_len=32, batch_size=16, checkpoint_every=0))
    lm.train(cfg)
    assert ready_at_eval == [True, True, True]  # steps 19, 38 and 40: every dispatched step done first
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rate = {r["step"]: r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r}
    assert sorted(rate) == [10, 20, 30, 40]
    clean = statistics.mean([rate[10], rate[30]])
    for step in (20, 40):  # their intervals hold the evaluations at steps 19 and 38
        assert 1 / 3 < rate[step] / clean < 3, rate  # generous: a shared, noisy machine
