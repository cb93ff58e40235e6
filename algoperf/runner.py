"""The AlgoPerf submission runner as a library: load a submission, tune, train, time, log, resume.

Timing follows the upstream v0.6 ``submission_runner.py`` exactly, with an injectable ``clock``:

* untimed: dataset setup, model and optimizer initialisation, evaluation, logging, checkpointing;
* timed (``accumulated_submission_time``): everything from the end of the previous step (or the
  start) to the end of this step, i.e. ``data_selection`` + ``update_params`` (compilation included),
  plus ``prepare_for_eval`` when it runs;
* an evaluation is due when ``clock() - last_eval_time >= eval_period_time_sec`` (``last_eval_time``
  starts at 0 and is the end of the previous evaluation) or training is complete; before it,
  ``prepare_for_eval`` runs (timed) and the budget is checked: ``is_time_remaining =
  accumulated_submission_time < max_allowed_runtime_sec`` (x1.5 for the self-tuning ruleset, x3 under v0.5); the
  evaluation runs only if time remains;
* the trial stops when the budget is spent, when both validation and test targets are reached, when
  ``update_params`` raises ``TrainingCompleteError``, or at ``max_global_steps``.

Timed intervals are contiguous between evaluations (each starts where the previous ended), so work
that JAX dispatched asynchronously is counted in a later step; before an evaluation the runner waits
for it (``jax.block_until_ready`` on the parameters) and reads the clock again, so no submission
time leaks into the untimed evaluation. Steps are not synchronised one by one (that would cost the
submission its dispatch pipelining). Per-step keys come from one jitted ``fold_in`` + ``split``.

Logs have upstream's layout: ``EXPERIMENT/WORKLOAD_jax/trial_N/`` (one study, as upstream's
``submission_runner.py``) or ``EXPERIMENT/study_K/WORKLOAD_jax/trial_N/`` (several, as upstream's scoring
expects), EXPERIMENT = ``experiment_dir[/experiment_name]``, with ``eval_measurements.csv`` (one row per
evaluation), ``measurements.csv`` (also the submission's own ``metrics_logger`` rows and the final score),
``hparams.json``, ``meta_data_P.json`` and ``flags_P.json`` (P = preemption count), and TensorBoard
event files of the measurements' numbers; each study's
``summary.json`` sits beside its trial folders, where upstream's scorer does not look. Trials checkpoint
after every evaluation through :mod:`parallel.checkpoint` and resume where they stopped
(``resume_last_run``); a finished trial is not rerun; ``overwrite`` starts over; ``hparam_start_index`` /
``hparam_end_index`` run a slice of each study's trials (upstream's flags, to spread trials over machines).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
import pathlib
import re
import shutil
import sys
import time
from types import MappingProxyType
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from algoperf import halton, scoring, spec
from algoperf import workloads as workloads_lib
from parallel import checkpoint as ckpt_lib
from training.events import ScalarEventWriter
from training.run import require_positive, write_csv_atomic, write_json_atomic

FRAMEWORK = "jax"
RULESETS = ("external", "self")
# The self-tuning ruleset's runtime budget as a multiple of the external one's (DOCUMENTATION.md,
# "Self-Tuning Ruleset": 1.5x since v0.6; 3x in v0.5).
SELF_TUNING_BUDGET_FACTOR = {"v0.6": 1.5, "v0.5": 3.0}
Clock = Callable[[], float]


# ------------------------------------------------------------------------------------ submissions
@dataclasses.dataclass(frozen=True)
class Submission:
    path: str
    module: Any
    get_batch_size: Callable
    init_optimizer_state: Callable
    update_params: Callable
    data_selection: Callable
    prepare_for_eval: Optional[Callable]
    needs_train_state: bool
    get_eval_batch_size: Optional[Callable] = None


def load_submission(path: str | os.PathLike) -> Submission:
    """Imports the submission file at ``path``; ValueError naming any missing function."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file() or file.suffix != ".py":
        raise ValueError(f"submission_path={str(path)!r} is not a Python file")
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
    module_name = f"algoperf_submission_{file.stem}_{digest}"
    if module_name in sys.modules:
        module = sys.modules[module_name]
    else:
        module_spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise ValueError(f"submission_path={str(path)!r}: importing it failed: {type(e).__name__}: {e}") from e
    missing = [name for name in spec.REQUIRED_SUBMISSION_FUNCTIONS if not callable(getattr(module, name, None))]
    if missing:
        raise ValueError(f"submission_path={str(path)!r} lacks the submission function(s) {missing}; a "
                         f"submission must define {list(spec.REQUIRED_SUBMISSION_FUNCTIONS)} "
                         f"(and optionally {list(spec.OPTIONAL_SUBMISSION_FUNCTIONS)})")
    prepare = getattr(module, "prepare_for_eval", None)
    eval_batch = getattr(module, "get_eval_batch_size", None)
    return Submission(str(file), module, module.get_batch_size, module.init_optimizer_state, module.update_params,
                      module.data_selection, prepare if callable(prepare) else None,
                      "train_state" in inspect.signature(module.update_params).parameters,
                      eval_batch if callable(eval_batch) else None)


