r"""Benchmark of parallel/checkpoint.py: blocking vs synchronous save, time to durable, memory, and
the end-to-end cost of checkpointing inside scripts/train_lm.py.

    python -m scripts.bench_checkpoint --out=bench_checkpoint.json
    python -m scripts.bench_checkpoint --sizes_mb=64,256 --loop_steps=0        # save part only

Part 1, per state size (float32 pytree of 16 leaves) and mode (sync | async = plain Orbax async |
lazy = hand-over to a background thread): the seconds the caller is blocked by ``save``, the seconds
until the step is durable (``wait`` returns), and the extra resident memory at the peak of the save
(RSS sampled every 2 ms, minus the RSS before the save). The headline ratio is a mode's blocking time
over the synchronous save's wall time, both medians of ``--repeats`` measured in the same process.

Part 2: ``train_lm``'s default configuration run for ``--loop_steps`` steps with a checkpoint every K
steps, and without checkpoints, interleaved (each repeat runs every variant once) so that drift of a
shared machine hits all variants alike; the figure is the median steady-state step rate of each
variant over the baseline's (the first, compiling step excluded).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import statistics
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from parallel import checkpoint as ckpt_lib
from scripts import common

flags.DEFINE_string("sizes_mb", "64,256,1024", "State sizes in MiB for part 1 (comma-separated).")
flags.DEFINE_string("modes", "sync,async,lazy", "Checkpoint modes to compare.")
flags.DEFINE_integer("repeats", 3, "Repeats per measurement (medians are reported).", lower_bound=1)
flags.DEFINE_integer("loop_steps", 400, "train_lm steps per end-to-end run (0 skips part 2).", lower_bound=0)
flags.DEFINE_string("every", "10,50,200", "Checkpoint intervals K for part 2.")
flags.DEFINE_string("loop_modes", "lazy,async", "Modes compared in part 2.")
flags.DEFINE_string("scratch_dir", "", "Where checkpoints are written (default: a temporary directory).")
flags.DEFINE_string("out", "", "Write every figure as JSON to this file.")
FLAGS = flags.FLAGS


def parse_list(flag_name: str, value: str, cast, allowed=None) -> list:
    try:
        items = [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{flag_name}={value!r} is not a comma-separated list of {cast.__name__}") from None
    bad = [v for v in items if (allowed is not None and v not in allowed) or (cast is int and v < 1)]
    if not items or bad:
        raise ValueError(f"--{flag_name}={value!r}: bad entries {bad}; allowed: {allowed or 'positive integers'}")
    return items


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
        runs = {mode: [] for mode in modes}
        for rep in range(repeats + 1):  # repeat 0 warms up every mode and is discarded
            for mode in modes:
                directory = scratch / f"save_{size_mb}_{mode}"
                shutil.rmtree(directory, ignore_errors=True)
                result = measure_save(directory, mode, state, step=rep + 1)
                if rep:
                    runs[mode].append(result)
                shutil.rmtree(directory, ignore_errors=True)
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
    from scripts import train_lm

    variants = [("none", 0)] + [(mode, k) for k in every for mode in loop_modes]
    rates: dict = {v: [] for v in variants}
    for rep in range(repeats):
        for mode, k in variants:
            workdir = scratch / f"loop_{mode}_{k}"
            shutil.rmtree(workdir, ignore_errors=True)
            cfg = train_lm.TrainLMConfig(workdir=str(workdir), steps=steps, checkpoint_every=k,
                                         checkpoint_mode="lazy" if mode == "none" else mode,
                                         eval_every=steps, log_every=steps)
            summary = train_lm.train(cfg)
            rates[(mode, k)].append(summary["loop_steps_per_sec"])
            logging.info("repeat %d  %-5s K=%-4s  %.2f steps/s", rep, mode, k or "-", summary["loop_steps_per_sec"])
            shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(rates[("none", 0)])
    rows = []
    for mode, k in variants:
        med = statistics.median(rates[(mode, k)])
        rows.append({"mode": mode, "every": k, "steps_per_sec": med, "all_steps_per_sec": rates[(mode, k)],
                     "slowdown": base / med - 1.0})
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sizes = parse_list("sizes_mb", FLAGS.sizes_mb, int)
    modes = parse_list("modes", FLAGS.modes, str, ckpt_lib.MODES)
    every = parse_list("every", FLAGS.every, int)
    loop_modes = parse_list("loop_modes", FLAGS.loop_modes, str, ckpt_lib.MODES)
    common.quiet_library_logs()
    scratch = pathlib.Path(FLAGS.scratch_dir or tempfile.mkdtemp(prefix="bench_ckpt_"))
    common.require_workdir(str(scratch))
    try:
        saves = bench_saves(sizes, modes, FLAGS.repeats, scratch)
        loop = bench_training_loop(FLAGS.loop_steps, every, loop_modes, FLAGS.repeats, scratch) if FLAGS.loop_steps else []
    finally:
        if not FLAGS.scratch_dir:
            shutil.rmtree(scratch, ignore_errors=True)

    print("\nsave of a float32 state (medians of %d; blocking / sync = blocking time over a sync save's wall time)"
          % FLAGS.repeats)
    print(f"{'MiB':>6} {'mode':<6} {'blocking s':>11} {'durable s':>10} {'blocking/sync':>14} {'extra RSS MiB':>14}")
    for r in saves:
        ratio = f"{100 * r['blocking_over_sync_save']:.2f}%" if r["blocking_over_sync_save"] is not None else "-"
        print(f"{r['state_mb']:>6} {r['mode']:<6} {r['blocking_s']:>11.4f} {r['durable_s']:>10.3f} {ratio:>14} "
              f"{r['extra_rss_mb']:>14.0f}")
    if loop:
        print(f"\ntrain_lm default configuration, {FLAGS.loop_steps} steps (medians of {FLAGS.repeats})")
        print(f"{'mode':<6} {'every K':>8} {'steps/s':>8} {'slowdown':>9}")
        for r in loop:
            print(f"{r['mode']:<6} {r['every'] or '-':>8} {r['steps_per_sec']:>8.2f} {100 * r['slowdown']:>8.2f}%")
    if FLAGS.out:
        report = {"benchmark": "checkpoint", "config": {k: FLAGS[k].value for k in
                                                        ("sizes_mb", "modes", "repeats", "loop_steps", "every",
                                                         "loop_modes")},
                  "machine": common.machine_info(),
                  "saves": saves, "training_loop": loop}
        pathlib.Path(FLAGS.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
