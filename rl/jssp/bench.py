r"""Environment throughput (``scripts/bench_jssp.py``: ``run(BenchJSSPConfig())``): the pure-JAX job-shop env
(jit + vmap over a batch) vs a plain-Python event-driven env with the same rules (:mod:`rl.jssp.pyenv`),
both dispatching with SPT.

For each size and batch, whole episodes (J*M dispatches each) are run on random instances; steps/s is
batch * J * M / wall time. JAX is warmed up (compiled) first and timed with ``block_until_ready``; figures
are medians of ``repeats``, JAX and Python measured side by side in this one process. The two
environments' makespans are checked to be identical.
"""
from __future__ import annotations

import dataclasses
import pathlib
import statistics
import time

import jax
import numpy as np

from rl.jssp import instances, pyenv, rules
from training import run as run_lib


@dataclasses.dataclass(frozen=True)
class BenchJSSPConfig:
    """The sizes of the environment benchmark (:func:`run`).

    sizes: Instance sizes JOBSxMACHINES.
    batches: Batch sizes of the JAX environment.
    python_instances: Instances the Python environment runs per repeat.
    repeats: Timed repeats (median reported).
    seed: Instance seed.
    out: Write the JSON results here.
    """
    sizes: str = "10x10,15x15,20x15"
    batches: str = "1,64,512"
    python_instances: int = 8
    repeats: int = 3
    seed: int = 0
    out: str = ""

    def __post_init__(self):
        run_lib.require_positive(self, "python_instances", "repeats")
        parse_sizes_and_batches(self.sizes, self.batches)
        run_lib.require_output_file("out", self.out)


def parse_sizes_and_batches(sizes: str, batches: str):
    try:
        size_list = [tuple(int(x) for x in s.split("x")) for s in sizes.split(",") if s]
        batch_list = [int(b) for b in batches.split(",") if b]
    except ValueError:
        raise ValueError(f"sizes={sizes!r} must look like 10x10,15x15 and batches={batches!r} like 1,64") from None
    if not size_list or any(len(s) != 2 or min(s) < 1 for s in size_list):
        raise ValueError(f"sizes={sizes!r} must be JOBSxMACHINES with positive numbers")
    if not batch_list or min(batch_list) < 1:
        raise ValueError(f"batches={batches!r} must be positive integers")
    return size_list, batch_list


def bench_jax(J, M, batch, repeats, seed):
    m, d = instances.random_batch_jax(jax.random.PRNGKey(seed), batch, J, M)
    jax.block_until_ready(rules.solve_batch(m, d, "spt"))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = jax.block_until_ready(rules.solve_batch(m, d, "spt"))
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return batch * J * M / t, t, np.asarray(state.job_ready).max(-1), (m, d)


def bench_python(m, d, count, repeats):
    m, d = np.asarray(m[:count]), np.asarray(d[:count])
    times, cmax = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = [pyenv.run_spt(m[i], d[i]) for i in range(count)]
        times.append(time.perf_counter() - t0)
        cmax = [r[0] for r in res]
    t = statistics.median(times)
    steps = sum(r[2] for r in res)
    return steps / t, t, np.asarray(cmax)


def bench(cfg: BenchJSSPConfig) -> list[dict]:
    """One row per (size, batch): JAX and Python steps/s, their wall times and the speed-up."""
    size_list, batch_list = parse_sizes_and_batches(cfg.sizes, cfg.batches)
    rows = []
    for J, M in size_list:
        big = max(batch_list + [cfg.python_instances])
        py_sps, py_t, py_cmax = None, None, None
        for batch in batch_list:
            sps, t, cmax, (m, d) = bench_jax(J, M, batch, cfg.repeats, cfg.seed)
            if py_sps is None:
                _, _, _, (mb, db) = bench_jax(J, M, big, 1, cfg.seed) if big != batch else (0, 0, 0, (m, d))
                py_sps, py_t, py_cmax = bench_python(mb, db, cfg.python_instances, cfg.repeats)
                jax_cmax = np.asarray(rules.solve_batch(mb[:cfg.python_instances], db[:cfg.python_instances],
                                                        "spt").job_ready).max(-1)
                if not np.array_equal(jax_cmax, py_cmax):
                    raise RuntimeError(f"{J}x{M}: JAX and Python SPT makespans differ: {jax_cmax} vs {py_cmax}")
            rows.append({"size": f"{J}x{M}", "batch": batch, "jax_steps_per_s": sps, "jax_wall_s": t,
                         "python_steps_per_s": py_sps, "python_wall_s_per_instance": py_t / cfg.python_instances,
                         "speedup": sps / py_sps})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'size':>7} {'batch':>6} {'JAX steps/s':>13} {'Python steps/s':>15} {'ratio':>8}"]
    for r in rows:
        lines.append(f"{r['size']:>7} {r['batch']:>6} {r['jax_steps_per_s']:>13.0f} {r['python_steps_per_s']:>15.0f} "
                     f"{r['speedup']:>8.2f}")
    return "\n".join(lines)


def run(cfg: BenchJSSPConfig) -> dict:
    """Runs the benchmark, prints its table and, given ``cfg.out``, writes the configuration, the machine
    and every row as JSON there; returns that record."""
    rows = bench(cfg)
    print(format_table(rows))
    record = {"config": {"sizes": cfg.sizes, "batches": cfg.batches, "python_instances": cfg.python_instances,
                         "repeats": cfg.repeats, "seed": cfg.seed, "policy": "spt"},
              "machine": run_lib.machine_info(), "rows": rows}
    if cfg.out:
        run_lib.write_json_atomic(pathlib.Path(cfg.out), record)
    return record
