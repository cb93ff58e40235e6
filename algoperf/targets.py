"""Sets a workload's validation/test targets and runtime budget the way upstream AlgoPerf set theirs.

Upstream (Dahl et al. 2023, Sec. 4.3, "target setting"): tune the reference optimisers on each workload
within its step budget (``step_hint``), take the best configuration, rerun it with new seeds and set the
target to the median of the reruns' best validation values (the test target likewise from the test
values). Scaled down here:

1. for each baseline in ``baselines``: ``trials_per_baseline`` quasi-random points of its search space
   (the same Halton draw as the runner's study 0), each trained for ``step_hint`` steps with no target and
   no time budget, evaluating every ``eval_period_time_sec`` seconds of submission time and at the end;
2. the configuration with the best validation value over all baselines is rerun ``reruns`` times with
   fresh seeds; validation target = median of the reruns' best validation values, test target = median
   of the test values at those evaluations;
3. runtime budget (our rule, upstream's budgets leave similar headroom): ``budget_factor`` x the median
   submission time the reruns needed to first reach the new validation target, rounded up to 5 s.

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
from algoperf.scoring import is_minimized
from training.run import machine_info, require_output_file, require_positive, write_json_atomic

DEFAULT_WORKLOADS = ("mnist1d", "mnist1d_tanh", "lm", "lm_gelu", "ctr", "ctr_layernorm")


@dataclasses.dataclass(frozen=True)
class TargetsConfig:
    """Target setting: which workloads, which baselines, how many trials and reruns.

    out: JSON to write (required); rewritten after each workload.
    rng_seed: Seed of the Halton draw and the runs.
    workloads: Workloads to set targets for (comma-separated).
    baselines: Reference submissions (comma-separated names in algoperf/baselines).
    trials_per_baseline: Halton points per baseline.
    reruns: Reruns of the best configuration (median of their best values).
    budget_factor: Runtime budget = factor x median rerun time to the new target.
    """
    out: str = ""
    rng_seed: int = 0
    workloads: str = ",".join(DEFAULT_WORKLOADS)
    baselines: str = ",".join(baselines_lib.REFERENCE_BASELINES)
    trials_per_baseline: int = 3
    reruns: int = 3
    budget_factor: float = 3.0

    def __post_init__(self):
        workloads_lib.check_workload_names("workloads", self.workloads)
        baselines_lib.check_baseline_names("baselines", workloads_lib.split_names(self.baselines))
        require_positive(self, "trials_per_baseline", "reruns")
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
    result = runner.train_once(workload, submission, hparams, seed, global_batch_size=runner.resolve_batch_size(
        submission, workload.workload_name, workload), max_global_steps=steps)
    metric = workload.target_metric_name
    pick = min if is_minimized(metric) else max
    curve = [{"step": s, "time": r["score"], "validation": r[f"validation/{metric}"], "test": r[f"test/{metric}"]}
             for s, r in result.eval_results]
    best = pick(curve, key=lambda e: e["validation"])
    return {"seed": seed, "best_validation": best["validation"], "test_at_best": best["test"],
            "curve": curve, "steps": result.global_step, "submission_time": result.score}


def first_time_reaching(curve: list[dict], target: float, minimize: bool) -> float:
    for e in curve:
        if (e["validation"] <= target) if minimize else (e["validation"] >= target):
            return e["time"]
    return math.inf


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
    test_target = statistics.median(r["test_at_best"] for r in rerun)
    times = [first_time_reaching(r["curve"], validation_target, minimize) for r in rerun]
    budget = 5 * math.ceil(budget_factor * statistics.median(times) / 5)
    for t in trials + rerun:
        del t["curve"]
    return {"workload": workload_name, "metric": f"validation/{metric}", "minimize": minimize, "step_hint": steps,
            "trials": trials, "best": {"baseline": best["baseline"], "hyperparameters": best["hyperparameters"]},
            "reruns": rerun, "rerun_times_to_target_s": times,
            "validation_target": round(validation_target, 4), "test_target": round(test_target, 4),
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
