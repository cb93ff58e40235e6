"""Failure handling a lab can trust, tested with real processes: a second trainer on a live workdir, and a
training spread over two processes (jax.distributed on localhost, gloo CPU collectives) that must follow
the one-process run.

(Crashes, SIGTERM/SIGINT, kill -9 and a damaged newest checkpoint are in tests/test_resume.py; a full
disk and damaged files at the checkpointer level in tests/test_checkpoint.py; a full disk through the
script here.)
"""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from training.run import MetricsWriter

TINY = ["--num_layers=1", "--num_heads=2", "--d_model=32", "--mlp_dim=64", "--seq_len=16", "--batch_size=8",
        "--eval_every=10", "--eval_batches=2", "--log_every=2", "--warmup_steps=2"]


def train_lm(workdir, *flags, env=None, **popen):
    return subprocess.Popen([sys.executable, "-m", "scripts.train_lm", f"--workdir={workdir}", *TINY, *flags],
                            env=env, text=True, **popen)


def test_second_trainer_on_a_live_workdir_exits_1_naming_the_holder(tmp_path):
    first = train_lm(tmp_path, "--steps=400", "--checkpoint_every=50", stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = train_lm(tmp_path, "--steps=400", "--checkpoint_every=50", stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    _, err = second.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert second.returncode == 1 and len(lines) == 1, err
    assert f"is in use by a running training (pid {first.pid}" in lines[0]
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 400 and summary["resumed_from"] is None  # the first run was never disturbed
    steps = [r["step"] for r in MetricsWriter.read(tmp_path / "metrics.jsonl")]
    assert steps == list(range(2, 401, 2))  # one row per logged step, none doubled


def test_a_write_failure_mid_run_is_one_line_naming_the_step_and_the_rerun_resumes(tmp_path):
    """The disk stops taking checkpoint files mid-run (RLIMIT_FSIZE lowered on the live process: its writes
    fail with EFBIG as on a full disk, without root): the trainer exits 1 with one line naming the step whose
    save failed and the last good step, no traceback; once there is room again, the rerun resumes from the
    last good step and finishes."""
    # the child inherits an ignored SIGXFSZ, so a write over the limit fails with an error instead of killing it
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        run = train_lm(tmp_path, "--steps=100", "--checkpoint_every=10", stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGXFSZ, previous)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "10").is_dir() and time.time() < deadline and run.poll() is None:
        time.sleep(0.02)
    resource.prlimit(run.pid, resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))  # metrics stay below
    _, err = run.communicate(timeout=600)
    assert run.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-3000:]
    match = re.search(r"saving checkpoint step (\d+) under .* failed \(File too large\); the last good step (\d+) "
                      r"is intact", errors[0])
    assert match, errors[0]
    failed, good = int(match.group(1)), int(match.group(2))
    assert failed % 10 == 0 and good == failed - 10 and good >= 10
    assert not (tmp_path / "checkpoints" / str(failed)).exists()
    rerun = train_lm(tmp_path, "--steps=100", "--checkpoint_every=10", stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 100 and summary["resumed_from"] == good


def test_eval_output_path_is_checked_before_any_work(tmp_path):
    from rl.jssp import evaluate

    with pytest.raises(ValueError, match="out=.* is a directory"):
        evaluate.EvalConfig(solver="spt", out=str(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        evaluate.EvalConfig(solver="spt", out=str(tmp_path / "file" / "r.json"))
    evaluate.EvalConfig(solver="spt", out=str(tmp_path / "r.json"))  # a file in an existing directory: fine
    evaluate.EvalConfig(solver="spt", out=str(tmp_path / "missing" / "r.json"))  # in one it will make: fine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # about 50 s: three training processes
def test_two_processes_follow_the_one_process_run(tmp_path):
    """2 processes x 4 CPU devices (``--multihost`` with explicit coordinator flags) against 1 process x 8
    devices, same mesh (data:8) and global batch: the logged losses agree to float32 round-off (rtol 1e-5;
    the all-reduce runs over gloo in another order) and the run checkpoints collectively."""
    steps = ["--steps=6", "--checkpoint_every=3", "--mesh=data:8"]
    one = train_lm(tmp_path / "one", *steps, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert one.wait(timeout=600) == 0, one.stderr.read()[-2000:]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [train_lm(tmp_path / "two", *steps, "--multihost", f"--coordinator_address=127.0.0.1:{port}",
                      "--num_processes=2", f"--process_id={i}", env=env, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE) for i in range(2)]
    try:
        errors = [p.communicate(timeout=600)[1] for p in procs]
    finally:  # a hung collective must not outlive the test
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    assert "process 0 of 2" in errors[0] and "process 1 of 2" in errors[1]
    rows = {name: MetricsWriter.read(tmp_path / name / "metrics.jsonl") for name in ("one", "two")}
    assert [r["step"] for r in rows["one"]] == [r["step"] for r in rows["two"]] == [2, 4, 6]
    for key in ("loss", "grad_norm", "val_loss"):
        a = [r[key] for r in rows["one"] if key in r]
        b = [r[key] for r in rows["two"] if key in r]
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b, a, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]


@pytest.mark.slow  # about 60 s: three training processes
def test_two_processes_one_diloco_worker_each_follow_the_one_process_run(tmp_path):
    """Streaming DiLoCo with M=2 workers as 2 processes x 4 CPU devices (one worker per process, the outer
    all-gather between the processes over gloo) against 1 process x 8 devices: same losses (rtol 1e-5)."""
    flags = ["--steps=8", "--checkpoint_every=4", "--algo=streaming", "--workers=2", "--inner_steps=4",
             "--fragments=2", "--overlap_tau=1", "--alpha=0.6", "--outer_precision=fp4", "--eval_every=4",
             "--log_every=2", "--num_layers=2", "--num_heads=2", "--d_model=32", "--mlp_dim=64", "--seq_len=16",
             "--batch_size=8", "--eval_batches=2", "--warmup_steps=2"]

    def train_diloco(workdir, *more, **popen):
        return subprocess.Popen([sys.executable, "-m", "scripts.train_diloco", f"--workdir={workdir}", *flags, *more],
                                text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)

    one = train_diloco(tmp_path / "one")
    assert one.wait(timeout=600) == 0, one.stderr.read()[-2000:]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [train_diloco(tmp_path / "two", "--multihost", f"--coordinator_address=127.0.0.1:{port}",
                          "--num_processes=2", f"--process_id={i}", env=env) for i in range(2)]
    try:
        errors = [p.communicate(timeout=600)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    rows = {name: MetricsWriter.read(tmp_path / name / "metrics.jsonl") for name in ("one", "two")}
    assert [r["step"] for r in rows["one"]] == [r["step"] for r in rows["two"]] == [2, 4, 6, 8]
    for key in ("loss", "val_loss", "bytes_sent"):
        a = [r[key] for r in rows["one"] if key in r]
        b = [r[key] for r in rows["two"] if key in r]
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b, a, rtol=1e-5)
