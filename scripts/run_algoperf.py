r"""Runs an AlgoPerf submission on one of our workloads, with upstream's submission_runner flags.

    python -m scripts.run_algoperf --framework=jax --workload=mnist1d \
        --submission_path=algoperf/baselines/nadamw.py \
        --tuning_search_space=algoperf/baselines/nadamw_search_space.json \
        --tuning_ruleset=external --num_tuning_trials=5 --num_studies=3 \
        --experiment_dir=/tmp/ap --experiment_name=nadamw

Upstream's flags keep their meaning: ``--framework`` (jax; pytorch is refused), ``--experiment_name``,
``--resume_last_run`` (an existing experiment folder is refused without it or ``--overwrite``; upstream asks
on the terminal), ``--overwrite``, ``--hparam_start_index`` / ``--hparam_end_index``, ``--save_checkpoints``,
``--save_intermediate_checkpoints``, ``--max_global_steps``, ``--rng_seed``, ``--data_dir``. Ours on top:
``--num_studies`` (several studies in one call) and ``--rules`` (v0.6 or v0.5: the self-tuning budget).

Writes EXPERIMENT/WORKLOAD_jax/trial_N/ (one study) or EXPERIMENT/study_K/WORKLOAD_jax/trial_N/ (several),
EXPERIMENT = EXPERIMENT_DIR[/EXPERIMENT_NAME], each trial with eval_measurements.csv, measurements.csv,
hparams.json, meta_data_P.json, flags_P.json and checkpoints/, and a summary.json beside the trials. The flags
are the settings of ``algoperf.runner.ExperimentConfig``; the run is ``algoperf.runner.run``.
"""
from algoperf import runner
from scripts import common

if __name__ == "__main__":
    common.main(runner.ExperimentConfig, runner.run, preflight=runner.check_run)