# Hyperparameters the runner itself reads (upstream's submission_runner passes them to init_model_fn).
RUNNER_HYPERPARAMETERS = ("dropout_rate", "aux_dropout_rate")


def _submission_sources(module, depth: int = 2) -> str:
    """The source of the submission file and of the project modules it uses (its globals that are modules, or
    functions and classes defined in one), ``depth`` levels deep; installed packages are left out."""
    seen, texts, frontier = set(), [], [module]
    for _ in range(depth + 1):
        following = []
        for mod in frontier:
            path = getattr(mod, "__file__", None)
            if not path or path in seen or not path.endswith(".py") or "-packages" in path:
                continue
            seen.add(path)
            texts.append(pathlib.Path(path).read_text(errors="replace"))
            for value in vars(mod).values():
                owner = value if inspect.ismodule(value) else sys.modules.get(getattr(value, "__module__", None) or "")
                if owner is not None:
                    following.append(owner)
        frontier = following
    return "\n".join(texts)


def check_hyperparameter_names(names, submission: Submission, space_path: str) -> None:
    """ValueError naming the first search-space hyperparameter that neither the submission (its file and the
    project modules it uses) nor the runner mentions: a misspelt name would otherwise be silently unused while
    the submission reads its default or fails deep inside a step. A name is known when it occurs as a word in
    that source (attribute, ``getattr`` string or comment), a static check, so a name built at run time is not
    seen."""
    if submission.module is None:
        return
    source = _submission_sources(submission.module)
    for name in names:
        if name not in RUNNER_HYPERPARAMETERS and not re.search(rf"\b{re.escape(name)}\b", source):
            raise ValueError(f"tuning_search_space={space_path!r}: hyperparameter {name!r} is read nowhere in "
                             f"submission_path={submission.path!r} (or the project modules it uses) nor by the "
                             f"runner ({', '.join(RUNNER_HYPERPARAMETERS)}); a misspelt name?")


def _checked_batch_size(size, hook: str, workload_name: str) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{hook}({workload_name!r}) returned {size!r}; need a positive integer")
    if size % jax.device_count():
        raise ValueError(f"{hook}({workload_name!r}) returned {size}, which the {jax.device_count()} devices do "
                         "not divide (batches are sharded along the batch dimension)")
    return int(size)


def resolve_batch_size(submission: Submission, workload_name: str, default_batch_size: Optional[int] = None) -> int:
    """``get_batch_size`` of the workload (of its base workload when it raises for a held-out variant).

    A submission written for upstream's workloads (upstream's published baselines, e.g.
    ``algorithms/baselines/external_tuning/jax_nadamw_full_budget.py``, know only names such as ``ogbg`` or
    ``fastmri`` and raise ``ValueError('Unsupported workload name: ...')`` for any other) cannot know this
    suite's names. When ``get_batch_size`` raises for both names, the workload's default batch size is used
    (``default_batch_size``, else the registered class's ``default_batch_size``) and ONE warning names the
    submission, the workload, what was raised and the size used. Upstream's runner has no default because its
    submissions are written for its own workloads; ours run submissions written for upstream's.
    """
    names = list(dict.fromkeys([workload_name, workloads_lib.get_base_workload_name(workload_name)]))
    errors = []
    for name in names:
        try:
            size = submission.get_batch_size(name)
        except Exception as e:  # ValueError upstream, KeyError from a dict lookup: any refusal falls back
            errors.append(f"get_batch_size({name!r}) raised {type(e).__name__}: {e}")
            continue
        return _checked_batch_size(size, "get_batch_size", name)
    if default_batch_size is None:
        default_batch_size = workloads_lib.workload_class(workload_name).default_batch_size
    size = _checked_batch_size(default_batch_size, "the default batch size of", workload_name)
    logging.warning("submission %s: %s; using workload %s's default batch size %d", submission.path,
                    "; ".join(errors), workload_name, size)
    return size


