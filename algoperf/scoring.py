"""AlgoPerf scoring: time to target, performance profiles and the benchmark score.

Follows Dahl et al. 2023 ("Benchmarking Neural Network Training Algorithms", section 4.5) and the
upstream ``scoring/performance_profile.py``:

1. A trial's time to target is the ``score`` column (the accumulated submission time) of the first
   evaluation whose validation target metric meets the workload's validation target (``inf`` if none).
2. A study's time is that of the trial which reaches the target at the earliest *evaluation index*
   (upstream's ``get_index_that_reaches_target``; ties go to the lowest trial number -- upstream takes
   whichever tied trial ``os.listdir`` listed first, which varies by filesystem; ours is deliberately
   deterministic), or, with
   ``study_rule='min_time'``, the fastest trial (the wording of upstream's rules document); a workload's
   time is the median over studies.
3. Per workload, a time more than ``max_ratio`` (4) times the best submission's becomes ``inf``.
4. Held-out variants (``rules='v0.5'`` only; v0.6 removed them from scoring and scores the base
   workloads alone), in upstream's order: a variant whose base workload was missed is marked missed
   *before* the 4x cut of step 3; after the cut, a submission that missed a variant (or did not run it)
   gets ``inf`` on the variant's base workload. Only base workloads enter the profile.
5. r_{s,w} = t_{s,w} / min_s t_{s,w}; the performance profile rho_s(tau) = |{w : r_{s,w} <= tau}| / |W|
   on 100 points of tau in [1, 4] (Dolan & More 2002, eq. 1).
6. The benchmark score is the area under rho_s normalised by the tau range: trapz(rho_s, tau) / 3.

The readers accept our logs and upstream's (``D[/SUBMISSION]/study_K/WORKLOAD_jax/trial_N/eval_measurements.csv``).
A metric's direction, the target test and :class:`~algoperf.metrics.Target` are :mod:`algoperf.metrics`'s.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import re
from typing import Iterable, Mapping

import numpy as np

from algoperf import workloads as workloads_lib
from algoperf.metrics import Target, is_minimized, meets_target

TIME_COLUMN = "score"
DEFAULT_MAX_RATIO = 4.0
DEFAULT_NUM_POINTS = 100
WORKLOAD_DIR_PATTERN = re.compile(r"^(.*)_(jax|pytorch)$")


# ------------------------------------------------------------------ time to target (pure functions)
def trial_first_reach(rows: Iterable[Mapping[str, float]], metric: str, target: float,
                      minimize: bool | None = None, time_column: str = TIME_COLUMN) -> tuple[float, float]:
    """(evaluation index, time) of the first row meeting ``target`` on ``metric``; (inf, inf) when none does."""
    minimize = is_minimized(metric) if minimize is None else minimize
    for index, row in enumerate(rows):
        if meets_target(_as_float(row.get(metric)), target, minimize):
            return float(index), _as_float(row.get(time_column))
    return math.inf, math.inf


def trial_time_to_target(rows: Iterable[Mapping[str, float]], metric: str, target: float,
                         minimize: bool | None = None, time_column: str = TIME_COLUMN) -> float:
    """Time of the first evaluation row meeting ``target`` on ``metric``; inf when none does."""
    return trial_first_reach(rows, metric, target, minimize, time_column)[1]


STUDY_RULES = ("upstream", "min_time")


def check_study_rule(rule: str) -> None:
    if rule not in STUDY_RULES:
        raise ValueError(f"study_rule={rule!r}; allowed: {', '.join(STUDY_RULES)}")


def study_time_to_target(trials: Iterable[float | tuple[float, float]], rule: str = "upstream") -> float:
    """A study's time to target from its trials, in trial order (inf when no trial reaches the target).

    Each trial is ``(first evaluation index reaching the target, time)`` as from :func:`trial_first_reach`
    (a bare time counts as its own index). ``rule='upstream'`` is upstream's scoring code
    (``performance_profile.get_index_that_reaches_target``): the trial with the smallest evaluation index
    wins, the first such trial in ``trials`` (the lowest trial number) on ties -- upstream's tie follows
    ``os.listdir`` order, ours is deterministic by choice -- and its time is the study's. With evaluations at a fixed time
    period this is the fastest trial up to one period. ``rule='min_time'`` takes the fastest trial, as
    upstream's rules document words it.
    """
    if rule not in STUDY_RULES:
        raise ValueError(f"study rule {rule!r}; allowed: {STUDY_RULES}")
    pairs = [t if isinstance(t, tuple) else (t, t) for t in trials]
    if not pairs:
        return math.inf
    if rule == "min_time":
        return min(time for _, time in pairs)
    best_index = min(index for index, _ in pairs)
    return next(time for index, time in pairs if index == best_index)


def workload_time_to_target(study_times: Iterable[float]) -> float:
    """The median over studies (inf when most studies miss)."""
    times = list(study_times)
    return float(np.median(times)) if times else math.inf


def apply_ratio_cut(times: Mapping[str, Mapping[str, float]], max_ratio: float = DEFAULT_MAX_RATIO
                    ) -> dict[str, dict[str, float]]:
    """``times[submission][workload]`` with every time above ``max_ratio`` x the workload's best -> inf."""
    workloads = sorted({w for per in times.values() for w in per})
    best = {w: min((times[s].get(w, math.inf) for s in times), default=math.inf) for w in workloads}
    return {s: {w: (math.inf if t > max_ratio * best[w] else t) for w, t in per.items()}
            for s, per in times.items()}


