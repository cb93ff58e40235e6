"""The full AlgoPerf suite: the reference baselines and the self-tuning NAdamW on every base workload, then scored.

AlgoPerf v0.6 (``DOCUMENTATION.md``, "Tuning Rulesets"; the default ``rules='v0.6'``): external tuning is
3 studies x 5 trials per workload, self-tuning 3 studies x 1 run with 1.5x the budget, and only the base
workloads are scored. ``rules='v0.5'`` runs the held-out variants too, 5 studies, a 3x self-tuning budget,
and scores with the variant rule.

Each baseline in ``baselines`` (external tuning, its search space in ``algoperf/baselines/``) on each
workload: :func:`algoperf.runner.run` into ``EXPERIMENT_DIR/external/BASELINE/study_K/WORKLOAD_jax/trial_N``
(upstream's scoring layout); the self-tuning NAdamW into ``EXPERIMENT_DIR/self/self_tuning_nadamw/``. A
killed suite resumes where it stopped (finished trials are kept, an interrupted one resumes from its last
evaluation's checkpoint). Then each ruleset is scored (:func:`algoperf.scoring.score`) into
``OUT_DIR/{external,self}/`` -- by default ``EXPERIMENT_DIR/scores``, outside both scored trees, so upstream's
``score_submissions.py`` reads ``EXPERIMENT_DIR/external`` as it is.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Optional

from absl import logging

from algoperf import baselines as baselines_lib
from algoperf import calibration, runner, scoring
from algoperf import workloads as workloads_lib
from training.run import Progress, require_positive

STUDIES = {"v0.6": 3, "v0.5": 5}
TRIALS_PER_STUDY = 5
SEARCH_SPACES = ("lists", "boxes")


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """The suite: which baselines on which workloads, how many studies and trials, which rules.

    experiment_dir: Root of the logs (EXPERIMENT_DIR/external/BASELINE, EXPERIMENT_DIR/self/...).
    rules: v0.6 (base workloads, 3 studies, self-tuning 1.5x budget) or v0.5 (held-out variants too, 5 studies, 3x).
    baselines: External-tuning baselines to run (comma-separated names in algoperf/baselines).
    workloads: Workloads to run (comma-separated; default: the base workloads, plus their variants under v0.5).
    num_studies: Studies per workload (default: 3 under v0.6, 5 under v0.5).
    num_tuning_trials: Trials per study (external tuning).
    self_tuning: Also run the self-tuning NAdamW (scored in its own table).
    rng_seed: Seed of the Halton draws and the trials.
    out_dir: Where each ruleset's scores.md/json and PNG go (default: EXPERIMENT_DIR/scores).
    calibrate: Scale each workload's runtime budget by this machine's speed, measured on the workload's
      target-setting configuration before the first trial (algoperf.calibration); the record goes to
      EXPERIMENT_DIR/calibration.json and is reused when the suite resumes.
    search_spaces: lists (the short list chosen for each workload leave-one-workload-out, as upstream's baselines
      tune over a list; algoperf/baselines/search_spaces/NAME/WORKLOAD.json, written by
      scripts.choose_algoperf_search_spaces; a held-out variant uses its base workload's list) or boxes (each
      baseline's NAME_search_space.json, a quasi-random draw per study).
    """
    experiment_dir: str = ""
    rules: str = "v0.6"
    baselines: str = ",".join(baselines_lib.REFERENCE_BASELINES)
    workloads: str = ""
    num_studies: int = 0
    num_tuning_trials: int = TRIALS_PER_STUDY
    self_tuning: bool = True
    rng_seed: int = 0
    out_dir: str = ""
    calibrate: bool = True
    search_spaces: str = "lists"

    def __post_init__(self):
        scoring.check_rules(self.rules)
        baselines_lib.check_baseline_names("baselines", workloads_lib.split_names(self.baselines))
        workloads_lib.check_workload_names("workloads", self.workloads)
        workloads_lib.check_targets_set("workloads", workloads_lib.split_names(self.workloads))
        if self.num_studies < 0:
            raise ValueError(f"num_studies={self.num_studies} must be >= 1 (or 0 for the rules' default)")
        require_positive(self, "num_tuning_trials")
        if self.search_spaces not in SEARCH_SPACES:
            raise ValueError(f"search_spaces={self.search_spaces!r}; allowed: {', '.join(SEARCH_SPACES)}")
        if self.search_spaces == "lists":
            for name in workloads_lib.split_names(self.baselines):
                for w in self.workload_names:
                    path = list_path(name, w)
                    if not path.is_file():
                        raise ValueError(f"search_spaces='lists': {name} has no list for {w} ({path}); "
                                         "scripts.choose_algoperf_search_spaces writes them")
        if self.experiment_dir:
            check_out_dir(self)
        if self.rules == "v0.6":
            held_out = [w for w in workloads_lib.split_names(self.workloads) if w in workloads_lib.VARIANTS]
            if held_out:
                raise ValueError(f"workloads={self.workloads!r}: {held_out} are held-out variants, which v0.6 "
                                 "does not score; use rules='v0.5' to run them")

    @property
    def workload_names(self) -> list[str]:
        if self.workloads:
            return workloads_lib.split_names(self.workloads)
        base = list(workloads_lib.DEFAULT_BASE_WORKLOADS)
        return base if self.rules == "v0.6" else base + [v for v, b in workloads_lib.VARIANTS.items() if b in base]

    @property
    def studies(self) -> int:
        return self.num_studies or STUDIES[self.rules]


def suite_configs(cfg: SuiteConfig, runtime_scales: Optional[dict] = None) -> list[runner.ExperimentConfig]:
    """Every (submission, workload) run, validated before any work starts (workload-major, so an
    interrupted suite has every submission on the first workloads); ``runtime_scales`` ({workload: factor},
    :func:`algoperf.calibration.calibrate`) scales each workload's budget."""
    if not cfg.experiment_dir:
        raise ValueError("experiment_dir='' is required (the root of the logs)")
    root = pathlib.Path(cfg.experiment_dir).expanduser()
    common = dict(num_studies=cfg.studies, rng_seed=cfg.rng_seed, rules=cfg.rules, resume_last_run=True)
    configs = []
    for w in cfg.workload_names:
        common["runtime_scale"] = (runtime_scales or {}).get(w, 1.0)
        for name in workloads_lib.split_names(cfg.baselines):
            configs.append(runner.ExperimentConfig(
                workload=w, submission_path=str(baselines_lib.submission_path(name)),
                tuning_search_space=str(search_space_of(cfg, name, w)),
                num_tuning_trials=cfg.num_tuning_trials, experiment_dir=str(root / "external" / name), **common))
        if cfg.self_tuning:
            configs.append(runner.ExperimentConfig(
                workload=w, submission_path=str(baselines_lib.submission_path("self_tuning_nadamw")),
                tuning_ruleset="self", experiment_dir=str(root / "self" / "self_tuning_nadamw"), **common))
    return configs


def search_space_of(cfg: SuiteConfig, baseline: str, workload: str) -> pathlib.Path:
    """The search space ``baseline`` is tuned over on ``workload`` (``cfg.search_spaces``)."""
    if cfg.search_spaces == "lists":
        return list_path(baseline, workload)
    return baselines_lib.search_space_path(baseline)


def list_path(baseline: str, workload: str) -> pathlib.Path:
    """``baseline``'s short list for ``workload``; a held-out variant is tuned over its base workload's list
    (upstream tunes a variant over the same search space as its base)."""
    return baselines_lib.list_search_space_path(baseline, workloads_lib.get_base_workload_name(workload))


def out_dir(cfg: SuiteConfig) -> pathlib.Path:
    return pathlib.Path(cfg.out_dir or pathlib.Path(cfg.experiment_dir) / "scores").expanduser()


def check_out_dir(cfg: SuiteConfig) -> None:
    """The scores must not land inside a scored tree (upstream's scorer would read them as a submission)."""
    out = out_dir(cfg).resolve()
    for ruleset in runner.RULESETS:
        tree = (pathlib.Path(cfg.experiment_dir).expanduser() / ruleset).resolve()
        if out == tree or tree in out.parents:
            raise ValueError(f"out_dir={cfg.out_dir!r} lies inside the scored tree {tree}; choose a folder "
                             "outside EXPERIMENT_DIR/external and EXPERIMENT_DIR/self")


def run_suite(cfg: SuiteConfig) -> dict:
    """Runs every configuration of :func:`suite_configs` (all checked first) with a progress line per trial
    (trial i of N, eta), then scores each ruleset; returns {ruleset: ScoreReport}."""
    configs = suite_configs(cfg)
    for run_cfg in configs:
        runner.check_run(run_cfg)
    if cfg.calibrate:  # after every check, before the first trial (algoperf.calibration)
        scales = calibration.calibrate(pathlib.Path(cfg.experiment_dir).expanduser() / calibration.CALIBRATION_FILE,
                                       cfg.workload_names)
        logging.info("runtime budgets scaled by this machine's speed: %s", scales)
        configs = suite_configs(cfg, scales)
    total = sum(c.num_studies * len(c.trial_indices) for c in configs)
    progress = Progress(total, every_s=0, name="suite:", cumulative=True, unit="trial")
    done = 0

    def after_trial(entry: dict) -> None:
        nonlocal done
        done += 1
        progress.update(done, reached=entry["reached_target"], score_s=round(entry["score"], 1))

    for run_cfg in configs:
        start = time.perf_counter()
        summary = runner.run(run_cfg, after_trial=after_trial)
        reached = sum(t["reached_target"] for t in summary["trials"])
        logging.info("%s on %s: %d/%d trials reached the target (%.0f s wall)",
                     pathlib.Path(run_cfg.submission_path).stem, run_cfg.workload, reached, len(summary["trials"]),
                     time.perf_counter() - start)
    return score_suite(cfg)


def score_suite(cfg: SuiteConfig) -> dict:
    """Scores each ruleset's logs under EXPERIMENT_DIR into OUT_DIR/RULESET (see :func:`run_suite`)."""
    reports = {}
    base = [w for w in cfg.workload_names if w not in workloads_lib.VARIANTS]
    for ruleset in runner.RULESETS:
        logs = pathlib.Path(cfg.experiment_dir).expanduser() / ruleset
        if logs.is_dir():
            reports[ruleset] = scoring.score(scoring.ScoreConfig(
                experiment_dir=str(logs), out_dir=str(out_dir(cfg) / ruleset), base_workloads=",".join(base),
                rules=cfg.rules))
    return reports


TOUR_WORKLOAD = "ctr"


def tour_step(workdir: pathlib.Path) -> dict:
    """Small end-to-end run for the tour (< ~60 s): the budget calibrated on this machine, then NAdamW on ``ctr``
    with the head of its short list (chosen on the other workloads only: ``algoperf.search_spaces``), 1 trial,
    scored. (On ``mnist1d`` NAdamW cannot be shown reaching the target: its best target-setting point reaches
    0.9635 of the 0.975 that SGD Nesterov set.)"""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    scale = calibration.calibrate(workdir / calibration.CALIBRATION_FILE, [TOUR_WORKLOAD])[TOUR_WORKLOAD]
    calibrated_s = time.perf_counter() - start
    space = baselines_lib.list_search_space_path("nadamw", TOUR_WORKLOAD)
    cfg = runner.ExperimentConfig(workload=TOUR_WORKLOAD, submission_path=str(baselines_lib.submission_path("nadamw")),
                                  experiment_dir=str(workdir / "nadamw"), tuning_search_space=str(space),
                                  num_tuning_trials=TRIALS_PER_STUDY, num_studies=1, save_checkpoints=False,
                                  overwrite=True, runtime_scale=scale)
    trials = runner.run_experiment(cfg)["trials"]
    report = scoring.score_experiment(scoring.read_experiment(workdir / "nadamw"),
                                      workloads_lib.validation_targets(), workloads_lib.VARIANTS,
                                      base_workloads=[TOUR_WORKLOAD])
    return {"workload": TOUR_WORKLOAD, "trials_reached_target": sum(t["reached_target"] for t in trials),
            "trials": len(trials), "validation_target": workloads_lib.workload_class(TOUR_WORKLOAD)._validation_target,
            "time_to_target_s": report.workload_times["nadamw"][TOUR_WORKLOAD],
            "runtime_scale": scale, "calibration_s": round(calibrated_s, 1),
            "wall_s": round(time.perf_counter() - start, 1)}
