"""Short-list external-tuning search spaces, chosen leave-one-workload-out from the target-setting trials.

Upstream AlgoPerf's prize-qualification baseline tunes over a short list of points meant to work across
workloads (``reference_algorithms/prize_qualification_baselines/external_tuning/tuning_search_space.json``:
five NAdamW points), not over a box (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms",
tune their paper baselines in boxes). Here the candidates are one baseline's
target-setting trials (``algoperf.targets``: the same quasi-random points of its box space on every workload,
each trained for ``step_hint`` steps), and the list scored on workload ``w`` is chosen from the other
workloads' trials only, so that ``w``'s own target-setting runs never choose the points scored on it.

The choice (:func:`choose_points`), exact over the ``k``-point subsets of the candidates: the subset that
minimises

    sum over the workloads u of  min over the chosen points p of  shortfall(p, u),
    shortfall(p, u) = max(0, (value(p, u) - target(u)) / |target(u)|)   (for a metric maximised, target - value),

the relative distance of the best chosen point on ``u`` from ``u``'s validation target (0 once one reaches it):
a list that has, for every workload, a point near its target (a facility-location objective; greedy picks
the generalist first and can miss two specialists, so with a handful of candidates every subset is scored).
Ties (every workload covered) go to the subset whose points have the smaller summed mean shortfall, then to
the first subset in index order. The list is ordered by each point's own total shortfall (the best
generalist first: a study with fewer trials than points runs the head of the list). A candidate that
diverged on some workload (no finite value) has shortfall ``inf`` there.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib

import numpy as np

from algoperf import baselines as baselines_lib
from algoperf import workloads as workloads_lib
from algoperf.metrics import is_minimized
from training.run import command_line, provenance, require_output_file, require_positive, write_json_atomic

__all__ = ["ChooseConfig", "shortfall", "candidate_matrix", "choose_points", "leave_one_out", "choose_all"]

MAX_SUBSETS = 2_000_000  # k-subsets scored exactly (8 candidates choose 5: 56)
DIVERGED = 1e9  # a diverged point's shortfall in the sums (finite so that sums stay ordered)
DEFAULT_TARGETS = ("results/algoperf/targets.json", "results/algoperf/targets_molgraph.json",
                   "results/algoperf/targets_mri.json")


@dataclasses.dataclass(frozen=True)
class ChooseConfig:
    """Leave-one-workload-out short lists from target-setting records.

    targets: Target-setting JSON files (scripts.set_algoperf_targets --out), comma-separated; their workloads
      are pooled (each workload once).
    baselines: Baselines to choose lists for (comma-separated names in algoperf/baselines).
    points: Points per list (upstream's list: 5, the trials of one study).
    spaces_dir: Where each list goes, as SPACES_DIR/BASELINE/WORKLOAD.json (upstream's list format).
    out: The record (JSON): every list with the shortfalls that chose it, and its provenance.
    """
    targets: str = ",".join(DEFAULT_TARGETS)
    baselines: str = ",".join(baselines_lib.REFERENCE_BASELINES)
    points: int = 5
    spaces_dir: str = str(baselines_lib.LIST_SPACES_DIR)
    out: str = ""

    def __post_init__(self):
        baselines_lib.check_baseline_names("baselines", workloads_lib.split_names(self.baselines))
        require_positive(self, "points")
        require_output_file("out", self.out)


def shortfall(value: float, target: float, minimize: bool) -> float:
    """The relative distance of ``value`` from ``target`` in the worse direction; 0 when it meets the target."""
    if not math.isfinite(value):
        return math.inf
    gap = (value - target) if minimize else (target - value)
    return max(0.0, gap / abs(target))


def candidate_matrix(records: dict, baseline: str) -> tuple[list[dict], list[str], np.ndarray]:
    """``(points, workloads, S)`` from target-setting records ``{workload: record}`` (``algoperf.targets``):
    ``baseline``'s distinct hyperparameter points in trial order, the workloads, and ``S[i, j]`` the shortfall
    of point i on workload j (a point a workload's record lacks is ValueError: the candidates must be the
    same on every workload)."""
    workloads = sorted(records)
    points: list[dict] = []
    for trial in records[workloads[0]]["trials"]:
        if trial["baseline"] == baseline and trial["hyperparameters"] not in points:
            points.append(trial["hyperparameters"])
    if not points:
        raise ValueError(f"baseline={baseline!r} has no target-setting trials on {workloads[0]}")
    s = np.full((len(points), len(workloads)), math.inf)
    for j, w in enumerate(workloads):
        rec = records[w]
        minimize = is_minimized(rec["metric"])
        if minimize != rec["minimize"]:
            raise ValueError(f"{w}: the record says minimize={rec['minimize']} for {rec['metric']}")
        seen = {i: False for i in range(len(points))}
        for trial in rec["trials"]:
            if trial["baseline"] != baseline:
                continue
            if trial["hyperparameters"] not in points:
                raise ValueError(f"{w}: {baseline}'s trial {trial['hyperparameters']} is not one of the points "
                                 f"of {workloads[0]} (every workload's target setting must use the same draw)")
            i = points.index(trial["hyperparameters"])
            s[i, j] = shortfall(trial["best_validation"], rec["validation_target"], rec["minimize"])
            seen[i] = True
        missing = [i for i, ok in seen.items() if not ok]
        if missing:
            raise ValueError(f"{w}: no {baseline} trial for point(s) {missing} (every workload needs every point)")
    return points, workloads, s


def choose_points(s: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` rows of the shortfall matrix ``s`` [candidates, workloads] chosen as in the module
    doc (every subset scored), best generalist first."""
    n = s.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"points={k} must be between 1 and the {n} candidates")
    if math.comb(n, k) > MAX_SUBSETS:
        raise ValueError(f"points={k} of {n} candidates: {math.comb(n, k)} subsets, more than the {MAX_SUBSETS} "
                         "scored exactly; use fewer trials per baseline in the target setting or fewer points")
    finite = np.where(np.isfinite(s), s, DIVERGED)
    subsets = np.array(list(itertools.combinations(range(n), k)))
    cover = finite[subsets].min(axis=1).sum(axis=1)            # [subsets]
    spread = finite.mean(axis=1)[subsets].sum(axis=1)          # tie-break: the members' mean shortfalls
    best = subsets[np.lexsort((spread, cover))[0]]             # stable: ties keep index order
    return sorted(best.tolist(), key=lambda i: (finite[i].sum(), i))


def leave_one_out(records: dict, baseline: str, k: int) -> dict:
    """``{held_out: {"points": [k hyperparameter dicts], "chosen_on": [workloads], "shortfall": {workload:
    [per chosen point]}, "best_on_held_out": ..., "draw_head_best_on_held_out": ...}}``: for each workload,
    :func:`choose_points` on the other workloads' columns only. ``shortfall`` also shows the held-out workload's
    own column (for the record, never for the choice); ``best_on_held_out`` is the list's best shortfall there
    and ``draw_head_best_on_held_out`` that of the box's first ``k`` quasi-random points (the candidates in
    draw order: what a study of the box with the target setting's seed tunes over), side by side."""
    points, workloads, s = candidate_matrix(records, baseline)
    if len(workloads) < 2:
        raise ValueError(f"leave-one-workload-out needs >= 2 workloads' target setting, got {workloads}")
    lists = {}
    for j, held_out in enumerate(workloads):
        others = [c for c in range(len(workloads)) if c != j]
        chosen = choose_points(s[:, others], k)
        lists[held_out] = {
            "points": [points[i] for i in chosen],
            "chosen_on": [workloads[c] for c in others],
            "shortfall": {w: [_finite(s[i, c]) for i in chosen] for c, w in enumerate(workloads)},
            "best_on_held_out": _finite(s[chosen, j].min()),
            "draw_head_best_on_held_out": _finite(s[:k, j].min()),
        }
    return lists


def _finite(x: float):
    """JSON has no inf: a diverged point's shortfall is recorded as None."""
    return round(float(x), 6) if math.isfinite(x) else None


def pooled_records(paths) -> dict:
    """``{workload: record}`` from several target-setting files (ValueError for a workload in two)."""
    records: dict = {}
    for path in paths:
        if not pathlib.Path(path).expanduser().is_file():
            raise ValueError(f"targets: {path!r} is not a file (a scripts.set_algoperf_targets --out)")
    for path in paths:
        for w, rec in json.loads(pathlib.Path(path).expanduser().read_text())["workloads"].items():
            if w in records:
                raise ValueError(f"targets: workload {w!r} appears in more than one file ({path})")
            records[w] = rec
    return records


def choose_all(cfg: ChooseConfig) -> dict:
    """:func:`leave_one_out` for every baseline of ``cfg``: writes each list to
    ``spaces_dir/BASELINE/WORKLOAD.json`` and the record to ``out``; returns the record."""
    if not cfg.out:
        raise ValueError("out='' is required (the record to write)")
    records = pooled_records(workloads_lib.split_names(cfg.targets))
    lists = {b: leave_one_out(records, b, cfg.points) for b in workloads_lib.split_names(cfg.baselines)}
    for baseline, per_workload in lists.items():
        for workload, chosen in per_workload.items():
            write_json_atomic(pathlib.Path(cfg.spaces_dir) / baseline / f"{workload}.json", chosen["points"])
    record = {"provenance": provenance(command_line("scripts.choose_algoperf_search_spaces", cfg, skip=())),
              "config": dataclasses.asdict(cfg), "workloads": sorted(records),
              "targets": {w: records[w]["validation_target"] for w in sorted(records)}, "lists": lists}
    write_json_atomic(pathlib.Path(cfg.out), record)
    for baseline, per_workload in lists.items():
        for workload, chosen in per_workload.items():
            own = chosen["shortfall"][workload]
            print(f"{baseline} on {workload}: {len(chosen['points'])} points chosen on "
                  f"{','.join(chosen['chosen_on'])}; their shortfall on {workload} itself "
                  f"(not used): {', '.join('diverged' if x is None else f'{x:.4f}' for x in own)}")
    return record
