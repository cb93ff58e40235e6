"""Generated test sets of job-shop instances with CP-SAT bounds (``scripts/make_jssp_instances.py``).

:func:`make_set` draws ``count`` instances of every family (:data:`rl.jssp.instances.DISTRIBUTIONS`) and
size, writes each in the standard format, and CP-SAT's best schedule and proven bound beside them
(``bounds.csv``, :func:`bounds_row`), so any solver can be evaluated on the set with its gaps
(``eval_jssp --instances=DIR --bounds=DIR/bounds.csv``).
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
from absl import logging

from rl.jssp import cpsat, instances, rules
from training import run as run_lib


@dataclasses.dataclass(frozen=True)
class MakeSetConfig:
    """A test set of generated instances with CP-SAT bounds (``scripts/make_jssp_instances.py``).

    out_dir: Directory that receives one instance file per instance (<family>_<size>_<i>.txt) and bounds.csv.
    families: Instance families (rl.jssp.instances.DISTRIBUTIONS), comma-separated.
    sizes: Sizes JOBSxMACHINES, comma-separated.
    count: Instances per family and size.
    seed: Seed of the set (the training run's validation sets use their own keys).
    bound_time_limit: CP-SAT seconds per instance for bounds.csv (upper_bound: its best schedule,
      lower_bound: its proven bound).
    workers: CP-SAT search workers.
    """
    out_dir: str = ""
    families: str = ",".join(instances.DISTRIBUTIONS)
    sizes: str = "20x15"
    count: int = 10
    seed: int = 2026
    bound_time_limit: float = 10.0
    workers: int = 1

    def __post_init__(self):
        instances.parse_distributions(self.families, "families")
        [instances.parse_size(s) for s in self.sizes.split(",")]
        run_lib.require_positive(self, "count", "workers")
        if not self.bound_time_limit > 0:
            raise ValueError(f"bound_time_limit={self.bound_time_limit} must be > 0 seconds")


def bounds_row(inst: instances.Instance, time_limit_s: float, workers: int, seed: int) -> dict:
    """upper_bound, lower_bound, status of one instance: CP-SAT's best schedule and proven bound; if CP-SAT
    finds no schedule in ``time_limit_s`` (large instances, short limits), FDD/MWKR's makespan and the simple
    lower bound, status RULE, so a set is always complete."""
    try:
        res = cpsat.solve(inst.machines, inst.durations, time_limit_s=time_limit_s, workers=workers, seed=seed)
        return {"upper_bound": res.makespan, "lower_bound": res.lower_bound, "status": res.status}
    except cpsat.NoScheduleFound:
        cmax, _ = rules.solve(inst.machines, inst.durations, "fdd_mwkr")
        return {"upper_bound": cmax, "lower_bound": instances.simple_lower_bound(inst.machines, inst.durations),
                "status": "RULE"}


def make_set(cfg: MakeSetConfig) -> list[dict]:
    """Writes the set's instance files and bounds.csv (rows: instance, family, upper_bound, lower_bound,
    status); returns the rows. Evaluate any solver on it with ``eval_jssp --instances=DIR
    --bounds=DIR/bounds.csv``."""
    if not cfg.out_dir:
        raise ValueError("out_dir='' is required (the directory that receives the instances and bounds.csv)")
    out = pathlib.Path(cfg.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for f, dist in enumerate(instances.parse_distributions(cfg.families, "families")):
        for size in cfg.sizes.split(","):
            J, M = instances.parse_size(size)
            key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), f), J * 100_003 + M)
            machines, durations = map(np.asarray, instances.generate_batch_jax(key, cfg.count, J, M, dist))
            for i in range(cfg.count):
                inst = instances.Instance(f"{dist.name}_{size}_{i:02d}", machines[i], durations[i])
                (out / f"{inst.name}.txt").write_text(instances.format_instance(inst))
                row = bounds_row(inst, cfg.bound_time_limit, cfg.workers, cfg.seed)
                rows.append({"instance": inst.name, "family": dist.name, **row})
                logging.info("%s: %s %d (bound %d)", inst.name, row["status"], row["upper_bound"],
                             row["lower_bound"])
    run_lib.write_csv_atomic(out / "bounds.csv", rows, list(rows[0]))
    return rows
