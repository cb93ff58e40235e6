r"""Runs the reference baselines on every workload (studies x trials each), then scores them.

    python -m scripts.algoperf_suite --experiment_dir=/tmp/ap_suite --num_studies=2 --num_tuning_trials=3 \
        --out_dir=results/algoperf

For each baseline in ``--baselines`` (external tuning, its search space in ``algoperf/baselines/``) and each
workload in ``--workloads``: ``run_experiment`` into ``EXPERIMENT_DIR/BASELINE/`` (upstream's layout, so
re-running resumes unfinished trials and skips finished ones); then ``score_algoperf`` over the whole
directory (performance profiles with the held-out variants' rule). ``--self_tuning`` adds the self-tuning
NAdamW (one trial per study, 3x budget), scored in its own table as upstream separates the rulesets.
"""
from __future__ import annotations

import pathlib
import time

from absl import app, flags, logging

from algoperf import runner
from algoperf import workloads as workloads_lib
from scripts import common, score_algoperf

BASELINES_DIR = pathlib.Path(__file__).resolve().parents[1] / "algoperf" / "baselines"
REFERENCE_BASELINES = ("nadamw", "adamw", "sgd_nesterov", "heavy_ball")
DEFAULT_WORKLOADS = ("mnist1d", "mnist1d_tanh", "ctr", "ctr_layernorm", "lm", "lm_gelu")

FLAGS = flags.FLAGS


def suite_configs(experiment_dir: str, baselines, workloads, num_studies: int, num_tuning_trials: int,
                  rng_seed: int, self_tuning: bool) -> list[runner.RunConfig]:
    """Every (submission, workload) run, validated before any work starts."""
    root = pathlib.Path(experiment_dir).expanduser()
    configs = []
    for name in baselines:
        space = BASELINES_DIR / f"{name}_search_space.json"
        if not space.exists():
            raise ValueError(f"--baselines: {name!r} has no search space {space.name} in {BASELINES_DIR}")
    for w in workloads:  # workload-major: an interrupted suite has every baseline on the first workloads
        for name in baselines:
            space = BASELINES_DIR / f"{name}_search_space.json"
            configs.append(runner.RunConfig(
                workload=w, submission_path=str(BASELINES_DIR / f"{name}.py"), tuning_search_space=str(space),
                num_tuning_trials=num_tuning_trials, num_studies=num_studies, rng_seed=rng_seed,
                experiment_dir=str(root / "external" / name)))
    if self_tuning:
        for w in workloads:
            configs.append(runner.RunConfig(
                workload=w, submission_path=str(BASELINES_DIR / "self_tuning_nadamw.py"), tuning_ruleset="self",
                num_studies=num_studies, rng_seed=rng_seed, experiment_dir=str(root / "self" / "self_tuning_nadamw")))
    return configs


def define_flags() -> None:
    """Defined only when run as a script, so tests and notebooks can import the functions."""
    flags.DEFINE_string("experiment_dir", None, "Root of the logs (one folder per submission).")
    flags.DEFINE_list("baselines", list(REFERENCE_BASELINES), "External-tuning baselines to run.")
    flags.DEFINE_list("workloads", list(DEFAULT_WORKLOADS), "Workloads to run (variants included).")
    flags.DEFINE_integer("num_studies", 2, "Studies per workload.")
    flags.DEFINE_integer("num_tuning_trials", 3, "Trials per study (external tuning).")
    flags.DEFINE_bool("self_tuning", False, "Also run the self-tuning NAdamW (scored separately).")
    flags.DEFINE_integer("rng_seed", 0, "Seed of the Halton draws and the trials.")
    flags.DEFINE_string("out_dir", None, "Where scores.md/json and the PNG go (default: experiment_dir).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if not FLAGS.experiment_dir:
            raise ValueError("--experiment_dir is required")
        configs = suite_configs(FLAGS.experiment_dir, FLAGS.baselines, FLAGS.workloads, FLAGS.num_studies,
                                FLAGS.num_tuning_trials, FLAGS.rng_seed, FLAGS.self_tuning)
        for cfg in configs:
            runner.load_submission(cfg.submission_path)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    common.quiet_library_logs()
    for cfg in configs:
        start = time.perf_counter()
        summary = runner.run_experiment(cfg)
        common.write_json_atomic(pathlib.Path(cfg.experiment_dir) / f"summary_{cfg.workload}.json", summary)
        reached = sum(t["reached_target"] for t in summary["trials"])
        logging.info("%s on %s: %d/%d trials reached the target (%.0f s wall)", pathlib.Path(cfg.submission_path).stem,
                     cfg.workload, reached, len(summary["trials"]), time.perf_counter() - start)
    out = pathlib.Path(FLAGS.out_dir or FLAGS.experiment_dir)
    base = [w for w in FLAGS.workloads if w not in workloads_lib.VARIANTS]
    for ruleset in ("external", "self"):
        logs = pathlib.Path(FLAGS.experiment_dir).expanduser() / ruleset
        if logs.is_dir():
            score_algoperf.score(str(logs), str(out / ruleset), base)


if __name__ == "__main__":
    define_flags()
    app.run(main)
