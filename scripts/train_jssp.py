r"""Trains the job-shop dispatching policy with PPO and CP-SAT-improved demonstrations (rl/jssp/train.py).

    python -m scripts.train_jssp --workdir=/tmp/jssp --steps=300
    python -m scripts.train_jssp --workdir=/tmp/jssp --steps=300 --curriculum=10x10:0,15x15:100

Every flag is a setting of ``rl.jssp.train.TrainJSSPConfig`` (``--helpfull`` lists them with their help).
Writes config.json, metrics.jsonl (and TensorBoard event files), curves.png, summary.json, Orbax checkpoints
(re-running resumes, SIGTERM checkpoints and exits 0) and, with ``--export_dir``, the final policy as
policy.msgpack + policy.json. The shipped policy's exact command is in rl/jssp/trained/policy.json.
"""
from rl.jssp import train
from scripts import common

if __name__ == "__main__":
    common.main(train.TrainJSSPConfig, train.train)
