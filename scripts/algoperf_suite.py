r"""Runs the reference baselines on every workload (studies x trials each), then scores them.

    python -m scripts.algoperf_suite --experiment_dir=/tmp/ap_suite --num_studies=2 --num_tuning_trials=3 \
        --out_dir=results/algoperf

Each baseline of ``--baselines`` on each workload of ``--workloads`` into ``EXPERIMENT_DIR/external/BASELINE/``
(re-running resumes unfinished trials and skips finished ones), ``--self_tuning`` adds the self-tuning
NAdamW under ``EXPERIMENT_DIR/self/``; then each ruleset is scored (``algoperf.suite.run_suite``).
"""
from algoperf import suite
from scripts import common

if __name__ == "__main__":
    common.main(suite.SuiteConfig, suite.run_suite)
