r"""Chooses the sampling temperature of a trained JSSP policy on random validation instances and stores it
in its policy.json (``sampling_temperature``; ``eval_jssp --samples=B`` then samples at it).

    python -m scripts.tune_jssp_sampling --policy_dir=rl/jssp/trained --size=15x15 --instances=16 --samples=128

Every flag is a setting of ``rl.jssp.tuning.TuneSamplingConfig`` (see ``rl.jssp.tuning.tune_sampling``).
"""
import json

from rl.jssp import tuning
from scripts import common

if __name__ == "__main__":
    common.main(tuning.TuneSamplingConfig, lambda cfg: print(json.dumps(tuning.tune_sampling(cfg), indent=2)))
