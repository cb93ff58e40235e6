"""Exact mallocGame solutions with OR-Tools CP-SAT.

Model (2D packing with fixed x): buffer i is an optional rectangle; its time interval has the fixed start
``start_i`` and length ``end_i - start_i + 1`` (inclusive intervals become half-open [start, end + 1)); its
address interval starts at an integer variable ``y_i in [0, capacity - size_i]`` with length ``size_i``; both
are present iff ``x_i``. ``AddNoOverlap2D`` forbids two present rectangles from overlapping; the objective
maximises ``sum_i benefit_i * x_i``. Buffers larger than the capacity are fixed to slow memory.

``game_moves=True`` adds the mallocGame's move set (``rl/malloc/game.py``): visiting buffers in schedule
order, a buffer in fast memory must sit at offset 0, end at the capacity, or touch an earlier-visited,
time-overlapping buffer in fast memory from above (on its top) or below (ending at its bottom) (one Boolean
per candidate, at least one true iff ``x_i``). Its optimum is the best
return the game can reach (at most the unrestricted optimum), and its solutions replay as game moves: the
demonstrations of ``rl/malloc/demos.py``.
Benefits are scaled to integers (``scale``); the reported objective is recomputed from the float benefits.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from ortools.sat.python import cp_model

from rl.malloc.instance import Instance


@dataclasses.dataclass(frozen=True)
class Solution:
    offsets: np.ndarray    # int64 [n], -1 for slow memory
    benefit: float         # total float benefit of the returned placement
    bound: float           # proven upper bound on the benefit (== benefit when optimal, up to scaling)
    optimal: bool
    status: str
    wall_s: float


def integer_benefits(benefits: np.ndarray, resolution: int = 10 ** 6) -> tuple[np.ndarray, float]:
    """(integer benefits for CP-SAT, benefit units per integer unit): exact when all benefits are integers,
    else scaled so that the largest is ``resolution``."""
    b = np.asarray(benefits, np.float64)
    if np.all(b == np.round(b)) and b.max(initial=0) < 2 ** 40:
        return b.astype(np.int64), 1.0
    top = b.max(initial=0.0)
    if top <= 0:
        return np.zeros(len(b), np.int64), 1.0
    return np.round(b / top * resolution).astype(np.int64), top / resolution


def _restrict_to_game_moves(m: cp_model.CpModel, instance: Instance, present: list, ys: list) -> None:
    """x_i => y_i is 0, capacity - size_i, or a face of an earlier-visited, time-overlapping j in fast memory
    (y_j + size_j or y_j - size_i)."""
    order = [int(i) for i in instance.schedule_order()]
    a, b, s, cap = instance.starts, instance.ends, instance.sizes, instance.capacity
    for k, i in enumerate(order):
        if present[i] is None:
            continue
        choices = []
        for name, lhs, rhs, j in [("floor", ys[i], 0, None), ("ceiling", ys[i], cap - int(s[i]), None)] + [
                (kind, ys[i], ys[j] + (int(s[j]) if kind == "top" else -int(s[i])), j)
                for j in order[:k] if present[j] is not None and a[j] <= b[i] and a[i] <= b[j]
                for kind in ("top", "under")]:
            c = m.NewBoolVar(f"{name}_{i}" + ("" if j is None else f"_{j}"))
            m.Add(lhs == rhs).OnlyEnforceIf(c)
            if j is not None:
                m.AddImplication(c, present[j])
            choices.append(c)
        m.AddBoolOr(choices).OnlyEnforceIf(present[i])
        for c in choices:
            m.AddImplication(c, present[i])


def solve(instance: Instance, time_limit_s: float = 10.0, workers: int = 1, hint: np.ndarray | None = None,
          game_moves: bool = False) -> Solution:
    """Maximise the fast-memory benefit; ``hint`` (offsets, -1 slow) seeds the search, e.g. the heuristic;
    ``game_moves`` restricts offsets to the mallocGame's candidates (module docstring)."""
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s={time_limit_s!r} must be > 0")
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    n, cap = instance.num_buffers, instance.capacity
    ib, unit = integer_benefits(instance.benefits)
    m = cp_model.CpModel()
    present, ys, x_iv, y_iv = [], [], [], []
    for i in range(n):
        size, a, b = int(instance.sizes[i]), int(instance.starts[i]), int(instance.ends[i])
        if size > cap or ib[i] == 0:
            present.append(None)
            ys.append(None)
            continue
        p = m.NewBoolVar(f"fast_{i}")
        y = m.NewIntVar(0, cap - size, f"offset_{i}")
        x_iv.append(m.NewOptionalFixedSizeIntervalVar(a, b - a + 1, p, f"time_{i}"))
        y_iv.append(m.NewOptionalFixedSizeIntervalVar(y, size, p, f"addr_{i}"))
        present.append(p)
        ys.append(y)
        if hint is not None and hint[i] >= 0:
            m.AddHint(p, 1)
            m.AddHint(y, int(hint[i]))
        elif hint is not None:  # a complete hint (every variable): CP-SAT checks it at once, else it searches
            m.AddHint(p, 0)     # for the missing values and, on programs of thousands of buffers, finds none
            m.AddHint(y, 0)
    if x_iv:
        m.AddNoOverlap2D(x_iv, y_iv)
    if game_moves:
        _restrict_to_game_moves(m, instance, present, ys)
    m.Maximize(sum(int(ib[i]) * present[i] for i in range(n) if present[i] is not None))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = int(workers)
    t0 = time.perf_counter()
    status = solver.Solve(m)
    wall = time.perf_counter() - t0
    offsets = np.full(n, -1, np.int64)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        for i in range(n):
            if present[i] is not None and solver.Value(present[i]):
                offsets[i] = solver.Value(ys[i])
    benefit = float(instance.benefits[offsets >= 0].sum())
    optimal = status == cp_model.OPTIMAL
    if optimal:
        bound = benefit
    else:  # the integer bound back in benefit units (+ rounding slack of half a unit per buffer)
        bound = min(float(solver.BestObjectiveBound()) * unit + 0.5 * unit * n, instance.total_benefit)
        bound = max(bound, benefit)
    return Solution(offsets=offsets, benefit=benefit, bound=bound, optimal=optimal,
                    status=solver.StatusName(status), wall_s=wall)
