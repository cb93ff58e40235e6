r"""Consecutive multi-process runs, counted: does every run finish, per checkpoint mode?

Each trial is one ``train_lm`` (or ``train_diloco``) run of P processes (``jax.distributed`` on 127.0.0.1,
gloo on CPU, D virtual devices each) with periodic checkpoints, started and bounded by
:func:`training.link.workers.run_workers`. A trial ends ``ok`` (every process exited 0), ``stalled`` (a
process's watchdog found no finished step for ``stall_timeout_s`` and ended the run with its one line),
``lost`` (a watchdog named a lost peer), ``failed`` (any other non-zero exit) or ``timeout`` (the harness
killed a run that outlived ``run_timeout_s``: a hang the watchdog did not catch). The record is written
after every trial and a rerun skips the trials already recorded.

The configuration the README's reliability claim is about: 2 processes x 4 CPU devices, the default LM,
400 steps, a checkpoint every 50 (before the fix 5 of 6 such runs stopped for good after a save).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import socket
import sys

from absl import logging

from parallel import checkpoint as ckpt_lib
from training import run as run_lib
from training.benchmarks import parse_list
from training.link import workers

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ("train_lm", "train_diloco")


@dataclasses.dataclass(frozen=True)
class BenchMultiprocessConfig:
    """Multi-process reliability benchmark settings.

    workdir: Where the trials run (one folder each, removed after a finished trial) and the record goes.
    out: The record (JSON; default WORKDIR/multiprocess.json).
    runs: Consecutive trials per checkpoint mode.
    modes: Checkpoint modes, comma-separated from lazy, async, sync.
    script: train_lm or train_diloco.
    processes: Processes per trial (>= 2).
    devices: Virtual CPU devices per process.
    steps: Training steps per trial.
    checkpoint_every: Save every this many steps.
    train_flags: More flags for the training script (e.g. '--batch_size=16').
    run_timeout_s: A trial still running after this is killed and counted as a timeout.
    stall_timeout_s: The trainers' own stall limit (their watchdog ends a run with one line).
    """
    workdir: str = ""
    out: str = ""
    runs: int = 20
    modes: str = "lazy,async,sync"
    script: str = "train_lm"
    processes: int = 2
    devices: int = 4
    steps: int = 400
    checkpoint_every: int = 50
    train_flags: str = "--batch_size=16 --log_every=50 --eval_every=400"
    run_timeout_s: float = 1800.0
    stall_timeout_s: float = 300.0

    def __post_init__(self):
        run_lib.require_positive(self, "runs", "devices", "steps", "checkpoint_every")
        run_lib.require_output_file("out", self.out)
        if not isinstance(self.processes, int) or self.processes < 2:
            raise ValueError(f"processes={self.processes!r} must be an integer >= 2")
        if self.script not in SCRIPTS:
            raise ValueError(f"script={self.script!r}; allowed: {', '.join(SCRIPTS)}")
        self.mode_list  # noqa: B018 (validates)
        for name in ("run_timeout_s", "stall_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")

    @property
    def mode_list(self) -> list[str]:
        return parse_list("modes", self.modes, str, ckpt_lib.MODES)

    @property
    def out_path(self) -> pathlib.Path:
        return pathlib.Path(self.out or pathlib.Path(self.workdir) / "multiprocess.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_commands(cfg: BenchMultiprocessConfig, run_dir: pathlib.Path, mode: str, port: int) -> list[list[str]]:
    return [[sys.executable, "-m", f"scripts.{cfg.script}", f"--workdir={run_dir}", f"--steps={cfg.steps}",
             f"--checkpoint_every={cfg.checkpoint_every}", f"--checkpoint_mode={mode}",
             f"--stall_timeout_s={cfg.stall_timeout_s}", *cfg.train_flags.split(), "--multihost",
             f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={cfg.processes}", f"--process_id={i}"]
            for i in range(cfg.processes)]


def classify(result: workers.WorkersResult, logs: list[pathlib.Path]) -> tuple[str, str]:
    """(status, the first error line of the trial's logs)."""
    lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()
             if line.startswith("error:")] if logs else []
    first = lines[0] if lines else ""
    if result.status == "ok":
        return "ok", first
    if result.status == "timeout":
        return "timeout", first
    if "no training step finished" in first:
        return "stalled", first
    if "lost process" in first or "lost the coordinator" in first:
        return "lost", first
    return "failed", first or workers.tail(logs[result.first_failure], 2)


def run_trial(cfg: BenchMultiprocessConfig, mode: str, index: int) -> dict:
    run_dir = pathlib.Path(cfg.workdir) / f"{mode}_{index}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={cfg.devices}",
               PYTHONUNBUFFERED="1")
    logs = [run_dir / f"process_{i}.log" for i in range(cfg.processes)]
    result = workers.run_workers(trial_commands(cfg, run_dir, mode, _free_port()), [env] * cfg.processes, logs,
                                 timeout_s=cfg.run_timeout_s, cwd=REPO)
    status, line = classify(result, logs)
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) \
        if (run_dir / "checkpoints").exists() else []
    row = {"mode": mode, "run": index, "status": status, "wall_s": round(result.wall_s, 1),
           "returncodes": list(result.returncodes), "error": line, "checkpoints": steps}
    if status == "ok":
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def summary(rows: list[dict], modes: list[str]) -> dict:
    out = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        out[mode] = {"trials": len(mine), **{s: sum(r["status"] == s for r in mine)
                                             for s in ("ok", "stalled", "lost", "failed", "timeout")}}
    return out


def run(cfg: BenchMultiprocessConfig) -> dict:
    run_lib.require_workdir(cfg.workdir)
    path = cfg.out_path
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.exists() else {"rows": []}
    record["config"] = dataclasses.asdict(cfg)
    record["provenance"] = run_lib.provenance(run_lib.command_line("scripts.bench_multiprocess", cfg, skip=()))
    done = {(r["mode"], r["run"]) for r in record["rows"]}
    with workers.signals_as_exceptions():
        for mode in cfg.mode_list:
            for index in range(cfg.runs):
                if (mode, index) in done:
                    continue
                row = run_trial(cfg, mode, index)
                record["rows"].append(row)
                record["summary"] = summary(record["rows"], cfg.mode_list)
                run_lib.write_json_atomic(path, record)
                logging.info("trial %s #%d: %s in %.0f s %s", mode, index, row["status"], row["wall_s"], row["error"])
    record["summary"] = summary(record["rows"], cfg.mode_list)
    run_lib.write_json_atomic(path, record)
    return record


def format_table(record: dict) -> str:
    lines = [f"{'mode':<6} {'trials':>6} {'ok':>4} {'stalled':>8} {'lost':>5} {'failed':>7} {'timeout':>8}"]
    for mode, s in record["summary"].items():
        lines.append(f"{mode:<6} {s['trials']:>6} {s['ok']:>4} {s['stalled']:>8} {s['lost']:>5} {s['failed']:>7} "
                     f"{s['timeout']:>8}")
    return "\n".join(lines)
