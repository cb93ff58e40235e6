"""Runtime budgets that travel: each workload's ``max_runtime`` scaled by this machine's speed (issue 35).

Upstream states budgets in seconds of its own hardware (8x V100 for v0.5, 4x A100 for v0.6; ``DOCUMENTATION.md``,
"Benchmarking hardware"; Dahl et al. 2023, Sec. 4.3), and its budget is 4/3 of the target-setting runtime
measured there. A suite meant to run on any machine cannot fix the hardware: on a faster machine a budget
in seconds lets a submission run far past ``step_hint`` (its schedule long finished), on a slower one it
stops before the target-setting run would have reached the target. The rule here:

    calibrated max_runtime = max_runtime x (this machine's step_hint runtime of the target-setting
                             configuration) / (that runtime as measured when the target was set)

The target-setting configuration (the baseline and hyperparameters that set the target, and the median
submission time of its ``step_hint``-step reruns) is copied from ``results/algoperf/targets.json`` into the
workload class (``_target_setting``), as the targets are. This machine's runtime of it is predicted from a short
measurement through the runner's own timed loop (:func:`measure`): three trials in one process, of ``n``,
``n`` and ``2n`` steps. The first compiles as each trial of the target-setting run did; the second and third
meet the same compilation state (each compiles again, or each reads a persistent cache), so seconds per step
= (third - second) / n, compile = first - n x seconds per step, and the prediction is compile + ``step_hint``
x seconds per step. The factor is the ratio of the prediction to the reference; the
budget then allows as many steps here as it did on the target-setting machine, so ``step_hint`` and the
budget agree on any machine (up to the noise of the measurement, which the record keeps). The runner scales the
evaluation period by the same factor (``runner.train_once``), so evaluations fall after as many steps too.

The suite (:mod:`algoperf.suite`) calibrates every base workload before its first trial, writes the record
to ``EXPERIMENT_DIR/calibration.json`` (with the machine) and reuses it when resumed, so every trial of one
suite runs under the same budgets; each trial's ``flags_P.json`` / ``meta_data_P.json`` carry its
``runtime_scale``. A held-out variant takes its base workload's factor (the factor measures the machine).
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Callable, Optional

from absl import logging

from algoperf import baselines as baselines_lib
from algoperf import halton, runner, targets
from algoperf import workloads as workloads_lib
from training.run import machine_info, write_json_atomic

CALIBRATION_FILE = "calibration.json"
MIN_STEPS = 100  # n = max(MIN_STEPS, step_hint // 10), at most step_hint // 2


def reference(workload_name: str) -> dict:
    """The workload's target-setting configuration and runtime (``{'baseline', 'hyperparameters',
    'runtime_s'}``); ValueError naming the workload if its targets were not set by the procedure."""
    base = workloads_lib.get_base_workload_name(workload_name)
    ref = getattr(workloads_lib.workload_class(base), "_target_setting", None)
    if not ref:
        raise ValueError(f"workload={workload_name!r}: no target-setting runtime to calibrate against (its targets "
                         "were not set by scripts/set_algoperf_targets.py); run without calibration")
    return ref


def measurement_steps(step_hint: int) -> int:
    return max(1, min(step_hint // 2, max(MIN_STEPS, step_hint // 10)))


def predict_runtime(first_s: float, second_s: float, third_s: float, steps: int,
                    step_hint: int) -> tuple[float, float, float]:
    """(compile seconds, seconds per step, predicted ``step_hint`` runtime) from the submission times of three
    trials of ``steps``, ``steps`` and ``2 * steps`` steps (see the module doc)."""
    step_s = (third_s - second_s) / steps
    if not step_s > 0:
        raise ValueError(f"a {2 * steps}-step trial took {third_s:.3f} s, no longer than a {steps}-step one "
                         f"({second_s:.3f} s): the timing is noise")
    compile_s = max(first_s - steps * step_s, 0.0)
    return compile_s, step_s, compile_s + step_hint * step_s


def measure(workload_name: str, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Times the target-setting configuration of ``workload_name`` here (see the module doc); its record.
    Any failure (the workload does not build, the run fails) is a ValueError naming the workload."""
    base = workloads_lib.get_base_workload_name(workload_name)
    ref = reference(base)
    try:
        workload = targets.untargeted(base)
        submission = runner.load_submission(baselines_lib.submission_path(ref["baseline"]))
        hparams = halton.hyperparameters_from_dict(ref["hyperparameters"])
        steps = measurement_steps(workload.step_hint)
        batch = runner.resolve_batch_size(submission, base, workload.default_batch_size)
        first, second, third = (runner.train_once(workload, submission, hparams, seed, global_batch_size=batch,
                                                  max_global_steps=n, clock=clock).score
                                for seed, n in ((1, steps), (2, steps), (3, 2 * steps)))
        compile_s, step_s, predicted = predict_runtime(first, second, third, steps, workload.step_hint)
    except Exception as e:  # the one line the bad-input rule asks for, naming the workload
        raise ValueError(f"calibration of workload={base!r} failed: {type(e).__name__}: {e}") from e
    factor = predicted / ref["runtime_s"]
    budget = workloads_lib.workload_class(base)._max_runtime
    return {"baseline": ref["baseline"], "hyperparameters": ref["hyperparameters"], "step_hint": workload.step_hint,
            "steps_measured": [steps, steps, 2 * steps], "submission_s": [round(t, 4) for t in (first, second, third)],
            "compile_s": round(compile_s, 3), "step_ms": round(1000 * step_s, 4),
            "predicted_runtime_s": round(predicted, 3), "reference_runtime_s": ref["runtime_s"],
            "runtime_scale": round(factor, 4), "max_runtime_s": budget,
            "calibrated_max_runtime_s": round(budget * factor, 2)}


def calibrate(path: pathlib.Path, workload_names, clock: Callable[[], float] = time.perf_counter,
              measure_fn: Optional[Callable[[str], dict]] = None) -> dict[str, float]:
    """``{workload: runtime_scale}`` for ``workload_names`` (a variant through its base workload). Base workloads
    already in the record at ``path`` keep their factor (a resumed suite keeps its budgets); the others are
    measured (``measure_fn``, default :func:`measure`) and the record rewritten (``{'rule', 'machine', 'date',
    'workloads': {base: record}}``)."""
    measure_fn = measure_fn or (lambda name: measure(name, clock))
    bases = list(dict.fromkeys(workloads_lib.get_base_workload_name(w) for w in workload_names))
    path = pathlib.Path(path)
    records = dict(json.loads(path.read_text()).get("workloads", {})) if path.exists() else {}
    missing = [b for b in bases if b not in records]
    for base in missing:
        records[base] = measure_fn(base)
        logging.info("calibration %s: %s", base, records[base])
    if missing:
        write_json_atomic(path, {"rule": "calibrated max_runtime = max_runtime x predicted step_hint runtime here "
                                         "/ target-setting runtime (algoperf.calibration)",
                                 "machine": machine_info(),
                                 "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                 "workloads": records})
    return {w: records[workloads_lib.get_base_workload_name(w)]["runtime_scale"] for w in workload_names}
