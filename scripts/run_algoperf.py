r"""Runs an AlgoPerf submission on one of our workloads (upstream's submission_runner flags).

    python -m scripts.run_algoperf --workload=mnist1d \
        --submission_path=algoperf/baselines/nadamw.py \
        --tuning_search_space=algoperf/baselines/nadamw_search_space.json \
        --tuning_ruleset=external --num_tuning_trials=3 --num_studies=2 --experiment_dir=/tmp/ap/nadamw

Writes EXPERIMENT_DIR/study_K/WORKLOAD_jax/trial_N/{eval_measurements.csv, measurements.csv,
hparams.json, meta_data_P.json, flags_P.json, checkpoints/} and EXPERIMENT_DIR/summary_WORKLOAD.json.
Re-running the same command resumes unfinished trials and skips finished ones.
"""
from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags, logging

from algoperf import runner
from algoperf import workloads as workloads_lib
from scripts import common

FLAGS = flags.FLAGS


def run(cfg: runner.RunConfig) -> dict:
    summary = runner.run_experiment(cfg)
    root = pathlib.Path(cfg.experiment_dir).expanduser()
    common.write_json_atomic(root / f"summary_{cfg.workload}.json", summary)
    return summary


def tour_step(workdir: pathlib.Path) -> dict:
    """Small end-to-end run for the tour (< ~60 s): NAdamW on mnist1d, 1 trial, then scoring."""
    from algoperf import scoring

    baselines = pathlib.Path(__file__).resolve().parents[1] / "algoperf" / "baselines"
    workdir = pathlib.Path(workdir)
    space = workdir / "space.json"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(json.dumps([{"learning_rate": 0.00795, "one_minus_beta1": 0.0347, "beta2": 0.999,
                                  "warmup_factor": 0.05, "weight_decay": 0.0563, "label_smoothing": 0.0,
                                  "dropout_rate": 0.0}]))
    start = time.perf_counter()
    cfg = runner.RunConfig(workload="mnist1d", submission_path=str(baselines / "nadamw.py"),
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


def define_flags() -> None:
    """The runner's flags (upstream's names); defined only when run as a script."""
    flags.DEFINE_string("workload", None, f"One of {list(workloads_lib.WORKLOADS)}.")
    flags.DEFINE_string("submission_path", None, "Python file with the submission functions.")
    flags.DEFINE_string("tuning_search_space", None, "Search-space JSON (external tuning only).")
    flags.DEFINE_enum("tuning_ruleset", "external", list(runner.RULESETS), "external or self tuning.")
    flags.DEFINE_integer("num_tuning_trials", 1, "Hyperparameter points (trials) per study.")
    flags.DEFINE_integer("num_studies", 1, "Independent studies (each with its own Halton draw).")
    flags.DEFINE_string("experiment_dir", None, "Root directory of the logs.")
    flags.DEFINE_integer("max_global_steps", None, "Stop each trial after this many steps.")
    flags.DEFINE_integer("rng_seed", 0, "Seed of the Halton draws and of every trial.")
    flags.DEFINE_string("data_dir", "", "Dataset folder (mnist: idx files or mnist.npz; lm: text files).")
    flags.DEFINE_bool("save_checkpoints", True, "Checkpoint each trial after every evaluation.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        cfg = runner.RunConfig(workload=FLAGS.workload or "", submission_path=FLAGS.submission_path or "",
                               experiment_dir=FLAGS.experiment_dir or "",
                               tuning_search_space=FLAGS.tuning_search_space, tuning_ruleset=FLAGS.tuning_ruleset,
                               num_tuning_trials=FLAGS.num_tuning_trials, num_studies=FLAGS.num_studies,
                               max_global_steps=FLAGS.max_global_steps, rng_seed=FLAGS.rng_seed,
                               data_dir=FLAGS.data_dir, save_checkpoints=FLAGS.save_checkpoints)
        runner.load_submission(cfg.submission_path)
    except ValueError as e:  # bad flags: the message alone, before any work
        raise SystemExit(f"error: {e}") from None
    common.quiet_library_logs()
    summary = run(cfg)
    for t in summary["trials"]:
        logging.info("study %d trial %d: score %.2fs steps %d reached %s", t["study"], t["trial"], t["score"],
                     t["global_step"], t["reached_target"])


if __name__ == "__main__":
    define_flags()
    app.run(main)
