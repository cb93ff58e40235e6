r"""Sets a workload's validation/test targets and runtime budget the way upstream AlgoPerf set theirs.

    python -m scripts.set_algoperf_targets --workloads=mnist1d,lm,ctr --out=results/algoperf/targets.json

Upstream (Dahl et al. 2023, Sec. 4.3, "target setting"): tune the reference optimisers on each workload
within its step budget (``step_hint``), take the best configuration, rerun it with new seeds and set the
target to the median of the reruns' best validation values (the test target likewise from the test
values). Scaled down here:

1. for each baseline in ``--baselines``: ``--trials_per_baseline`` quasi-random points of its search space
   (the same Halton draw as the runner's study 0), each trained for ``step_hint`` steps with no target and
   no time budget, evaluating every ``eval_period_time_sec`` seconds of submission time and at the end;
2. the configuration with the best validation value over all baselines is rerun ``--reruns`` times with
   fresh seeds; validation target = median of the reruns' best validation values, test target = median
   of the test values at those evaluations;
3. runtime budget (our rule, upstream's budgets leave similar headroom): ``--budget_factor`` x the median
   submission time the reruns needed to first reach the new validation target, rounded up to 5 s.

Writes a JSON with every trial's best value, the chosen configuration, the reruns and the resulting
targets; the numbers are then copied into the workload classes (``algoperf/workloads/*.py``), which cite
this file.
"""
from __future__ import annotations

import math
import pathlib
import statistics

import jax
from absl import app, flags, logging

from algoperf import halton, runner
from algoperf import workloads as workloads_lib
from algoperf.scoring import is_minimized
from scripts import common

BASELINES_DIR = pathlib.Path(__file__).resolve().parents[1] / "algoperf" / "baselines"
REFERENCE_BASELINES = ("nadamw", "adamw", "sgd_nesterov", "heavy_ball")

FLAGS = flags.FLAGS


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
    workload = untargeted(workload_name)
    steps = workload.step_hint
    metric = workload.target_metric_name
    minimize = is_minimized(metric)
    trials = []
    for name in baselines:
        submission = runner.load_submission(BASELINES_DIR / f"{name}.py")
        space = halton.load_search_space(BASELINES_DIR / f"{name}_search_space.json")
        for i, hp in enumerate(halton.generate_search(space, trials_per_baseline, seed=rng_seed), start=1):
            trial = run_trial(workload, submission, hp, runner.trial_seed(rng_seed, 0, i), steps)
            trial.update(baseline=name, hyperparameters=hp._asdict())
            logging.info("%s %s trial %d: best %s %.4f", workload_name, name, i, metric, trial["best_validation"])
            trials.append(trial)
    finite = [t for t in trials if math.isfinite(t["best_validation"])]
    if not finite:
        raise RuntimeError(f"{workload_name}: every target-setting trial diverged")
    best = (min if minimize else max)(finite, key=lambda t: t["best_validation"])
    submission = runner.load_submission(BASELINES_DIR / f"{best['baseline']}.py")
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


def define_flags() -> None:
    """Defined only when run as a script, so tests and notebooks can import the functions."""
    flags.DEFINE_list("workloads", ["mnist1d", "mnist1d_tanh", "lm", "lm_gelu", "ctr", "ctr_layernorm"],
                      "Workloads to set targets for.")
    flags.DEFINE_list("baselines", list(REFERENCE_BASELINES), "Reference submissions (names in algoperf/baselines).")
    flags.DEFINE_integer("trials_per_baseline", 3, "Halton points per baseline.")
    flags.DEFINE_integer("reruns", 3, "Reruns of the best configuration (median of their best values).")
    flags.DEFINE_float("budget_factor", 3.0, "Runtime budget = factor x median rerun time to the new target.")
    flags.DEFINE_integer("rng_seed", 0, "Seed of the Halton draw and the runs.")
    flags.DEFINE_string("out", None, "JSON to write (required); rewritten after each workload.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = [w for w in FLAGS.workloads if w not in workloads_lib.WORKLOADS]
    missing = [b for b in FLAGS.baselines if not (BASELINES_DIR / f"{b}_search_space.json").exists()]
    if unknown or missing or not FLAGS.out or min(FLAGS.trials_per_baseline, FLAGS.reruns) < 1:
        raise SystemExit(f"error: --workloads unknown {unknown} (allowed {list(workloads_lib.WORKLOADS)}); "
                         f"--baselines without a search space {missing}; --out={FLAGS.out!r} required; "
                         f"--trials_per_baseline={FLAGS.trials_per_baseline} and --reruns={FLAGS.reruns} must be >= 1")
    common.quiet_library_logs()
    out = pathlib.Path(FLAGS.out)
    results = {"config": {k: FLAGS[k].value for k in ("workloads", "baselines", "trials_per_baseline", "reruns",
                                                      "budget_factor", "rng_seed")},
               "machine": common.machine_info(), "workloads": {}}
    for name in FLAGS.workloads:
        res = set_targets(name, FLAGS.baselines, FLAGS.trials_per_baseline, FLAGS.reruns, FLAGS.budget_factor,
                          FLAGS.rng_seed)
        results["workloads"][name] = res
        common.write_json_atomic(out, results)
        print(f"{name}: {res['metric']} target {res['validation_target']} (test {res['test_target']}), "
              f"budget {res['max_runtime_s']} s, best {res['best']['baseline']}")
    jax.clear_caches()


if __name__ == "__main__":
    define_flags()
    app.run(main)