RULES = ("v0.6", "v0.5")


def check_rules(rules: str) -> None:
    if rules not in RULES:
        raise ValueError(f"rules={rules!r}; allowed: {', '.join(RULES)} (v0.5 scores the held-out variants)")


def void_variants_of_missed_bases(times: Mapping[str, Mapping[str, float]], variants: Mapping[str, str]
                                  ) -> dict[str, dict[str, float]]:
    """Upstream's first variant filter (before the cut): a submission that missed a variant's base
    workload (``variants[variant] = base``) misses the variant too."""
    out = {s: dict(per) for s, per in times.items()}
    for per in out.values():
        for variant, base in variants.items():
            if variant in per and math.isinf(per.get(base, math.inf)):
                per[variant] = math.inf
    return out


def void_bases_of_missed_variants(times: Mapping[str, Mapping[str, float]], variants: Mapping[str, str]
                                  ) -> dict[str, dict[str, float]]:
    """Upstream's second variant filter (after the cut): a submission missing a held-out variant gets inf on
    its base. A variant that was not run counts as missed (upstream's strict scoring refuses such logs)."""
    out = {s: dict(per) for s, per in times.items()}
    for per in out.values():
        for variant, base in variants.items():
            if math.isinf(per.get(variant, math.inf)):
                per[base] = math.inf
    return out


def apply_cut_and_variant_rules(times: Mapping[str, Mapping[str, float]], variants: Mapping[str, str],
                                max_ratio: float = DEFAULT_MAX_RATIO) -> dict[str, dict[str, float]]:
    """Steps 3-4 of the module doc in upstream's order: variant filter, 4x cut, base filter."""
    return void_bases_of_missed_variants(
        apply_ratio_cut(void_variants_of_missed_bases(times, variants), max_ratio), variants)


def performance_ratios(times: Mapping[str, Mapping[str, float]], base_workloads: Iterable[str]
                       ) -> dict[str, dict[str, float]]:
    """r_{s,w} = t_{s,w} / min_s t_{s,w} on the base workloads (inf for misses and unreached workloads)."""
    base_workloads = list(base_workloads)
    ratios: dict[str, dict[str, float]] = {s: {} for s in times}
    for w in base_workloads:
        best = min((times[s].get(w, math.inf) for s in times), default=math.inf)
        for s in times:
            t = times[s].get(w, math.inf)
            ratios[s][w] = t / best if math.isfinite(t) and math.isfinite(best) and best > 0 else (
                1.0 if math.isfinite(t) and t == best else math.inf)
    return ratios