def resolve_eval_batch_size(submission: Submission, workload_name: str, workload) -> int:
    """The optional ``get_eval_batch_size(workload_name)`` hook when the submission defines it (upstream
    honours it too), else the workload's ``eval_batch_size``."""
    if submission.get_eval_batch_size is None:
        return int(workload.eval_batch_size)
    return _checked_batch_size(submission.get_eval_batch_size(workload_name), "get_eval_batch_size", workload_name)


# -------------------------------------------------------------------------------------- logging
class MetricLogger:
    """Upstream's ``MetricLogger``: ``measurements.csv`` and ``eval_measurements.csv`` (sorted columns), and
    every row's numbers as TensorBoard scalars in the trial folder (:mod:`training.events`).

    Files are rewritten atomically with the union of the columns seen so far. On resume from step
    ``resume_step``, rows (and events) after it (logged by the interrupted run) are dropped.
    """

    def __init__(self, trial_dir: pathlib.Path, resume_step: Optional[int] = None):
        self.events = ScalarEventWriter(trial_dir, resume_step)
        self.paths = {False: trial_dir / "measurements.csv", True: trial_dir / "eval_measurements.csv"}
        self.rows: dict[bool, list[dict]] = {False: [], True: []}
        for is_eval, path in self.paths.items():
            if path.exists() and resume_step is not None:
                with open(path, newline="") as f:
                    rows = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
                self.rows[is_eval] = [r for r in rows if float(r.get("global_step", 0)) <= resume_step]
                self._write(is_eval)
            elif path.exists():
                path.unlink()

    def append_scalar_metrics(self, metrics: dict, global_step: int, preemption_count: Optional[int] = None,
                              is_eval: bool = False) -> None:
        row = {k: _plain(v) for k, v in metrics.items()}
        row["global_step"] = int(global_step)
        if preemption_count is not None:
            row["preemption_count"] = preemption_count
        for target in ((False, True) if is_eval else (False,)):
            self.rows[target].append(row)
            self._write(target)
        self.events.write(global_step, {k: v for k, v in row.items() if k not in ("global_step", "preemption_count")})

    def _write(self, is_eval: bool) -> None:
        rows, path = self.rows[is_eval], self.paths[is_eval]
        write_csv_atomic(path, rows, sorted({k for r in rows for k in r}))

    def finish(self) -> None:
        self.events.close()


def _plain(v):
    if hasattr(v, "item") and getattr(v, "size", 2) == 1:
        v = v.item()
    return v


def write_hparams(hyperparameters, trial_dir: pathlib.Path):
    """Saves ``hparams.json``; if it exists already (a resumed trial), returns the saved values."""
    path = trial_dir / "hparams.json"
    if path.exists():
        return halton.hyperparameters_from_dict(json.loads(path.read_text()))
    write_json_atomic(path, hyperparameters._asdict())
    return hyperparameters


def workload_meta_data(workload, rng_seed: int) -> dict:
    """Upstream's ``meta_data``: the workload's primitive properties (targets included), seed, machine."""
    meta = {}
    for key in dir(workload):
        if key.startswith("_") or key in ("param_shapes", "model_params_types", "splits", "model"):
            continue
        try:
            value = getattr(workload, key)
        except Exception:  # noqa: BLE001 - a property that needs data; skip like upstream
            continue
        if isinstance(value, (bool, int, float, str)):
            meta[f"workload.{key}"] = value
    meta.update(rng_seed=rng_seed, devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count())
    return meta


# ---------------------------------------------------------------------------------- checkpoints
def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def checkpoint_state(params, model_state, optimizer_state) -> dict:
    """The array part of a trial's state (optimizer functions such as ``opt_update_fn`` are re-made)."""
    opt_arrays = [x for x in jax.tree.leaves(optimizer_state) if _is_array(x)]
    return {"params": params, "model_state": model_state, "opt_arrays": opt_arrays}


def restore_optimizer_state(template, opt_arrays):
    leaves, treedef = jax.tree.flatten(template)
    it = iter(opt_arrays)
    return jax.tree.unflatten(treedef, [next(it) if _is_array(x) else x for x in leaves])


# ------------------------------------------------------------------------------------- training
def new_train_state() -> dict:
    return {"validation_goal_reached": False, "test_goal_reached": False, "is_time_remaining": True,
            "last_eval_time": 0.0, "training_complete": False, "accumulated_submission_time": 0.0,
            "accumulated_eval_time": 0.0, "accumulated_logging_time": 0.0, "last_step_end_time": None}


