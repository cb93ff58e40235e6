"""The job-shop CP model solved by OR-Tools CP-SAT: the exact/anytime baseline and the improver of the
agent's schedules (Tassel et al., ICAPS'23, Sec. 4: the CP solver refines the agent's own solutions).

One interval variable per operation, ``AddNoOverlap`` per machine, job precedence, minimise the
makespan; an optional hint (e.g. the agent's schedule) seeds the search.

Two searches (:data:`SEARCHES`) for a given number of workers: ``default`` is CP-SAT's own choice, which for
one worker is a single tree search (no large-neighbourhood search, LNS: from a hint it hardly moves);
``portfolio`` sets CP-SAT's ``interleave_search`` (experimental in OR-Tools 9.x): its subsolvers, LNS ones
included, take turns on the workers, so one worker runs the whole portfolio, deterministically apart from
where the time limit falls. On job shop it is much the stronger one-worker search (results/jssp/README.md),
and the one where a good hint pays: LNS starts from it.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from ortools.sat.python import cp_model


SEARCHES = ("default", "portfolio")


def check_search(search: str, setting: str = "search") -> None:
    """ValueError naming ``setting`` unless ``search`` is one of :data:`SEARCHES`."""
    if search not in SEARCHES:
        raise ValueError(f"{setting}={search!r}; allowed: {', '.join(SEARCHES)}")


class NoScheduleFound(RuntimeError):
    """CP-SAT stopped (time limit) before its first schedule, and no hint was given to fall back on."""


@dataclasses.dataclass(frozen=True)
class CPResult:
    makespan: int
    start_times: np.ndarray  # [J, M] int
    optimal: bool
    lower_bound: int
    wall_time_s: float
    status: str


def solve(machines, durations, time_limit_s: float = 10.0, hint=None, workers: int = 1,
          seed: int = 0, upper_bound: int | None = None, search: str = "default") -> CPResult:
    """Minimises the makespan with CP-SAT under ``time_limit_s``; ``hint`` [J, M] start times (optional);
    ``upper_bound``: the makespan must not exceed it (e.g. the hint's own: the search then only looks at
    schedules at least as good, and CP-SAT's presolve prunes with it); ``search``: one of :data:`SEARCHES`."""
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s={time_limit_s!r} must be > 0")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an integer >= 1")
    check_search(search)
    machines, durations = np.asarray(machines), np.asarray(durations)
    J, M = machines.shape
    horizon = int(durations.sum())
    model = cp_model.CpModel()
    starts = [[model.NewIntVar(0, horizon, f"s{j}_{o}") for o in range(M)] for j in range(J)]
    intervals_per_machine: dict[int, list] = {}
    for j in range(J):
        for o in range(M):
            d = int(durations[j, o])
            iv = model.NewFixedSizeIntervalVar(starts[j][o], d, f"i{j}_{o}")
            intervals_per_machine.setdefault(int(machines[j, o]), []).append(iv)
            if o > 0:
                model.Add(starts[j][o] >= starts[j][o - 1] + int(durations[j, o - 1]))
    for ivs in intervals_per_machine.values():
        model.AddNoOverlap(ivs)
    cmax = model.NewIntVar(0, horizon, "makespan")
    for j in range(J):
        model.Add(cmax >= starts[j][M - 1] + int(durations[j, M - 1]))
    if upper_bound is not None:
        model.Add(cmax <= int(upper_bound))
    model.Minimize(cmax)
    if hint is not None:
        hint = np.asarray(hint)
        for j in range(J):
            for o in range(M):
                model.AddHint(starts[j][o], int(hint[j, o]))
        model.AddHint(cmax, int((hint + durations).max()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    solver.parameters.interleave_search = search == "portfolio"
    t0 = time.perf_counter()
    status = solver.Solve(model)
    wall = time.perf_counter() - t0
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        if hint is not None:  # no solution found in time: the hint itself is feasible
            return CPResult(int((hint + durations).max()), hint.astype(np.int64), False, 0, wall, "HINT")
        raise NoScheduleFound(f"CP-SAT found no schedule in {time_limit_s}s (status {solver.StatusName(status)})")
    start = np.array([[solver.Value(starts[j][o]) for o in range(M)] for j in range(J)], np.int64)
    return CPResult(int(solver.ObjectiveValue()), start, status == cp_model.OPTIMAL,
                    int(solver.BestObjectiveBound()), wall, solver.StatusName(status))


def left_shift(machines, durations, start_times) -> np.ndarray:
    """The semi-active schedule of the same machine orders: each operation as early as its job and machine
    predecessors allow (never later than before, so the makespan cannot grow)."""
    machines, durations, start = np.asarray(machines), np.asarray(durations), np.asarray(start_times)
    J, M = machines.shape
    order = sorted(((int(start[j, o]), j, o) for j in range(J) for o in range(M)), key=lambda x: (x[0], x[2]))
    job_ready, mach_ready = np.zeros(J, np.int64), np.zeros(M, np.int64)
    out = np.zeros_like(start, dtype=np.int64)
    for _, j, o in order:
        m = machines[j, o]
        s = max(job_ready[j], mach_ready[m])
        out[j, o] = s
        job_ready[j] = mach_ready[m] = s + durations[j, o]
    return out


def schedule_to_actions(machines, durations, start_times) -> list[int]:
    """The environment's action sequence (jobs and No-Ops = J) that reproduces a schedule, after a left
    shift; replaying it in ``rl.jssp.env`` yields exactly the left-shifted start times."""
    from rl.jssp.pyenv import PyJobShopEnv

    start = left_shift(machines, durations, start_times)
    J, M = start.shape
    e = PyJobShopEnv(machines, durations)
    pending = sorted(((int(start[j, o]), j, o) for j in range(J) for o in range(M)))
    actions = []
    for s, j, o in pending:
        while e.t < s:
            actions.append(J)
            e.step(J)
        if e.next_op[j] != o or e.est(j) > e.t or e.t != s:
            raise RuntimeError(f"cannot replay job {j} op {o} at {s} (env time {e.t})")
        actions.append(j)
        e.step(j)
    return actions
