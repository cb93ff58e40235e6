r"""Scores AlgoPerf logs: time to target, performance profiles (tau in [1, 4]), benchmark scores.

    python -m scripts.score_algoperf --experiment_dir=/tmp/ap --out_dir=results/algoperf

``--experiment_dir`` holds one folder per submission (each with study_K/WORKLOAD_jax/trial_N) or a
single submission. Targets come from our workload registry, else from each trial's
meta_data_*.json (upstream logs). Writes scores.md (table), scores.json and performance_profiles.png
(``algoperf.scoring.score``).
"""
from algoperf import scoring
from scripts import common

if __name__ == "__main__":
    common.main(scoring.ScoreConfig, scoring.score)
