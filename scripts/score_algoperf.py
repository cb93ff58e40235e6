r"""Scores AlgoPerf logs: time to target, performance profiles (tau in [1, 4]), benchmark scores.

    python -m scripts.score_algoperf --experiment_dir=/tmp/ap_suite/external --out_dir=/tmp/ap_scores

``--experiment_dir`` holds one folder per submission (each with study_K/WORKLOAD_jax/trial_N, or upstream's
single-study WORKLOAD_jax/trial_N) or a single submission. ``--rules=v0.6`` (default) scores the base
workloads; ``--rules=v0.5`` adds the held-out variants' rule. Targets come from our workload registry, else
from each trial's meta_data_*.json (upstream logs). Writes scores.md (table), scores.json and
performance_profiles.png to ``--out_dir`` (``algoperf.scoring.score``); keep it outside the scored folder if
upstream's score_submissions.py is to read that folder too.
"""
from algoperf import scoring
from scripts import common

if __name__ == "__main__":
    common.main(scoring.ScoreConfig, scoring.score)
