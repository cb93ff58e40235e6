"""Sets a workload's validation/test targets and runtime budget by upstream AlgoPerf's procedure.

Upstream (Dahl et al. 2023, Sec. 4.3; ``DOCUMENTATION.md``, "Defining Target Performance and
max_runtime"): the four target-setting algorithms (AdamW, NAdamW, Nesterov momentum, heavy-ball
momentum) are each tuned with a budget far above a submission's (200 trials each), training for the
workload's step budget; the best algorithm and configuration are rerun 20 times; the validation target
is the median of the reruns' best validation values; the test target is the worst test value among the
reruns that reached the validation target; the v0.5 ``max_runtime`` was 4/3 of the target-setting
runtime. At our scale:

1. each baseline in ``baselines`` runs ``trials_per_baseline`` quasi-random points of its search space
   (the Halton draw of ``rng_seed``; default 8 per algorithm, 32 per workload: 6.4x the 5 points a
   submission gets per study), each for ``step_hint`` steps with no target and no time budget,
   evaluated every ``eval_period_time_sec`` seconds of submission time and at the end;
2. the configuration with the best validation value over all baselines is rerun ``reruns`` (>= 5)
   times with fresh seeds; validation target = median of the reruns' best validation values; test
   target = the worst, over the reruns that reached the validation target, of each rerun's best test
   value (so every such rerun reaches both targets);
3. runtime budget = ``budget_factor`` (4/3) x the median submission time of the reruns' ``step_hint``
   runs (the target-setting runtime), rounded up to a whole second.

:func:`set_all_targets` writes a JSON with every trial's best value, the chosen configuration, the reruns
and the resulting targets; the numbers are then copied into the workload classes
(``algoperf/workloads/*.py``), which cite that file (``results/algoperf/targets.json``).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import statistics

import jax
from absl import logging

from algoperf import baselines as baselines_lib
from algoperf import halton, runner
from algoperf import workloads as workloads_lib
from algoperf.metrics import is_minimized, meets_target
from training.run import machine_info, require_output_file, require_positive, write_json_atomic

MIN_RERUNS = 5


@dataclasses.dataclass(frozen=True)
class TargetsConfig:
    """Target setting: which workloads, which baselines, how many trials and reruns.

    out: JSON to write (required); rewritten after each workload.
    rng_seed: Seed of the Halton draw and the runs.
    workloads: Workloads to set targets for (comma-separated).
    baselines: Reference submissions (comma-separated names in algoperf/baselines).
    trials_per_baseline: Halton points per baseline (a submission gets 5 per study).
    reruns: Reruns of the best configuration (median of their best values); at least 5.
    budget_factor: Runtime budget = factor x median submission time of the reruns' step_hint runs
      (upstream's v0.5 budgets: 4/3).
    """
    out: str = ""
    rng_seed: int = 0
    workloads: str = ",".join(workloads_lib.DEFAULT_BASE_WORKLOADS)
    baselines: str = ",".join(baselines_lib.REFERENCE_BASELINES)
    trials_per_baseline: int = 8
    reruns: int = 5
    budget_factor: float = 4 / 3

    def __post_init__(self):
        workloads_lib.check_workload_names("workloads", self.workloads)
        baselines_lib.check_baseline_names("baselines", workloads_lib.split_names(self.baselines))
        require_positive(self, "trials_per_baseline", "reruns")
        if self.reruns < MIN_RERUNS:
            raise ValueError(f"reruns={self.reruns} must be >= {MIN_RERUNS} (a median of fewer reruns picks "
                             "a lucky outlier; upstream reruns 20 times)")
        if not self.budget_factor >= 1:
            raise ValueError(f"budget_factor={self.budget_factor} must be >= 1 (upstream: 4/3)")
        require_output_file("out", self.out)  # (required: checked by set_all_targets)


def untargeted(workload_name: str):
    """The workload with an unreachable target and no time budget (for target setting only)."""
    base = workloads_lib.workload_class(workload_name)
    unreachable = -math.inf if is_minimized(base._target_metric_name) else math.inf

    class TargetSetting(base):
        _validation_target = unreachable
        _test_target = unreachable
        _max_runtime = 10 ** 9

    return TargetSetting()


def run_trial(workload, submission, hparams, seed: int, steps: int) -> dict:
    """One step_hint-long run; its eval curve and best validation value (and the test value there)."""
    result = runner.train_once(workload, submission, hparams, seed,
                               global_batch_size=runner.resolve_batch_size(submission, workload.workload_name),
                               max_global_steps=steps)
    metric = workload.target_metric_name
    pick = min if is_minimized(metric) else max
    curve = [{"step": s, "time": r["score"], "validation": r[f"validation/{metric}"], "test": r[f"test/{metric}"]}
             for s, r in result.eval_results]
    best = pick(curve, key=lambda e: e["validation"])
    return {"seed": seed, "best_validation": best["validation"], "test_at_best": best["test"],
            "best_test": pick(e["test"] for e in curve), "curve": curve, "steps": result.global_step,
            "submission_time": result.score}


def first_time_reaching(curve: list[dict], target: float, minimize: bool) -> float:
    for e in curve:
        if (e["validation"] <= target) if minimize else (e["validation"] >= target):
            return e["time"]
    return math.inf


def worst_test_of_reaching(reruns: list[dict], validation_target: float, minimize: bool) -> float:
    """Upstream's test target: among the reruns whose best validation value meets ``validation_target``,
    the worst of their best test values."""
    reached = [r["best_test"] for r in reruns if meets_target(r["best_validation"], validation_target, minimize)]
    return (max if minimize else min)(reached)


def set_targets(workload_name: str, baselines, trials_per_baseline: int, reruns: int, budget_factor: float,
                rng_seed: int) -> dict:
    """The target-setting procedure (see the module doc) on one workload; its record for the JSON."""
    workload = untargeted(workload_name)
    steps = workload.step_hint
    metric = workload.target_metric_name
    minimize = is_minimized(metric)
    trials = []
    for name in baselines:
        submission = runner.load_submission(baselines_lib.submission_path(name))
        space = halton.load_search_space(baselines_lib.search_space_path(name))
        for i, hp in enumerate(halton.generate_search(space, trials_per_baseline, seed=rng_seed), start=1):
            trial = run_trial(workload, submission, hp, runner.trial_seed(rng_seed, 0, i), steps)
            trial.update(baseline=name, hyperparameters=hp._asdict())
            logging.info("%s %s trial %d: best %s %.4f", workload_name, name, i, metric, trial["best_validation"])
            trials.append(trial)
    finite = [t for t in trials if math.isfinite(t["best_validation"])]
    if not finite:
        raise RuntimeError(f"{workload_name}: every target-setting trial diverged")
    best = (min if minimize else max)(finite, key=lambda t: t["best_validation"])
    submission = runner.load_submission(baselines_lib.submission_path(best["baseline"]))
    hp = halton.hyperparameters_from_dict(best["hyperparameters"])
    rerun = [run_trial(workload, submission, hp, runner.trial_seed(rng_seed + 1000, 0, r), steps)
             for r in range(1, reruns + 1)]
    validation_target = statistics.median(r["best_validation"] for r in rerun)
    test_target = worst_test_of_reaching(rerun, validation_target, minimize)
    times = [first_time_reaching(r["curve"], validation_target, minimize) for r in rerun]
    runtime = statistics.median(r["submission_time"] for r in rerun)
    budget = math.ceil(budget_factor * runtime)
    for t in trials + rerun:
        del t["curve"]
    return {"workload": workload_name, "metric": f"validation/{metric}", "minimize": minimize, "step_hint": steps,
            "trials": trials, "best": {"baseline": best["baseline"], "hyperparameters": best["hyperparameters"]},
            "reruns": rerun, "rerun_times_to_target_s": times, "target_setting_runtime_s": runtime,
            "validation_target": round(validation_target, 6), "test_target": round(test_target, 6),
            "max_runtime_s": budget}


def set_all_targets(cfg: TargetsConfig) -> dict:
    """:func:`set_targets` on every workload of ``cfg``; the JSON ``cfg.out`` is rewritten after each."""
    if not cfg.out:
        raise ValueError("out='' is required (the JSON to write)")
    workload_names = workloads_lib.split_names(cfg.workloads)
    baseline_names = workloads_lib.split_names(cfg.baselines)
    out = pathlib.Path(cfg.out)
    results = {"config": {"workloads": workload_names, "baselines": baseline_names,
                          "trials_per_baseline": cfg.trials_per_baseline, "reruns": cfg.reruns,
                          "budget_factor": cfg.budget_factor, "rng_seed": cfg.rng_seed},
               "machine": machine_info(), "workloads": {}}
    for name in workload_names:
        res = set_targets(name, baseline_names, cfg.trials_per_baseline, cfg.reruns, cfg.budget_factor,
                          cfg.rng_seed)
        results["workloads"][name] = res
        write_json_atomic(out, results)
        print(f"{name}: {res['metric']} target {res['validation_target']} (test {res['test_target']}), "
              f"budget {res['max_runtime_s']} s, best {res['best']['baseline']}")
    jax.clear_caches()
    return results
