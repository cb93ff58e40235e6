r"""Runs an AlgoPerf submission on one of our workloads (upstream's submission_runner flags).

    python -m scripts.run_algoperf --workload=mnist1d \
        --submission_path=algoperf/baselines/nadamw.py \
        --tuning_search_space=algoperf/baselines/nadamw_search_space.json \
        --tuning_ruleset=external --num_tuning_trials=3 --num_studies=2 --experiment_dir=/tmp/ap/nadamw

Writes EXPERIMENT_DIR/study_K/WORKLOAD_jax/trial_N/{eval_measurements.csv, measurements.csv,
hparams.json, meta_data_P.json, flags_P.json, checkpoints/} and EXPERIMENT_DIR/summary_WORKLOAD.json.
Re-running the same command resumes unfinished trials and skips finished ones. The flags are the
settings of ``algoperf.runner.RunConfig``; the run is ``algoperf.runner.run``.
"""
from algoperf import runner
from scripts import common

if __name__ == "__main__":
    common.main(runner.RunConfig, runner.run, preflight=runner.check_run)
