"""Runner overhead: per-step time of the AlgoPerf runner vs a hand-written loop of the same step.

Both run the NAdamW baseline's ``data_selection`` + ``update_params`` (jitted, donating) on the same
workload, batches and optimizer (compiled once before timing: the optimizer's update function is
shared, so no run recompiles). The runner's figure is its accumulated submission time (evaluations
excluded; it reads the clock after every step, derives the step's keys, keeps its train state and
synchronises before each evaluation, as its timing rules require); the hand loop calls the same
functions back to back with one key and synchronises once at the end. Runs alternate, median of
``repeats``; overhead = runner / hand - 1. On a shared machine pin it to one idle core
(``taskset -c 0``): the per-step times are a few milliseconds, so other processes dominate the noise.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import time

import jax

from algoperf import baselines as baselines_lib
from algoperf import halton, runner
from algoperf import workloads as workloads_lib
from training.run import machine_info, require_output_file

HPARAMS = {"learning_rate": 0.002, "one_minus_beta1": 0.1, "beta2": 0.999, "warmup_factor": 0.05,
           "weight_decay": 0.01, "label_smoothing": 0.0, "dropout_rate": 0.0}
BASELINE = baselines_lib.submission_path("nadamw")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """The runner-overhead benchmark.

    workload: Workload to run.
    steps: Timed steps per run.
    repeats: Alternating repeats (median reported).
    out: Write the figures as JSON here.
    """
    workload: str = "mnist1d"
    steps: int = 300
    repeats: int = 5
    out: str = ""

    def __post_init__(self):
        workloads_lib.check_workload_names("workload", self.workload)
        if self.steps < 2 or self.repeats < 1:
            raise ValueError(f"steps={self.steps} must be >= 2 and repeats={self.repeats} >= 1")
        require_output_file("out", self.out)


def _copy(tree):
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def measure(workload_name: str, steps: int, repeats: int) -> dict:
    base = workloads_lib.workload_class(workload_name)

    class Untimed(base):  # no budget stop, evaluations only at step 1 and at the end
        _max_runtime = 10**9
        _eval_period = 10**9

    workload = Untimed()
    submission = runner.load_submission(BASELINE)
    hparams = halton.hyperparameters_from_dict(HPARAMS)
    batch_size = runner.resolve_batch_size(submission, workload_name)
    params0, model_state0 = workload.init_model_fn(jax.random.PRNGKey(0))
    opt0 = submission.init_optimizer_state(workload, params0, model_state0, hparams, jax.random.PRNGKey(1))
    shared = runner.Submission(**{**submission.__dict__,
                                  "init_optimizer_state": lambda *a, **k: _copy(opt0)})

    def hand_loop(n):
        params, model_state, opt = _copy(params0), model_state0, _copy(opt0)
        queue = workload._build_input_queue(jax.random.PRNGKey(2), "train", None, batch_size)
        rng = jax.random.PRNGKey(3)
        jax.block_until_ready((params, opt))  # the copies above are dispatched asynchronously: not timed
        start = time.perf_counter()
        for step in range(n):
            batch = shared.data_selection(workload, queue, opt, params, model_state, hparams, step, rng)
            opt, params, model_state = shared.update_params(
                workload=workload, current_param_container=params, current_params_types=workload.model_params_types,
                model_state=model_state, hyperparameters=hparams, batch=batch, loss_type=workload.loss_type,
                optimizer_state=opt, eval_results=[], global_step=step, rng=rng)
        jax.block_until_ready(params)
        return time.perf_counter() - start

    def runner_loop(n):
        return runner.train_once(workload, shared, hparams, 0, global_batch_size=batch_size,
                                 max_global_steps=n).score

    hand_loop(20), runner_loop(20)  # warm-up: compile once, fill caches
    hand, run = [], []
    for _ in range(repeats):
        hand.append(hand_loop(steps) / steps)
        run.append(runner_loop(steps) / steps)
    h, r = statistics.median(hand), statistics.median(run)
    return {"workload": workload_name, "steps": steps, "repeats": repeats, "batch_size": batch_size,
            "hand_ms_per_step": 1e3 * h, "runner_ms_per_step": 1e3 * r, "overhead": r / h - 1.0,
            "hand_runs_ms": [1e3 * x for x in hand], "runner_runs_ms": [1e3 * x for x in run]}


def run_bench(cfg: BenchConfig) -> dict:
    """:func:`measure`, its table printed and, given ``cfg.out``, its JSON (config, machine, figures)."""
    result = measure(cfg.workload, cfg.steps, cfg.repeats)
    print(f"| workload | hand loop ms/step | runner ms/step | overhead |\n|---|---|---|---|\n"
          f"| {result['workload']} | {result['hand_ms_per_step']:.3f} | {result['runner_ms_per_step']:.3f} | "
          f"{100 * result['overhead']:+.1f}% |")
    if cfg.out:
        out = pathlib.Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": {"workload": cfg.workload, "steps": cfg.steps,
                                              "repeats": cfg.repeats, "submission": str(BASELINE), "hparams": HPARAMS},
                                   "machine": machine_info(),
                                   **result}, indent=2))
    return result