@dataclasses.dataclass
class TrialResult:
    score: float  # accumulated submission time
    global_step: int
    eval_results: list
    train_state: dict
    reached_validation_target: bool
    resumed_from: Optional[int] = None


@jax.jit
def _step_keys(rng, global_step):
    """(data_selection, update, prepare_for_eval, eval) keys of a step: split(fold_in(rng, step), 4)."""
    keys = jax.random.split(jax.random.fold_in(rng, global_step), 4)
    return keys[0], keys[1], keys[2], keys[3]


def train_once(workload, submission: Submission, hyperparameters, rng_seed: int, *, global_batch_size: int,
               data_dir: Optional[str] = None, log_dir: Optional[pathlib.Path] = None,
               tuning_ruleset: str = "external", max_global_steps: Optional[int] = None,
               save_checkpoints: bool = True, save_intermediate_checkpoints: bool = True,
               clock: Clock = time.perf_counter, config: Optional[dict] = None,
               eval_batch_size: Optional[int] = None, rules: str = "v0.6", runtime_scale: float = 1.0) -> TrialResult:
    """Runs one trial (see the module doc for the timing rules); returns its score and evaluations.

    ``save_intermediate_checkpoints=False`` checkpoints only the finished trial (upstream's flag);
    ``eval_batch_size`` defaults to the workload's; ``rules`` picks the self-tuning budget factor;
    ``runtime_scale`` multiplies the workload's budget and its evaluation period (:mod:`algoperf.calibration`:
    this machine's speed), so that a trial evaluates after as many steps as on the target-setting machine: a
    workload whose validation metric dips and rises again (``ctr`` overfits after ~700 steps) is otherwise
    scored on where a faster machine's evaluations happen to fall."""
    eval_batch_size = eval_batch_size or workload.eval_batch_size
    rng = jax.random.PRNGKey(rng_seed)
    data_rng, opt_init_rng, model_init_rng, rng = jax.random.split(rng, 4)
    dropout_rate = getattr(hyperparameters, "dropout_rate", None)
    aux_dropout_rate = getattr(hyperparameters, "aux_dropout_rate", None)
    model_params, model_state = workload.init_model_fn(model_init_rng, dropout_rate, aux_dropout_rate)
    optimizer_state = submission.init_optimizer_state(workload, model_params, model_state, hyperparameters,
                                                      opt_init_rng)
    train_state, global_step, eval_results, preemption_count = new_train_state(), 0, [], 0
    checkpointer, metrics_logger, resumed_from = None, None, None
    if log_dir is not None:
        log_dir = pathlib.Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        config = dict(config or {})
        state = checkpoint_state(model_params, model_state, optimizer_state)
        if save_checkpoints:
            # "async", not the default "lazy": the submission's update_params may donate its inputs, and
            # only async mode has finished the device-to-host copy when save() returns.
            checkpointer, restored = ckpt_lib.open_for_run(
                log_dir / "checkpoints", config, ckpt_lib.abstract_like(state), keep=1, mode="async",
                overwrite=False)
            if restored is not None:
                meta = restored.meta
                model_params = restored.state["params"]
                model_state = restored.state["model_state"]
                optimizer_state = restore_optimizer_state(optimizer_state, restored.state["opt_arrays"])
                train_state = dict(meta["train_state"])
                eval_results = [(s, r) for s, r in meta["eval_results"]]
                global_step = int(meta["global_step"])
                preemption_count = int(meta["preemption_count"]) + 1
                resumed_from = global_step
                if meta.get("finished"):
                    logging.info("trial %s finished already (step %d): not rerun", log_dir, global_step)
                    checkpointer.close()
                    return _result(train_state, global_step, eval_results, resumed_from)
                logging.info("resuming trial %s at step %d (preemption %d)", log_dir, global_step, preemption_count)
        write_json_atomic(log_dir / f"meta_data_{preemption_count}.json", workload_meta_data(workload, rng_seed))
        write_json_atomic(log_dir / f"flags_{preemption_count}.json", config)
        metrics_logger = MetricLogger(log_dir, resume_step=resumed_from)
        workload.attach_metrics_logger(metrics_logger)

    def save(finished: bool = False) -> None:
        if checkpointer is None:
            return
        meta = {"config": config, "train_state": train_state, "eval_results": eval_results,
                "global_step": global_step, "preemption_count": preemption_count, "finished": finished}
        # Checkpoint index 2*step (+1 for the final save, which may follow an evaluation's save at the same step).
        checkpointer.save(2 * global_step + int(finished), checkpoint_state(model_params, model_state, optimizer_state),
                          meta)

    input_queue = workload._build_input_queue(data_rng, "train", data_dir, global_batch_size,
                                              start_step=global_step)
    max_runtime = workload.max_allowed_runtime_sec * runtime_scale * (
        SELF_TUNING_BUDGET_FACTOR[rules] if tuning_ruleset == "self" else 1)
    eval_period = workload.eval_period_time_sec * runtime_scale
    global_start_time = clock()
    train_state["last_step_end_time"] = global_start_time
    goals_reached = train_state["validation_goal_reached"] and train_state["test_goal_reached"]
    while train_state["is_time_remaining"] and not goals_reached and not train_state["training_complete"]:
        data_select_rng, update_rng, prep_eval_rng, eval_rng = _step_keys(rng, global_step)
        batch = submission.data_selection(workload, input_queue, optimizer_state, model_params, model_state,
                                          hyperparameters, global_step, data_select_rng)
        try:
            optimizer_state, model_params, model_state = submission.update_params(
                workload=workload, current_param_container=model_params,
                current_params_types=workload.model_params_types, model_state=model_state,
                hyperparameters=hyperparameters, batch=batch, loss_type=workload.loss_type,
                optimizer_state=optimizer_state, eval_results=eval_results, global_step=global_step,
                rng=update_rng,
                **({"train_state": MappingProxyType(train_state)} if submission.needs_train_state else {}))
        except spec.TrainingCompleteError:
            train_state["training_complete"] = True
        global_step += 1
        if max_global_steps is not None and global_step >= max_global_steps:
            train_state["training_complete"] = True
        train_step_end_time = clock()
        eval_due = (train_step_end_time - train_state["last_eval_time"] >= eval_period
                    or train_state["training_complete"])
        if eval_due:  # finish the dispatched work before the clock closes the timed interval
            jax.block_until_ready(model_params)
            train_step_end_time = clock()
        train_state["accumulated_submission_time"] += train_step_end_time - train_state["last_step_end_time"]
        if eval_due:
            if submission.prepare_for_eval is not None:
                del batch
                start = clock()
                optimizer_state, model_params, model_state = submission.prepare_for_eval(
                    workload=workload, current_param_container=model_params,
                    current_params_types=workload.model_params_types, model_state=model_state,
                    hyperparameters=hyperparameters, loss_type=workload.loss_type,
                    optimizer_state=optimizer_state, eval_results=eval_results, global_step=global_step,
                    rng=prep_eval_rng)
                jax.block_until_ready(model_params)
                train_state["accumulated_submission_time"] += clock() - start
            train_state["is_time_remaining"] = train_state["accumulated_submission_time"] < max_runtime
            if train_state["is_time_remaining"]:
                eval_start_time = clock()
                result = workload.eval_model(eval_batch_size, model_params, model_state, eval_rng,
                                             data_dir, None, global_step)
                train_state["validation_goal_reached"] = (workload.has_reached_validation_target(result)
                                                          or train_state["validation_goal_reached"])
                train_state["test_goal_reached"] = (workload.has_reached_test_target(result)
                                                    or train_state["test_goal_reached"])
                goals_reached = train_state["validation_goal_reached"] and train_state["test_goal_reached"]
                eval_end_time = clock()
                train_state["last_eval_time"] = eval_end_time
                train_state["accumulated_eval_time"] += eval_end_time - eval_start_time
                result.update(score=train_state["accumulated_submission_time"],
                              total_duration=eval_end_time - global_start_time,
                              accumulated_submission_time=train_state["accumulated_submission_time"],
                              accumulated_eval_time=train_state["accumulated_eval_time"],
                              accumulated_logging_time=train_state["accumulated_logging_time"])
                logging.info("step %d  submission time %.2fs  %s", global_step,
                             train_state["accumulated_submission_time"],
                             {k: round(v, 4) for k, v in result.items() if k.startswith("validation/")})
                eval_results.append((global_step, result))
                logging_start_time = clock()
                if metrics_logger is not None:
                    metrics_logger.append_scalar_metrics(result, global_step, preemption_count, is_eval=True)
                    if save_checkpoints and save_intermediate_checkpoints:
                        save()
                train_state["accumulated_logging_time"] += clock() - logging_start_time
        train_state["last_step_end_time"] = clock()

    if getattr(workload, "has_targets", True) is False:
        logging.warning("%s has no targets yet (algoperf.targets sets them): the trial ran to step %d / %.1fs of "
                        "submission time and cannot be scored", getattr(workload, "workload_name", "the workload"),
                        global_step, train_state["accumulated_submission_time"])
    elif not train_state["validation_goal_reached"]:
        logging.warning("missed the validation target %s=%s of %s within %d steps / %.1fs of submission time",
                        workload.target_metric_name, workload.validation_target_value,
                        getattr(workload, "workload_name", type(workload).__name__), global_step,
                        train_state["accumulated_submission_time"])
    if metrics_logger is not None:
        metrics_logger.append_scalar_metrics({"score": train_state["accumulated_submission_time"]}, global_step,
                                             preemption_count)
        metrics_logger.finish()
    if checkpointer is not None:
        save(finished=True)
        checkpointer.close()
    return _result(train_state, global_step, eval_results, resumed_from)


