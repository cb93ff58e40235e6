"""End-to-end resume of scripts.train_lm in subprocesses: SIGTERM and kill -9 at random moments.

An interrupted-and-resumed run must end with params, optimiser state and logged metrics identical,
bit for bit, to an uninterrupted run of the same command.
"""
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from event_scalars import assert_events_match_metrics
from parallel import checkpoint as ckpt_lib
from training.run import MetricsWriter

TINY_FLAGS = ["--num_layers=1", "--num_heads=2", "--d_model=32", "--mlp_dim=64", "--seq_len=16",
              "--batch_size=8", "--steps=80", "--eval_every=20", "--eval_batches=2", "--log_every=5",
              "--checkpoint_every=10", "--warmup_steps=5", "--mesh=data:-1"]
DETERMINISTIC_KEYS = ("step", "loss", "grad_norm", "val_loss", "val_bpb")


def command(workdir, *extra):
    return [sys.executable, "-m", "scripts.train_lm", f"--workdir={workdir}", *TINY_FLAGS, *extra]


def run_to_completion(workdir, *extra):
    out = subprocess.run(command(workdir, *extra), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def final_state(workdir):
    """The raw arrays of the newest checkpoint, restored onto one device."""
    return ckpt_lib.read_latest_raw(pathlib.Path(workdir) / "checkpoints")


def deterministic_rows(workdir):
    rows = MetricsWriter.read(pathlib.Path(workdir) / "metrics.jsonl")
    return [{k: r[k] for k in DETERMINISTIC_KEYS if k in r} for r in rows]


def assert_same_run(a, b):
    step_a, state_a = final_state(a)
    step_b, state_b = final_state(b)
    assert step_a == step_b == 80
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 5
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)  # bit for bit
    assert deterministic_rows(a) == deterministic_rows(b)
    # TensorBoard: the resumed run's event files hold its rows once each (the interrupted run's events after
    # the checkpoint dropped), and its curves are the uninterrupted run's
    scalars_a, scalars_b = assert_events_match_metrics(a), assert_events_match_metrics(b)
    assert {k: scalars_a[k] for k in DETERMINISTIC_KEYS[1:]} == {k: scalars_b[k] for k in DETERMINISTIC_KEYS[1:]}
    assert not [p for p in (pathlib.Path(b) / "checkpoints").iterdir() if ckpt_lib.TMP_MARKER in p.name]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    run_to_completion(workdir)
    return workdir


def wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def logged_step(workdir):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    rows = MetricsWriter.read(path) if path.exists() else []
    return max((r["step"] for r in rows), default=0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_sigterm_or_ctrl_c_checkpoints_exits_zero_and_resume_is_bit_identical(tmp_path, straight_run, signum):
    proc = subprocess.Popen(command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: logged_step(tmp_path) >= 25), "training never got going"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted, checkpointed" in err
    interrupted_at = ckpt_lib.Checkpointer(tmp_path / "checkpoints", mode="sync").latest_step()
    assert 25 <= interrupted_at < 80
    out = run_to_completion(tmp_path)
    assert f"resumed at step {interrupted_at}" in out.stderr
    assert_same_run(straight_run, tmp_path)


@pytest.mark.parametrize("trial", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow),
                                   pytest.param(3, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_always_resumes_a_finalized_step(tmp_path, straight_run, trial):
    rng = random.Random(trial)
    proc = subprocess.Popen(command(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt_dir = tmp_path / "checkpoints"
    finalized = lambda: [p for p in ckpt_dir.iterdir() if p.name.isdigit()] if ckpt_dir.exists() else []  # noqa: E731
    assert wait_for(lambda: finalized()), "no save was ever finalized"  # Orbax's atomic rename makes N
    time.sleep(rng.uniform(0.0, 0.6))  # ... then kill at a random moment: mid-step, mid-save or between
    proc.kill()
    proc.wait(timeout=60)
    out = run_to_completion(tmp_path)
    assert "resumed at step" in out.stderr, out.stderr[-2000:]  # a finalized step existed: it must be used
    assert_same_run(straight_run, tmp_path)


def test_damaged_newest_step_resumes_from_the_previous_one_without_a_crash_loop(tmp_path, straight_run):
    """Truncating the newest checkpoint's data files: the rerun reports it, sets it aside, resumes from
    the step before, saves the damaged step's number again and ends bit for bit like the straight run;
    a third run of the same command finds the finished run (no crash loop, no manual step)."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run, run_dir)
    newest = run_dir / "checkpoints" / "80" / "state"
    for victim in (p for p in newest.rglob("*") if p.is_file() and "/d/" in str(p)):  # every data file
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
    out = run_to_completion(run_dir)
    assert "damaged" in out.stderr and "resumed at step 70" in out.stderr, out.stderr[-2000:]
    assert_same_run(straight_run, run_dir)
    assert len(list((run_dir / "checkpoints").glob("80.damaged-*"))) == 1
    again = run_to_completion(run_dir)
    assert "resumed at step 80" in again.stderr
