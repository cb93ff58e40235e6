r"""Benchmark of parallel/checkpoint.py: blocking vs synchronous save, time to durable, memory, and the
end-to-end cost of checkpointing inside the LM experiment (:mod:`training.lm`).

Part 1, per state size (float32 pytree of 16 leaves) and mode (sync | async = plain Orbax async |
lazy = hand-over to a background thread): the seconds the caller is blocked by ``save``, the seconds
until the step is durable (``wait`` returns), and the extra resident memory at the peak of the save
(RSS sampled every 2 ms, minus the RSS before the save). The headline ratio is a mode's blocking time
over the synchronous save's wall time, both medians of ``repeats`` measured in the same process.

Part 2: ``training.lm``'s default configuration run for ``loop_steps`` steps with a checkpoint every K
steps, and without checkpoints, interleaved (each repeat runs every variant once) so that drift of a
shared machine hits all variants alike; the figure is the median steady-state step rate of each
variant over the baseline's (the first, compiling step excluded).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import statistics
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
from absl import logging

from parallel import checkpoint as ckpt_lib
from training import lm
from training import run as run_lib
from training.benchmarks import parse_list
from training.benchmarks.timing import interleaved
from training.config import from_flat


@dataclasses.dataclass(frozen=True)
class BenchCheckpointConfig:
    """Checkpoint benchmark settings.

    sizes_mb: State sizes in MiB for part 1 (comma-separated).
    modes: Checkpoint modes to compare (comma-separated: sync, async, lazy).
    repeats: Repeats per measurement (medians are reported).
    loop_steps: LM training steps per end-to-end run (0 skips part 2).
    every: Checkpoint intervals K for part 2 (comma-separated).
    loop_modes: Modes compared in part 2 (comma-separated).
    scratch_dir: Where checkpoints are written (default: a temporary directory).
    """
    # part 1: saves
    sizes_mb: str = "64,256,1024"
    modes: str = "sync,async,lazy"
    repeats: int = 3
    # part 2: the training loop
    loop_steps: int = 400
    every: str = "10,50,200"
    loop_modes: str = "lazy,async"
    scratch_dir: str = ""

    def __post_init__(self):
        run_lib.require_positive(self, "repeats", "loop_steps", allow_zero=("loop_steps",))
        for name in _LISTS:
            self.parsed(name)

    def parsed(self, name: str) -> list:
        """The comma-separated setting ``name`` as a list."""
        cast, allowed = _LISTS[name]
        return parse_list(name, getattr(self, name), cast, allowed)


# The list settings: (type of an entry, allowed entries or None).
_LISTS = {"sizes_mb": (int, None), "modes": (str, ckpt_lib.MODES), "every": (int, None),
          "loop_modes": (str, ckpt_lib.MODES)}


class RssSampler:
    """Peak resident set size (bytes) of this process over a window, sampled every ``period_s``."""

    def __init__(self, period_s: float = 0.002):
        self.period_s, self.peak, self._stop = period_s, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period_s)

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def make_state(size_mb: int, seed: int, leaves: int = 16):
    per_leaf = size_mb * 2**20 // 4 // leaves
    keys = jax.random.split(jax.random.PRNGKey(seed), leaves)
    state = {f"w{i:02d}": jax.random.normal(k, (per_leaf,), jnp.float32) for i, k in enumerate(keys)}
    return jax.block_until_ready(state)


def measure_save(directory: pathlib.Path, mode: str, state, step: int) -> dict:
    checkpointer = ckpt_lib.Checkpointer(directory, keep=1, mode=mode)
    with RssSampler() as rss:
        start = time.perf_counter()
        blocking = checkpointer.save(step, state, {"step": step})
        checkpointer.wait()
        durable = time.perf_counter() - start
    checkpointer.close()
    return {"blocking_s": blocking, "durable_s": durable, "extra_rss_mb": (rss.peak - rss.base) / 2**20}


def bench_saves(sizes_mb, modes, repeats, scratch: pathlib.Path) -> list[dict]:
    rows = []
    for size_mb in sizes_mb:
        state = make_state(size_mb, seed=size_mb)

        def save_once(rep, mode, size_mb=size_mb, state=state):
            directory = scratch / f"save_{size_mb}_{mode}"
            shutil.rmtree(directory, ignore_errors=True)
            result = measure_save(directory, mode, state, step=rep + 1)
            shutil.rmtree(directory, ignore_errors=True)
            return result

        # round 0 warms up every mode and is discarded
        runs = interleaved({mode: (lambda rep, mode=mode: save_once(rep, mode)) for mode in modes}, repeats)
        sync_wall = statistics.median(r["durable_s"] for r in runs["sync"]) if "sync" in runs else None
        for mode in modes:
            med = {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]}
            row = {"state_mb": size_mb, "mode": mode, **med,
                   "blocking_over_sync_save": med["blocking_s"] / sync_wall if sync_wall else None,
                   "repeats": [dict(r) for r in runs[mode]]}
            rows.append(row)
            logging.info("%5d MiB %-5s blocking %.4fs  durable %.3fs  extra RSS %.0f MiB  (%.1f%% of sync)",
                         size_mb, mode, med["blocking_s"], med["durable_s"], med["extra_rss_mb"],
                         100 * (row["blocking_over_sync_save"] or 0))
        del state
    return rows


def bench_training_loop(steps, every, loop_modes, repeats, scratch: pathlib.Path) -> list[dict]:
    variants = [("none", 0)] + [(mode, k) for k in every for mode in loop_modes]

    def train_once(rep, mode, k):
        workdir = scratch / f"loop_{mode}_{k}"
        shutil.rmtree(workdir, ignore_errors=True)
        cfg = from_flat(lm.TrainLMConfig, {"workdir": str(workdir), "steps": steps, "checkpoint_every": k,
                                           "checkpoint_mode": "lazy" if mode == "none" else mode,
                                           "eval_every": steps, "log_every": steps,
                                           "warmup_steps": min(100, steps)})
        summary = lm.train(cfg)
        logging.info("repeat %d  %-5s K=%-4s  %.2f steps/s", rep, mode, k or "-", summary["loop_steps_per_sec"])
        shutil.rmtree(workdir, ignore_errors=True)
        return summary["loop_steps_per_sec"]

    rates = interleaved({(mode, k): (lambda rep, mode=mode, k=k: train_once(rep, mode, k)) for mode, k in variants},
                        repeats, warmup=0)
    base = statistics.median(rates[("none", 0)])
    rows = []
    for mode, k in variants:
        med = statistics.median(rates[(mode, k)])
        rows.append({"mode": mode, "every": k, "steps_per_sec": med, "all_steps_per_sec": rates[(mode, k)],
                     "slowdown": base / med - 1.0})
    return rows


def run(cfg: BenchCheckpointConfig) -> dict:
    """Both parts (part 2 only if ``loop_steps``); the record: config, ``saves`` and ``training_loop`` rows."""
    scratch = pathlib.Path(cfg.scratch_dir or tempfile.mkdtemp(prefix="bench_ckpt_"))
    run_lib.require_workdir(str(scratch))
    try:
        saves = bench_saves(cfg.parsed("sizes_mb"), cfg.parsed("modes"), cfg.repeats, scratch)
        loop = (bench_training_loop(cfg.loop_steps, cfg.parsed("every"), cfg.parsed("loop_modes"), cfg.repeats,
                                    scratch) if cfg.loop_steps else [])
    finally:
        if not cfg.scratch_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"benchmark": "checkpoint", "config": dataclasses.asdict(cfg), "saves": saves, "training_loop": loop}


def format_table(record: dict) -> str:
    cfg = record["config"]
    lines = ["\nsave of a float32 state (medians of %d; blocking / sync = blocking time over a sync save's wall "
             "time)" % cfg["repeats"],
             f"{'MiB':>6} {'mode':<6} {'blocking s':>11} {'durable s':>10} {'blocking/sync':>14} {'extra RSS MiB':>14}"]
    for r in record["saves"]:
        ratio = f"{100 * r['blocking_over_sync_save']:.2f}%" if r["blocking_over_sync_save"] is not None else "-"
        lines.append(f"{r['state_mb']:>6} {r['mode']:<6} {r['blocking_s']:>11.4f} {r['durable_s']:>10.3f} "
                     f"{ratio:>14} {r['extra_rss_mb']:>14.0f}")
    if record["training_loop"]:
        lines += [f"\ntrain_lm default configuration, {cfg['loop_steps']} steps (medians of {cfg['repeats']})",
                  f"{'mode':<6} {'every K':>8} {'steps/s':>8} {'slowdown':>9}"]
        for r in record["training_loop"]:
            lines.append(f"{r['mode']:<6} {r['every'] or '-':>8} {r['steps_per_sec']:>8.2f} "
                         f"{100 * r['slowdown']:>8.2f}%")
    return "\n".join(lines)