def _result(train_state, global_step, eval_results, resumed_from) -> TrialResult:
    return TrialResult(train_state["accumulated_submission_time"], global_step, eval_results, train_state,
                       bool(train_state["validation_goal_reached"]), resumed_from)


# ----------------------------------------------------------------------------------- experiments
@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything ``run_experiment`` needs (upstream's submission_runner flags, with their meaning, plus
    ``num_studies`` and ``rules``); a value given is checked here, the settings a run cannot do without by
    :func:`check_run`, both before any work starts.

    workload: One of mnist1d, mnist1d_tanh, lm, lm_gelu, ctr, ctr_layernorm, molgraph, mri, mnist, mnist_relu
      (algoperf.workloads.WORKLOADS).
    submission_path: Python file with the submission functions.
    experiment_dir: Root directory of the logs.
    experiment_name: Sub-folder of experiment_dir for this experiment (upstream's flag; '' for none).
    framework: jax (the only framework this runner runs; upstream's flag).
    tuning_search_space: Search-space JSON (external tuning only).
    tuning_ruleset: external or self tuning.
    num_tuning_trials: Hyperparameter points (trials) per study.
    num_studies: Independent studies (each with its own Halton draw); 1 gives upstream's layout
      EXPERIMENT/WORKLOAD_jax/trial_N, more give EXPERIMENT/study_K/WORKLOAD_jax/trial_N.
    hparam_start_index: Run only the trials from this 0-based index of each study's points on (upstream's flag).
    hparam_end_index: Run only the trials before this 0-based index (upstream's flag).
    max_global_steps: Stop each trial after this many steps.
    rng_seed: Seed of the Halton draws and of every trial.
    data_dir: Dataset folder (mnist: idx files or mnist.npz; lm: text files).
    save_checkpoints: Checkpoint the trials (needed to resume an interrupted trial).
    save_intermediate_checkpoints: Checkpoint after every evaluation, not only at the end of a trial.
    resume_last_run: Resume the trials already in the experiment folder (finished ones are not rerun).
    overwrite: Delete this workload's trials already in the experiment folder and start over.
    rules: v0.6 or v0.5 (the self-tuning budget: 1.5x or 3x the workload's).
    runtime_scale: Multiplier of the workload's runtime budget: this machine's speed relative to the
      target-setting machine (the suite measures it, algoperf.calibration); 1 keeps the budget in the
      target-setting machine's seconds.
    """
    workload: str = ""
    submission_path: str = ""
    experiment_dir: str = ""
    experiment_name: str = ""
    framework: str = FRAMEWORK
    tuning_search_space: Optional[str] = None
    tuning_ruleset: str = "external"
    num_tuning_trials: int = 1
    num_studies: int = 1
    hparam_start_index: Optional[int] = None
    hparam_end_index: Optional[int] = None
    max_global_steps: Optional[int] = None
    rng_seed: int = 0
    data_dir: str = ""
    save_checkpoints: bool = True
    save_intermediate_checkpoints: bool = True
    resume_last_run: bool = False
    overwrite: bool = False
    rules: str = "v0.6"
    runtime_scale: float = 1.0

    def __post_init__(self):
        if self.tuning_search_space == "":  # the command line's "not given"
            object.__setattr__(self, "tuning_search_space", None)
        if self.framework != FRAMEWORK:
            raise ValueError(f"framework={self.framework!r}: this runner runs JAX submissions only; allowed: "
                             f"{FRAMEWORK}")
        if self.workload and self.workload not in workloads_lib.WORKLOADS:
            raise ValueError(f"workload={self.workload!r} is unknown; allowed: {', '.join(workloads_lib.WORKLOADS)}")
        if self.tuning_ruleset not in RULESETS:
            raise ValueError(f"tuning_ruleset={self.tuning_ruleset!r}; allowed: {', '.join(RULESETS)}")
        scoring.check_rules(self.rules)
        if self.tuning_ruleset == "self" and self.tuning_search_space:
            raise ValueError(f"tuning_search_space={self.tuning_search_space!r} must not be given with "
                             "tuning_ruleset='self'")
        require_positive(self, "num_tuning_trials", "num_studies")
        if not (isinstance(self.runtime_scale, (int, float)) and 0 < self.runtime_scale < float("inf")):
            raise ValueError(f"runtime_scale={self.runtime_scale!r} must be a finite number > 0")
        if self.max_global_steps is not None and self.max_global_steps < 1:
            raise ValueError(f"max_global_steps={self.max_global_steps!r} must be >= 1 (or unset)")
        if self.overwrite and self.resume_last_run:
            raise ValueError("overwrite=True and resume_last_run=True contradict each other; give one")
        self._check_hparam_range()

    def _check_hparam_range(self) -> None:
        start, end = self.hparam_start_index, self.hparam_end_index
        if start is None and end is None:
            return
        if self.tuning_ruleset == "self":
            raise ValueError(f"hparam_start_index={start!r}, hparam_end_index={end!r}: only with "
                             "tuning_ruleset='external' (self-tuning has one trial per study)")
        lo, hi = start or 0, self.num_tuning_trials if end is None else end
        if not 0 <= lo < hi <= self.num_tuning_trials:
            raise ValueError(f"hparam_start_index={start!r}, hparam_end_index={end!r}: need 0 <= start < end <= "
                             f"num_tuning_trials={self.num_tuning_trials}")

    @property
    def trial_indices(self) -> range:
        """The 0-based indices of the trials this run does in each study."""
        if self.tuning_ruleset == "self":
            return range(1)
        return range(self.hparam_start_index or 0,
                      self.num_tuning_trials if self.hparam_end_index is None else self.hparam_end_index)


def experiment_root(cfg: ExperimentConfig) -> pathlib.Path:
    """EXPERIMENT_DIR[/EXPERIMENT_NAME], as upstream's ``logger_utils.get_log_dir``."""
    root = pathlib.Path(cfg.experiment_dir).expanduser()
    return root / cfg.experiment_name if cfg.experiment_name else root


def workload_dirs(cfg: ExperimentConfig) -> list[pathlib.Path]:
    """One ``WORKLOAD_jax`` folder per study: upstream's ``EXPERIMENT/WORKLOAD_jax`` for a single study,
    ``EXPERIMENT/study_K/WORKLOAD_jax`` (upstream's scoring layout) for several."""
    root = experiment_root(cfg)
    name = f"{cfg.workload}_{FRAMEWORK}"
    if cfg.num_studies == 1:
        return [root / name]
    return [root / f"study_{k}" / name for k in range(cfg.num_studies)]


def check_run(cfg: ExperimentConfig) -> Submission:
    """The settings a run cannot do without, the submission, the search space and what is already in the
    experiment folder, checked before any work (ValueError naming the setting); returns the submission."""
    for name in ("workload", "submission_path", "experiment_dir"):
        if not getattr(cfg, name):
            raise ValueError(f"{name}='' is required")
    if cfg.tuning_ruleset == "external" and not cfg.tuning_search_space:
        raise ValueError(f"tuning_search_space={cfg.tuning_search_space!r}: a search-space JSON is required with "
                         "tuning_ruleset='external'")
    submission = load_submission(cfg.submission_path)
    if cfg.tuning_search_space:
        names = halton.validate_search_space(halton.load_search_space(cfg.tuning_search_space))
        check_hyperparameter_names(names, submission, cfg.tuning_search_space)
    existing = [d for d in workload_dirs(cfg) if d.is_dir() and any(d.iterdir())]
    if existing and not (cfg.resume_last_run or cfg.overwrite):
        # upstream asks on the terminal; a batch job gets this line instead
        raise ValueError(f"experiment_dir={cfg.experiment_dir!r}: {existing[0]} holds trials already; "
                         "`resume_last_run` resumes them, `overwrite` deletes them and starts over")
    return submission


def trial_seed(rng_seed: int, study: int, trial: int) -> int:
    """A distinct, reproducible 31-bit seed per (study, trial)."""
    return int(np.random.SeedSequence([rng_seed, study, trial]).generate_state(1)[0] % (2**31 - 1))


def study_hyperparameters(cfg: ExperimentConfig, study: int) -> list:
    if cfg.tuning_ruleset == "self":
        return [None]
    space = halton.load_search_space(cfg.tuning_search_space)
    return halton.generate_search(space, cfg.num_tuning_trials, seed=cfg.rng_seed + study)


def run_experiment(cfg: ExperimentConfig, clock: Clock = time.perf_counter, workload=None,
                   after_trial: Optional[Callable[[dict], None]] = None) -> dict:
    """Runs ``num_studies`` x the trials of ``cfg.trial_indices`` of one submission on one workload; returns a
    summary dict (``after_trial`` gets each trial's entry as it finishes)."""
    submission = check_run(cfg)  # fails fast on a missing setting, a bad submission or search space
    all_hparams = {study: study_hyperparameters(cfg, study) for study in range(cfg.num_studies)}
    workload = workload or workloads_lib.get_workload(cfg.workload, cfg.data_dir or None)
    batch_size = resolve_batch_size(submission, cfg.workload, getattr(workload, "default_batch_size", None))
    eval_batch_size = resolve_eval_batch_size(submission, cfg.workload, workload)
    if cfg.overwrite:
        for d in workload_dirs(cfg):
            if d.exists():
                logging.info("removing %s (overwrite=True)", d)
                shutil.rmtree(d)
    summary = {"workload": cfg.workload, "submission": cfg.submission_path, "batch_size": batch_size,
               "eval_batch_size": eval_batch_size, "trials": []}
    for study, workload_dir in enumerate(workload_dirs(cfg)):
        trials = all_hparams[study]
        for index in cfg.trial_indices:
            hparams = trials[index]
            trial_dir = workload_dir.resolve() / f"trial_{index + 1}"
            trial_dir.mkdir(parents=True, exist_ok=True)
            if hparams is not None:
                hparams = write_hparams(hparams, trial_dir)
            seed = trial_seed(cfg.rng_seed, study, index + 1)
            config = {**dataclasses.asdict(cfg), "study": study, "trial": index + 1, "trial_rng_seed": seed,
                      "global_batch_size": batch_size, "global_eval_batch_size": eval_batch_size,
                      "hyperparameters": hparams._asdict() if hparams is not None else None}
            for key in ("num_tuning_trials", "num_studies", "save_checkpoints", "save_intermediate_checkpoints",
                        "experiment_dir", "experiment_name", "hparam_start_index", "hparam_end_index",
                        "resume_last_run", "overwrite"):
                config.pop(key)
            logging.info("--- %s study %d trial %d/%d: %s ---", cfg.workload, study, index + 1, len(trials),
                         config["hyperparameters"])
            result = train_once(workload, submission, hparams, seed, global_batch_size=batch_size,
                                data_dir=cfg.data_dir or None, log_dir=trial_dir, tuning_ruleset=cfg.tuning_ruleset,
                                max_global_steps=cfg.max_global_steps, save_checkpoints=cfg.save_checkpoints,
                                save_intermediate_checkpoints=cfg.save_intermediate_checkpoints, clock=clock,
                                config=config, eval_batch_size=eval_batch_size, rules=cfg.rules,
                                runtime_scale=cfg.runtime_scale)
            # Every trial traces its own jitted functions (new closures), so each leaves executables in JAX's
            # caches; a whole suite in one process ran out of memory maps (vm.max_map_count) in LLVM's JIT
            # after ~280 trials ("LLVM compilation error: Cannot allocate memory", then a segfault).
            # Compilation is timed per trial anyway, so clearing costs the next trial nothing it did not pay.
            jax.clear_caches()
            entry = {"study": study, "trial": index + 1, "score": result.score, "global_step": result.global_step,
                     "reached_target": result.reached_validation_target,
                     "final": result.eval_results[-1][1] if result.eval_results else {}}
            summary["trials"].append(entry)
            if after_trial is not None:
                after_trial(entry)
    return summary


SUMMARY_FILE = "summary.json"


def run(cfg: ExperimentConfig, clock: Clock = time.perf_counter, workload=None, after_trial=None) -> dict:
    """``run_experiment``, then each study's ``WORKLOAD_jax/summary.json`` (beside the trial folders, where
    upstream's scorer does not look) and one log line per trial."""
    summary = run_experiment(cfg, clock, workload, after_trial)
    for study, workload_dir in enumerate(workload_dirs(cfg)):
        write_json_atomic(workload_dir / SUMMARY_FILE,
                          {**summary, "study": study, "trials": [t for t in summary["trials"] if t["study"] == study]})
    for t in summary["trials"]:
        logging.info("study %d trial %d: score %.2fs steps %d reached %s", t["study"], t["trial"], t["score"],
                     t["global_step"], t["reached_target"])
    return summary
