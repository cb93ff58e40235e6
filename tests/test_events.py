"""TensorBoard event files beside metrics.jsonl (training/events.py): written row by row, read back, pruned on
resume; every trainer writes them (train_lm, train_diloco and train_jssp are checked where their runs are
tested: tests/test_lm_throughput.py, tests/test_resume.py, tests/test_diloco_resume.py,
tests/test_jssp_self_label.py; train_malloc and the AlgoPerf trial here)."""
import csv

import numpy as np
import pytest

from event_scalars import assert_events_match_metrics, assert_events_match_rows
from training import events
from training.run import MetricsWriter


def test_rows_round_trip_as_scalars_numbers_only(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "size": "10x10", "done": True, "n": np.int32(s), "nan": float("nan")}
            for s in (1, 2, 3)]
    with events.ScalarEventWriter(tmp_path) as writer:
        for row in rows:
            writer.write(row["step"], row)
    got = events.read_scalars(tmp_path)
    assert sorted(got) == ["loss", "n", "nan"]  # strings and bools are not scalars
    assert got["loss"] == [(1, 1.0), (2, 0.5), (3, float(np.float32(1 / 3)))]
    assert got["n"] == [(1, 1.0), (2, 2.0), (3, 3.0)] and np.isnan(got["nan"][0][1])


def test_resume_drops_the_events_after_its_step_and_appends_a_file(tmp_path):
    writer = events.ScalarEventWriter(tmp_path)
    for step in range(1, 6):
        writer.write(step, {"loss": float(step)})
    writer.close()
    resumed = events.ScalarEventWriter(tmp_path, resume_step=3)  # the checkpoint was at 3; 4 and 5 were logged
    for step in (4, 5):
        resumed.write(step, {"loss": 10.0 * step})
    resumed.close()
    assert events.read_scalars(tmp_path)["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert len(events.event_files(tmp_path)) == 2
    events.ScalarEventWriter(tmp_path)  # a fresh start: the earlier files go
    assert events.event_files(tmp_path) == [] and events.read_scalars(tmp_path) == {}


def test_a_torn_last_record_is_ignored_then_dropped_on_resume(tmp_path):
    """A run killed in the middle of writing an event: the reader stops before the torn record, and the
    resumed run rewrites the file without it (no corrupt file left for TensorBoard)."""
    with events.ScalarEventWriter(tmp_path) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"loss": float(step)})
    path = events.event_files(tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-7])
    assert events.read_scalars(tmp_path)["loss"] == [(1, 1.0), (2, 2.0)]
    events.ScalarEventWriter(tmp_path, resume_step=2)
    assert events.read_scalars(tmp_path)["loss"] == [(1, 1.0), (2, 2.0)]
    assert path.stat().st_size == sum(len(r) + 16 for r in events._records(path))


def test_metrics_writer_writes_both_and_resumes_both(tmp_path):
    metrics = MetricsWriter(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        metrics.write({"step": step, "loss": 0.5 * step, "family": "ta"})
    metrics.close()
    resumed = MetricsWriter(tmp_path / "metrics.jsonl", resume_step=2)
    resumed.write({"step": 3, "loss": 9.0})
    resumed.close()
    got = assert_events_match_metrics(tmp_path)
    assert got["loss"] == [(1, 0.5), (2, 1.0), (3, 9.0)]
    MetricsWriter(tmp_path / "other.jsonl", enabled=False).write({"step": 9, "loss": 1.0})  # process != 0
    assert [s for s, _ in events.read_scalars(tmp_path)["loss"]] == [1, 2, 3]


def test_train_malloc_writes_its_rows_as_scalars(tmp_path, monkeypatch):
    """train_malloc's rows reach the event files. Its MuZero iteration takes minutes to compile on 2 cores, so
    here it is replaced by a cheap one with the same signature (the real one: the slow
    tests/test_malloc_muzero.py::test_train_malloc_tiny_run_resumes_bit_for_bit checks its events too)."""
    import jax
    import jax.numpy as jnp

    from rl.malloc import train as train_malloc
    from training import config as config_lib

    real = train_malloc._components

    def components(mcfg, ncfg, total_updates):
        model, optimizer, _ = real(mcfg, ncfg, total_updates)

        def iteration(state, inst):
            key, sub = jax.random.split(state.key)
            return state._replace(key=key), {"loss": jax.random.uniform(sub), "selfplay_return": jnp.float32(0.25)}
        return model, optimizer, iteration

    monkeypatch.setattr(train_malloc, "_components", components)
    cfg = config_lib.from_flat(train_malloc.TrainMallocConfig, dict(
        workdir=str(tmp_path), steps=3, max_buffers=8, batch=2, unroll=2, replay_episodes=4, train_batch=4,
        updates_per_iter=1, width=8, num_heads=2, mlp_dim=16, repr_layers=1, eval_every=0, log_every=1,
        checkpoint_every=0))
    train_malloc.train(cfg)
    got = assert_events_match_metrics(tmp_path)
    assert [s for s, _ in got["loss"]] == [1, 2, 3] and got["selfplay_return"][0] == (1, 0.25)


def test_algoperf_trial_writes_its_measurements_as_scalars(tmp_path):
    """The trial folder gets the eval rows (and the final score) as scalars at their global steps."""
    from test_algoperf_runner import FakeClock, TinyWorkload, fake_submission, run

    clock = FakeClock()
    sub, _ = fake_submission(clock)
    log_dir = tmp_path / "trial_1"
    run(clock, TinyWorkload(clock), sub, log_dir=log_dir, max_global_steps=6, config={"a": 1})
    with open(log_dir / "measurements.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    got = assert_events_match_rows(log_dir, rows, step_key="global_step", skip=("preemption_count",))
    assert [s for s, _ in got["validation/accuracy"]] == [1, 5, 6]
    assert [s for s, _ in got["score"]] == [1, 5, 6, 6]  # each evaluation's, then the final row's (as the CSV)


def test_without_tensorboardx_a_run_goes_on_without_event_files(tmp_path, monkeypatch, caplog):
    """A copied tree on a machine that lacks tensorboardX (e.g. the GPU image): one warning, metrics.jsonl intact."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    monkeypatch.setattr(events, "_WARNED", [])
    metrics = MetricsWriter(tmp_path / "metrics.jsonl")
    metrics.write({"step": 1, "loss": 1.0})
    metrics.close()
    assert events.event_files(tmp_path) == [] and MetricsWriter.read(tmp_path / "metrics.jsonl")[0]["loss"] == 1.0
    assert "pip install tensorboardX" in caplog.text
