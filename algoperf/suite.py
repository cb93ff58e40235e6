"""The reference baselines on every workload (studies x trials each), then scored; and the tour's small run.

For each baseline in ``baselines`` (external tuning, its search space in ``algoperf/baselines/``) and each
workload in ``workloads``: :func:`algoperf.runner.run` into ``EXPERIMENT_DIR/external/BASELINE/``
(upstream's layout, so re-running resumes unfinished trials and skips finished ones); then
:func:`algoperf.scoring.score` over the whole directory (performance profiles with the held-out variants'
rule). ``self_tuning`` adds the self-tuning NAdamW (one trial per study, 3x budget) under
``EXPERIMENT_DIR/self/``, scored in its own table as upstream separates the rulesets.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

from absl import logging

from algoperf import baselines as baselines_lib
from algoperf import runner, scoring
from algoperf import workloads as workloads_lib
from training.run import require_positive

DEFAULT_WORKLOADS = ("mnist1d", "mnist1d_tanh", "ctr", "ctr_layernorm", "lm", "lm_gelu")


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """The suite: which baselines on which workloads, how many studies and trials.

    experiment_dir: Root of the logs (one folder per submission).
    baselines: External-tuning baselines to run (comma-separated names in algoperf/baselines).
    workloads: Workloads to run, variants included (comma-separated).
    num_studies: Studies per workload.
    num_tuning_trials: Trials per study (external tuning).
    self_tuning: Also run the self-tuning NAdamW (scored separately).
    rng_seed: Seed of the Halton draws and the trials.
    out_dir: Where scores.md/json and the PNG go (default: experiment_dir).
    """
    experiment_dir: str = ""
    baselines: str = ",".join(baselines_lib.REFERENCE_BASELINES)
    workloads: str = ",".join(DEFAULT_WORKLOADS)
    num_studies: int = 2
    num_tuning_trials: int = 3
    self_tuning: bool = False
    rng_seed: int = 0
    out_dir: str = ""

    def __post_init__(self):
        baselines_lib.check_baseline_names("baselines", workloads_lib.split_names(self.baselines))
        workloads_lib.check_workload_names("workloads", self.workloads)
        require_positive(self, "num_studies", "num_tuning_trials")


def suite_configs(cfg: SuiteConfig) -> list[runner.RunConfig]:
    """Every (submission, workload) run, validated before any work starts."""
    if not cfg.experiment_dir:
        raise ValueError("experiment_dir='' is required (the root of the logs)")
    root = pathlib.Path(cfg.experiment_dir).expanduser()
    names = workloads_lib.split_names(cfg.baselines)
    configs = []
    for w in workloads_lib.split_names(cfg.workloads):  # workload-major: an interrupted suite has every
        # baseline on the first workloads
        for name in names:
            configs.append(runner.RunConfig(
                workload=w, submission_path=str(baselines_lib.submission_path(name)),
                tuning_search_space=str(baselines_lib.search_space_path(name)),
                num_tuning_trials=cfg.num_tuning_trials, num_studies=cfg.num_studies, rng_seed=cfg.rng_seed,
                experiment_dir=str(root / "external" / name)))
    if cfg.self_tuning:
        for w in workloads_lib.split_names(cfg.workloads):
            configs.append(runner.RunConfig(
                workload=w, submission_path=str(baselines_lib.submission_path("self_tuning_nadamw")),
                tuning_ruleset="self", num_studies=cfg.num_studies, rng_seed=cfg.rng_seed,
                experiment_dir=str(root / "self" / "self_tuning_nadamw")))
    return configs


def run_suite(cfg: SuiteConfig) -> None:
    """Runs every configuration of :func:`suite_configs` (all checked first), then scores each ruleset."""
    configs = suite_configs(cfg)
    for run_cfg in configs:
        runner.check_run(run_cfg)
    for run_cfg in configs:
        start = time.perf_counter()
        summary = runner.run(run_cfg)
        reached = sum(t["reached_target"] for t in summary["trials"])
        logging.info("%s on %s: %d/%d trials reached the target (%.0f s wall)",
                     pathlib.Path(run_cfg.submission_path).stem, run_cfg.workload, reached, len(summary["trials"]),
                     time.perf_counter() - start)
    out = pathlib.Path(cfg.out_dir or cfg.experiment_dir)
    base = [w for w in workloads_lib.split_names(cfg.workloads) if w not in workloads_lib.VARIANTS]
    for ruleset in ("external", "self"):
        logs = pathlib.Path(cfg.experiment_dir).expanduser() / ruleset
        if logs.is_dir():
            scoring.score(scoring.ScoreConfig(experiment_dir=str(logs), out_dir=str(out / ruleset),
                                              base_workloads=",".join(base)))


def tour_step(workdir: pathlib.Path) -> dict:
    """Small end-to-end run for the tour (< ~60 s): NAdamW on mnist1d, 1 trial, then scoring."""
    workdir = pathlib.Path(workdir)
    space = workdir / "space.json"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(json.dumps([{"learning_rate": 0.00795, "one_minus_beta1": 0.0347, "beta2": 0.999,
                                  "warmup_factor": 0.05, "weight_decay": 0.0563, "label_smoothing": 0.0,
                                  "dropout_rate": 0.0}]))
    start = time.perf_counter()
    cfg = runner.RunConfig(workload="mnist1d", submission_path=str(baselines_lib.submission_path("nadamw")),
                           experiment_dir=str(workdir / "nadamw"), tuning_search_space=str(space),
                           num_tuning_trials=1, save_checkpoints=False)
    trial = runner.run_experiment(cfg)["trials"][0]
    report = scoring.score_experiment(scoring.read_experiment(workdir / "nadamw"),
                                      workloads_lib.validation_targets(), workloads_lib.VARIANTS,
                                      base_workloads=["mnist1d"])
    return {"mnist1d_reached_target": trial["reached_target"], "submission_time_s": round(trial["score"], 2),
            "steps": trial["global_step"],
            "validation_accuracy": round(trial["final"].get("validation/accuracy", float("nan")), 4),
            "time_to_target_s": report.workload_times["nadamw"]["mnist1d"],
            "wall_s": round(time.perf_counter() - start, 1)}
