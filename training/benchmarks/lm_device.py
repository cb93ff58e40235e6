"""``train_lm`` against nanoGPT on one GPU, side by side in one run (tools/device_check_lm.py).

Each part is one process (a fresh compile, as a user would run it) under its own time limit, so a part
that fails or overruns leaves the others' figures. Our side's figures come from the run's own files
(``metrics.jsonl`` rows carry the step rate since the previous row, evaluation time left out, so the
median over rows is the steady-state step time; ``summary.json``); nanoGPT's from its log lines
(``iter N: loss L, time Tms, mfu M%``, ``step N: train loss A, val loss B``), its MFU recomputed with
our formula (:mod:`training.throughput`) since nanoGPT's own assumes an A100's peak.
"""
from __future__ import annotations

import json
import pathlib
import re
import statistics
import subprocess
import time

from training import throughput as throughput_lib

BABY = dict(num_layers=6, num_heads=6, d_model=384, seq_len=256, batch_size=64)
GPT2_SMALL = dict(num_layers=12, num_heads=12, d_model=768, seq_len=1024, batch_size=12)


def train_lm_args(shape: dict, mlp_dim: int, steps: int, eval_every: int, eval_batches: int, log_every: int,
                  **extra) -> list[str]:
    """``scripts.train_lm`` flags for one of the shapes above (nanoGPT's optimiser recipe is our default)."""
    flags = {**shape, "mlp_dim": mlp_dim, "steps": steps, "eval_every": eval_every, "eval_batches": eval_batches,
             "log_every": log_every, "checkpoint_every": 0, **extra}
    return [f"--{k}={v}" for k, v in flags.items()]


def nanogpt_args(shape: dict, dropout: float, iters: int, eval_interval: int, eval_iters: int,
                 log_interval: int, out_dir: str) -> list[str]:
    """nanoGPT ``train.py`` arguments for a shape (on top of config/train_shakespeare_char.py)."""
    flags = {"n_layer": shape["num_layers"], "n_head": shape["num_heads"], "n_embd": shape["d_model"],
             "block_size": shape["seq_len"], "batch_size": shape["batch_size"], "dropout": dropout,
             "max_iters": iters, "lr_decay_iters": iters, "eval_interval": eval_interval,
             "eval_iters": eval_iters, "log_interval": log_interval, "out_dir": out_dir}
    return ["config/train_shakespeare_char.py"] + [f"--{k}={v}" for k, v in flags.items()]


ITER_LINE = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms, mfu (-?[\d.]+)%")
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
PARAMS_LINE = re.compile(r"number of parameters: ([\d.]+)M")


def parse_nanogpt(log: str, shape: dict, device_kind: str, skip_iters: int = 1) -> dict:
    """nanoGPT's figures from its log: median ms/iter over the logged iterations after ``skip_iters`` (the
    first ones include torch.compile) that are not evaluation steps, tokens/s, MFU (our formula) and the
    validation losses by step."""
    times = [(int(m[1]), float(m[3])) for m in map(ITER_LINE.match, log.splitlines()) if m]
    evals = {int(m[1]): {"train_loss": float(m[2]), "val_loss": float(m[3])}
             for m in map(EVAL_LINE.match, log.splitlines()) if m}
    # an iteration that follows an evaluation times the evaluation too (ours leaves evaluation out)
    steady = [t for it, t in times if it >= skip_iters and it not in evals] or [t for _, t in times]
    params = PARAMS_LINE.search(log)
    out = {"ms_per_step": statistics.median(steady) if steady else None, "logged_iters": len(times),
           "val_loss": {str(k): v["val_loss"] for k, v in sorted(evals.items())},
           "parameters": int(float(params[1]) * 1e6) if params else None}
    if out["ms_per_step"] and out["parameters"]:
        per_token = throughput_lib.flops_per_token(out["parameters"], shape["num_layers"], shape["d_model"],
                                                   shape["seq_len"])
        out.update(throughput_lib.throughput(1000.0 / out["ms_per_step"], shape["batch_size"] * shape["seq_len"],
                                             per_token, device_kind, 1))
    return out


def parse_train_lm(workdir: pathlib.Path) -> dict:
    """Our figures from a run's workdir: median ms/step over the metrics rows (each row's rate covers the
    steps since the previous row, the first compiling step and evaluations left out), tokens/s, MFU and the
    validation losses by step, beside the summary's end-to-end figures."""
    config = json.loads((workdir / "config.json").read_text())
    tokens_per_step = config["batch_size"] * config["seq_len"]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((workdir / "summary.json").read_text())
    rated = [r for r in rows if isinstance(r.get("tokens_per_sec"), (int, float))]
    tokens = statistics.median(r["tokens_per_sec"] for r in rated) if rated else None
    mfus = [r["mfu"] for r in rated if isinstance(r.get("mfu"), (int, float))]
    return {"ms_per_step": 1000.0 * tokens_per_step / tokens if tokens else None, "tokens_per_sec": tokens,
            "mfu": statistics.median(mfus) if mfus else "unknown",
            "val_loss": {str(r["step"]): r["val_loss"] for r in rows if "val_loss" in r},
            "dtype": config["model"]["dtype"], "attention": config["model"]["attention"], "summary": summary}


def run_part(name: str, command: list[str], cwd: str | None, timeout_s: float, log) -> tuple[str, float, int]:
    """Runs one part, echoing its progress lines and keeping its whole output; (output, wall s, exit code)."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        output += (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        code = -9
    wall = time.perf_counter() - start
    log.write(f"\n===== {name} (exit {code}, {wall:.1f} s)\n{output}")
    log.flush()
    for line in output.splitlines():
        if any(key in line for key in ("step ", "iter ", "done at", "Error", "error", "attention", "WARNING")):
            print("   ", line[-200:], flush=True)
    print(f"   {name}: exit {code}, {wall:.1f} s", flush=True)
    return output, wall, code

