r"""Runs the full AlgoPerf suite -- the reference baselines and the self-tuning NAdamW on every base workload --
then scores it.

    python -m scripts.algoperf_suite --experiment_dir=runs/ap_suite     # v0.6: 3 studies x 5 trials

Each baseline of ``--baselines`` on each workload into ``EXPERIMENT_DIR/external/BASELINE/study_K/...``, the
self-tuning NAdamW into ``EXPERIMENT_DIR/self/`` (``--noself_tuning`` leaves it out); a progress line per
trial (trial i of N, eta). Re-running the same command after a kill resumes where it stopped. Scores go to
``--out_dir`` (default EXPERIMENT_DIR/scores/{external,self}). ``--rules=v0.5`` runs the held-out variants
and 5 studies and scores with the variant rule (``algoperf.suite.run_suite``).
"""
from algoperf import suite
from scripts import common

if __name__ == "__main__":
    common.main(suite.SuiteConfig, suite.run_suite)
