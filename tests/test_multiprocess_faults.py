"""Multi-process runs under faults (jax.distributed, gloo, one CPU device per process): a worker killed with
-9 makes every other process exit within 60 s with one line naming it, and rerunning the same command on
every process resumes from the last checkpoint and ends bit for bit where an uninterrupted run ends.

Slow: each test runs several two-process trainings."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from parallel import checkpoint as ckpt_lib
from training.run import MetricsWriter

pytestmark = pytest.mark.slow

LM_FLAGS = ["--steps=40", "--checkpoint_every=10", "--log_every=5", "--eval_every=20", "--num_layers=2",
            "--num_heads=2", "--d_model=32", "--mlp_dim=64", "--seq_len=16", "--batch_size=8", "--eval_batches=2",
            "--warmup_steps=4", "--mesh=data:2", "--peer_timeout_s=10"]
DILOCO_FLAGS = ["--steps=40", "--checkpoint_every=10", "--log_every=5", "--eval_every=20", "--algo=streaming",
                "--workers=2", "--inner_steps=8", "--fragments=2", "--overlap_tau=2", "--outer_precision=fp4",
                "--num_layers=2", "--num_heads=2", "--d_model=32", "--mlp_dim=64", "--seq_len=16", "--batch_size=8",
                "--eval_batches=2", "--warmup_steps=4", "--peer_timeout_s=10"]
SCRIPTS = {"train_lm": LM_FLAGS, "train_diloco": DILOCO_FLAGS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, workdir: pathlib.Path, port: int, *more: str) -> list[subprocess.Popen]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    return [subprocess.Popen([sys.executable, "-m", f"scripts.{script}", f"--workdir={workdir}", *SCRIPTS[script],
                              *more, "--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                              f"--process_id={i}"], env=env, text=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE) for i in range(2)]


def finish(procs, timeout=600) -> list[str]:
    try:
        return [p.communicate(timeout=timeout)[1] for p in procs]
    finally:  # nothing outlives the test
        for p in procs:
            p.kill()


def logged_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    return max((r["step"] for r in MetricsWriter.read(path)), default=0) if path.exists() else 0


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def final_state(workdir: pathlib.Path):
    step, state = ckpt_lib.read_latest_raw(workdir / "checkpoints")
    return step, state


@pytest.mark.parametrize("script,victim", [("train_diloco", 1), ("train_lm", 1), ("train_diloco", 0)])
def test_a_killed_process_ends_the_others_with_one_line_and_the_rerun_ends_bit_for_bit(tmp_path, script, victim):
    """kill -9 of process ``victim`` mid-run: the survivor exits within 60 s -- for a lost worker with exit 1
    and one error line naming it (no traceback, no C++ abort); for a lost process 0, whose coordination
    service dies with it, by the runtime's own abort -- and the same command rerun on both processes
    resumes and ends equal to an uninterrupted run."""
    straight = finish(launch(script, tmp_path / "straight", _free_port()))
    assert all("Traceback" not in e for e in straight), straight
    procs = launch(script, tmp_path / "killed", _free_port())
    deadline = time.monotonic() + 600
    while logged_step(tmp_path / "killed") < 15 and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = procs[1 - victim]
    try:
        _, err = survivor.communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert time.monotonic() - killed_at < 60, "the survivor did not exit within 60 s"
    if victim == 0:
        # The coordination service lived in process 0: the survivor's runtime polls the error at once and
        # jaxlib ends the process itself (SIGABRT with its own message); its Python error callback cannot be
        # used (std::bad_cast in jaxlib 0.10.2), so this path is a runtime abort, bounded but not one line.
        assert survivor.returncode != 0 and "coordination service" in err, err[-3000:]
    else:
        assert survivor.returncode == 1, err[-3000:]
        lines = error_lines(err)
        assert len(lines) == 1 and "lost process 1 of 2" in lines[0] and "Rerun the same command" in lines[0], \
            err[-3000:]
        assert "Traceback" not in err and "Check failed" not in err and "Fatal" not in err, err[-3000:]

    rerun = finish(launch(script, tmp_path / "killed", _free_port()))
    assert all(not error_lines(e) for e in rerun), rerun
    (step_a, a), (step_b, b) = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    assert step_a == step_b == 40
    import jax

    jax.tree.map(np.testing.assert_array_equal, a, b)
    rows_a = MetricsWriter.read(tmp_path / "straight" / "metrics.jsonl")
    rows_b = MetricsWriter.read(tmp_path / "killed" / "metrics.jsonl")
    keys = ("loss", "val_loss")
    assert [[r.get(k) for k in keys] for r in rows_a] == [[r.get(k) for k in keys] for r in rows_b]


def test_consecutive_two_process_runs_that_save_finish_in_every_mode(tmp_path):
    """scripts/bench_multiprocess, one trial per checkpoint mode: 2 processes x 4 CPU devices, saves every 50
    steps, 120 steps. With the CPU client's default thread count (2 on this machine) every such trial stalled
    near its first save (results/checkpoint/multiprocess_default_threads.json); each must finish."""
    from training.benchmarks import multiprocess as mp

    cfg = mp.BenchMultiprocessConfig(workdir=str(tmp_path / "trials"), runs=1, steps=120, stall_timeout_s=120.0,
                                     run_timeout_s=600.0)
    record = mp.run(cfg)
    assert {mode: s["ok"] for mode, s in record["summary"].items()} == {"lazy": 1, "async": 1, "sync": 1}, \
        [(r["mode"], r["status"], r["error"]) for r in record["rows"]]
