"""End-to-end resume of scripts.train_lm in subprocesses: SIGTERM and kill -9 at random moments.

An interrupted-and-resumed run must end with params, optimiser state and logged metrics identical,
bit for bit, to an uninterrupted run of the same command.
"""
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from parallel import checkpoint as ckpt_lib
from scripts.common import MetricsWriter

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
    ck = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", keep=2, mode="sync")
    step = ck.latest_step()
    tree = ck._manager.restore(step, args=ckpt_lib.ocp.args.Composite(
        state=ckpt_lib.ocp.args.StandardRestore(None)))["state"]
    ck.close()
    return step, jax.tree.map(np.asarray, tree)


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


def test_sigterm_checkpoints_exits_zero_and_resume_is_bit_identical(tmp_path, straight_run):
    proc = subprocess.Popen(command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: logged_step(tmp_path) >= 25), "training never got going"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted, checkpointed" in err
    interrupted_at = ckpt_lib.Checkpointer(tmp_path / "checkpoints", mode="sync").latest_step()
    assert 25 <= interrupted_at < 80
    out = run_to_completion(tmp_path)
    assert f"resumed at step {interrupted_at}" in out.stderr
    assert_same_run(straight_run, tmp_path)


@pytest.mark.parametrize("trial", [0, 1, pytest.param(2, marks=pytest.mark.slow),
                                   pytest.param(3, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_always_resumes_a_finalized_step(tmp_path, straight_run, trial):
    rng = random.Random(trial)
    proc = subprocess.Popen(command(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt_dir = tmp_path / "checkpoints"
    assert wait_for(lambda: ckpt_dir.exists() and any(ckpt_dir.iterdir())), "no save ever started"
    time.sleep(rng.uniform(0.0, 0.6))
    proc.kill()
    proc.wait(timeout=60)
    out = run_to_completion(tmp_path)
    finalized_before = [s for s in ("resumed at step",) if s in out.stderr]
    assert finalized_before or "from scratch" in out.stderr
    assert_same_run(straight_run, tmp_path)
