"""Independent schedule validator in plain NumPy (no JAX, no code shared with the environment).

A schedule is ``start_times[j, o]``: the start of job j's o-th operation (in its processing order).
It is feasible when every start is a non-negative integer, each job's operations run in order without
overlap (precedence), and no two operations on one machine overlap. The makespan is the latest end.
"""
from __future__ import annotations

import numpy as np


class InfeasibleSchedule(ValueError):
    """The schedule violates a constraint; the message says which."""


def check_schedule(machines, durations, start_times) -> int:
    """Raises InfeasibleSchedule for any violation; returns the recomputed makespan."""
    machines = np.asarray(machines)
    durations = np.asarray(durations, dtype=np.int64)
    start = np.asarray(start_times)
    if start.shape != machines.shape:
        raise InfeasibleSchedule(f"start_times has shape {start.shape}, expected {machines.shape}")
    if not np.issubdtype(start.dtype, np.integer):
        if not np.all(np.equal(np.mod(start, 1), 0)):
            raise InfeasibleSchedule("start_times must be integers")
    start = start.astype(np.int64)
    if (start < 0).any():
        j, o = np.argwhere(start < 0)[0]
        raise InfeasibleSchedule(f"job {j} operation {o} has negative start {start[j, o]} (unscheduled?)")
    end = start + durations
    n_jobs, n_ops = machines.shape
    for j in range(n_jobs):
        for o in range(1, n_ops):
            if start[j, o] < end[j, o - 1]:
                raise InfeasibleSchedule(f"precedence: job {j} operation {o} starts at {start[j, o]} before "
                                         f"operation {o - 1} ends at {end[j, o - 1]}")
    for m in np.unique(machines):
        ops = sorted((int(start[j, o]), int(end[j, o]), j, o) for j, o in np.argwhere(machines == m))
        for (s1, e1, j1, o1), (s2, e2, j2, o2) in zip(ops, ops[1:]):
            if s2 < e1 and e2 > s2 and e1 > s1:  # zero-length operations overlap nothing
                raise InfeasibleSchedule(f"machine {m}: job {j1} op {o1} [{s1},{e1}) overlaps job {j2} op {o2} "
                                         f"[{s2},{e2})")
    return int(end.max())


def is_feasible(machines, durations, start_times) -> bool:
    try:
        check_schedule(machines, durations, start_times)
        return True
    except InfeasibleSchedule:
        return False