def performance_profiles(ratios: Mapping[str, Mapping[str, float]], num_base_workloads: int,
                         min_tau: float = 1.0, max_tau: float = DEFAULT_MAX_RATIO,
                         num_points: int = DEFAULT_NUM_POINTS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(tau grid, {submission: rho(tau)}) with rho(tau) = #{w: r_w <= tau} / num_base_workloads."""
    if num_base_workloads < 1:
        raise ValueError(f"num_base_workloads={num_base_workloads} must be >= 1")
    taus = np.linspace(min_tau, max_tau, num_points)
    profiles = {}
    for s, per in ratios.items():
        r = np.asarray(list(per.values()), dtype=float)
        profiles[s] = np.array([(r <= tau).sum() / num_base_workloads for tau in taus])
    return taus, profiles


def benchmark_score(taus: np.ndarray, rho: np.ndarray) -> float:
    """Area under the profile divided by the tau range (1 = fastest on every workload)."""
    return float(np.trapezoid(rho, taus) / (taus[-1] - taus[0]))


# ------------------------------------------------------------------------------------- log readers
@dataclasses.dataclass
class TrialLog:
    submission: str
    study: int
    workload: str
    trial: int
    rows: list[dict]
    hparams: dict | None
    target_metric: str | None = None  # from meta_data_*.json when present
    validation_target: float | None = None


def _as_float(value) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_eval_csv(path: pathlib.Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: _as_float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _trial_number(name: str) -> int | None:
    m = re.fullmatch(r"trial_(\d+)", name)
    return int(m.group(1)) if m else None


def _read_meta(trial_dir: pathlib.Path) -> tuple[str | None, float | None]:
    for meta_path in sorted(trial_dir.glob("meta_data_*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        name, target = meta.get("workload.target_metric_name"), meta.get("workload.validation_target_value")
        if name is not None and target is not None:
            return str(name), float(target)
    return None, None


def read_submission_logs(submission_dir: pathlib.Path, submission: str | None = None) -> list[TrialLog]:
    """Every trial under ``submission_dir/study_K/WORKLOAD_FRAMEWORK/trial_N`` (study 0 if no study_K)."""
    submission_dir = pathlib.Path(submission_dir)
    submission = submission or submission_dir.name
    study_dirs = sorted(p for p in submission_dir.glob("study_*") if p.is_dir())
    studies = [(int(p.name.split("_")[1]), p) for p in study_dirs if p.name.split("_")[1].isdigit()]
    if not studies:
        studies = [(0, submission_dir)]
    logs = []
    for study, study_dir in studies:
        for workload_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
            m = WORKLOAD_DIR_PATTERN.match(workload_dir.name)
            if not m:
                continue
            for trial_dir in sorted(workload_dir.iterdir()):
                number = _trial_number(trial_dir.name)
                csv_path = trial_dir / "eval_measurements.csv"
                if number is None or not csv_path.is_file():
                    continue
                hparams_path = trial_dir / "hparams.json"
                hparams = json.loads(hparams_path.read_text()) if hparams_path.is_file() else None
                metric, target = _read_meta(trial_dir)
                logs.append(TrialLog(submission, study, m.group(1), number, read_eval_csv(csv_path), hparams,
                                     metric, target))
    return logs


def _is_submission_dir(path: pathlib.Path) -> bool:
    """Holds study_K folders or WORKLOAD_jax folders (upstream's single-study runner layout)."""
    return any(p.is_dir() and (p.name.startswith("study_") or WORKLOAD_DIR_PATTERN.match(p.name))
               for p in path.iterdir())


def read_experiment(experiment_dir: str | pathlib.Path) -> dict[str, list[TrialLog]]:
    """{submission: trials}: ``experiment_dir`` holds one submission (study_K/...) or one folder per submission."""
    root = pathlib.Path(experiment_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"experiment_dir={str(experiment_dir)!r} is not a directory")
    if _is_submission_dir(root):
        found = {root.name: read_submission_logs(root)}
    else:
        found = {p.name: read_submission_logs(p) for p in sorted(root.iterdir()) if p.is_dir()}
    found = {s: logs for s, logs in found.items() if logs}
    if not found:
        raise ValueError(f"experiment_dir={str(experiment_dir)!r} holds no "
                         "study_K/WORKLOAD_jax/trial_N/eval_measurements.csv logs")
    return found


# ---------------------------------------------------------------------------------- whole scoring
@dataclasses.dataclass
class ScoreReport:
    trial_times: dict  # {submission: {workload: {study: {trial: seconds}}}}
    workload_times: dict  # {submission: {workload: seconds}} before the cut
    scored_times: dict  # after the 4x cut and the variant rule
    ratios: dict
    taus: np.ndarray
    profiles: dict
    scores: dict
    base_workloads: list
    variants: dict


def target_for(log: TrialLog, targets: Mapping[str, Target]) -> Target:
    if log.workload in targets:
        return targets[log.workload]
    if log.target_metric is not None:
        metric = f"validation/{log.target_metric}"
        return Target(metric, log.validation_target, is_minimized(metric))
    raise ValueError(f"workload {log.workload!r}: no validation target known (not in our registry and "
                     "no meta_data_*.json beside its eval_measurements.csv)")


def score_experiment(logs: Mapping[str, list[TrialLog]], targets: Mapping[str, Target],
                     variants: Mapping[str, str], base_workloads: Iterable[str] | None = None,
                     max_ratio: float = DEFAULT_MAX_RATIO, num_points: int = DEFAULT_NUM_POINTS,
                     study_rule: str = "upstream", rules: str = "v0.6") -> ScoreReport:
    """Scores every submission of ``logs`` (see the module doc for the steps). Under ``rules='v0.6'`` the
    logs of held-out variants (keys of ``variants``) are left out."""
    check_study_rule(study_rule)
    check_rules(rules)
    first_reach: dict = {}
    for submission, trials in logs.items():
        for log in trials:
            if rules == "v0.6" and log.workload in variants:
                continue
            target = target_for(log, targets)
            reach = trial_first_reach(log.rows, target.metric, target.value, target.minimize)
            (first_reach.setdefault(submission, {}).setdefault(log.workload, {})
             .setdefault(log.study, {}))[log.trial] = reach
    trial_times = {s: {w: {k: {n: r[1] for n, r in tr.items()} for k, tr in studies.items()}
                       for w, studies in per.items()} for s, per in first_reach.items()}
    workload_times = {
        s: {w: workload_time_to_target([study_time_to_target([tr[n] for n in sorted(tr)], study_rule)
                                        for tr in studies.values()])
            for w, studies in per.items()}
        for s, per in first_reach.items()}
    all_workloads = sorted({w for per in workload_times.values() for w in per})
    if base_workloads is None:
        base_workloads = [w for w in all_workloads if w not in variants]
    base_workloads = list(base_workloads)
    present_variants = ({v: b for v, b in variants.items() if v in all_workloads and b in base_workloads}
                        if rules == "v0.5" else {})
    scored = apply_cut_and_variant_rules(workload_times, present_variants, max_ratio)
    ratios = performance_ratios(scored, base_workloads)
    taus, profiles = performance_profiles(ratios, len(base_workloads), 1.0, max_ratio, num_points)
    scores = {s: benchmark_score(taus, rho) for s, rho in profiles.items()}
    return ScoreReport(trial_times, workload_times, scored, ratios, taus, profiles, scores, base_workloads,
                       present_variants)


def plot_profiles(report: ScoreReport, path: pathlib.Path, title: str = "AlgoPerf performance profiles") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, rho in sorted(report.profiles.items()):
        ax.step(report.taus, rho, where="post", label=f"{s} (score {report.scores[s]:.3f})")
    ax.set_xlabel("tau: ratio of time to target to the best submission")
    ax.set_ylabel(f"fraction of {len(report.base_workloads)} base workloads")
    ax.set_xlim(report.taus[0], report.taus[-1])
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(report: ScoreReport) -> str:
    """A markdown table: time to target (s) per workload (variants included), then the score."""
    workloads = sorted({w for per in report.workload_times.values() for w in per})
    head = "| submission | " + " | ".join(workloads) + " | score |"
    lines = [head, "|" + "---|" * (len(workloads) + 2)]
    for s in sorted(report.workload_times, key=lambda s: -report.scores.get(s, 0)):
        cells = []
        for w in workloads:
            t = report.workload_times[s].get(w, math.inf)
            kept = report.scored_times[s].get(w, t)
            cell = "miss" if math.isinf(t) else f"{t:.1f}"
            if math.isfinite(t) and math.isinf(kept):
                cell += " (cut)"
            cells.append(cell)
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {report.scores.get(s, 0):.3f} |")
    return "\n".join(lines)


def format_reach_table(report: ScoreReport) -> str:
    """A markdown table: trials that reached the target / trials run, and studies that did, per workload."""
    workloads = sorted({w for per in report.trial_times.values() for w in per})
    lines = ["| submission | " + " | ".join(workloads) + " |", "|" + "---|" * (len(workloads) + 1)]
    for s in sorted(report.trial_times):
        cells = []
        for w in workloads:
            studies = report.trial_times[s].get(w, {})
            times = [t for tr in studies.values() for t in tr.values()]
            hit_studies = sum(any(math.isfinite(t) for t in tr.values()) for tr in studies.values())
            cells.append(f"{sum(math.isfinite(t) for t in times)}/{len(times)} trials, "
                         f"{hit_studies}/{len(studies)} studies" if times else "–")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the entry point
@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """Which logs to score and where the report goes.

    experiment_dir: Logs to score: one folder per submission (each with study_K/WORKLOAD_jax/trial_N) or a
      single submission.
    out_dir: Where to write scores.md, scores.json and the PNG (default: experiment_dir).
    base_workloads: Base workloads of the profile, comma-separated (default: every non-variant workload found).
    study_rule: How a study's trials make its time: upstream (upstream's scoring code: earliest evaluation
      index reaching the target) or min_time (the fastest trial, the rules document's wording).
    rules: v0.6 (base workloads only) or v0.5 (held-out variants void their base workloads).
    """
    experiment_dir: str = ""
    out_dir: str = ""
    base_workloads: str = ""
    study_rule: str = "upstream"
    rules: str = "v0.6"

    def __post_init__(self):
        check_study_rule(self.study_rule)
        check_rules(self.rules)


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def score(cfg: ScoreConfig) -> ScoreReport:
    """Scores ``cfg.experiment_dir`` against our workload registry's targets (else each trial's
    meta_data_*.json); writes scores.md (table), scores.json and performance_profiles.png and prints the
    tables. A wrong directory fails (ValueError) before anything is written."""
    from training.run import write_json_atomic  # here, not at the top: reading and scoring logs needs no JAX

    if not cfg.experiment_dir:
        raise ValueError("experiment_dir='' is required (the logs to score)")
    logs = read_experiment(cfg.experiment_dir)
    report = score_experiment(logs, workloads_lib.validation_targets(), workloads_lib.VARIANTS,
                              base_workloads=workloads_lib.split_names(cfg.base_workloads) or None,
                              study_rule=cfg.study_rule, rules=cfg.rules)
    out = pathlib.Path(cfg.out_dir or cfg.experiment_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(report)
    reach = format_reach_table(report)
    (out / "scores.md").write_text(f"{table}\n\nTrials and studies that reached the validation target:\n\n{reach}\n")
    write_json_atomic(out / "scores.json", {
        "rules": cfg.rules, "study_rule": cfg.study_rule, "scores": report.scores, "base_workloads": report.base_workloads,
        "variants": report.variants,
        "workload_times_s": {s: {w: _finite(t) for w, t in per.items()} for s, per in report.workload_times.items()},
        "scored_times_s": {s: {w: _finite(t) for w, t in per.items()} for s, per in report.scored_times.items()},
        "trial_times_s": json.loads(json.dumps(report.trial_times, default=str).replace("Infinity", "null")),
    })
    plot_profiles(report, out / "performance_profiles.png")
    print(table + "\n\n" + reach)
    return report
