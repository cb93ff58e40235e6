r"""Trains the byte-level decoder LM (training/lm.py) on the embedded corpus, data-parallel.

    python -m scripts.train_lm --workdir=/tmp/lm            # Tiny Shakespeare, 2,000 steps
    python -m scripts.train_lm --workdir=/tmp/lm --mesh=data:8 --batch_size=64 --data_dir=~/corpus
    python -m scripts.train_lm --workdir=/tmp/moe --moe_num_experts=8 --mesh=data:2,expert:2,tensor:2

Every flag is a setting of ``training.lm.TrainLMConfig`` (``--helpfull`` lists them with their help). Writes
config.json, metrics.jsonl (and its TensorBoard event files), loss_curve.png, summary.json and Orbax
checkpoints; re-running the same command on the same workdir resumes from the latest checkpoint (SIGTERM:
checkpoint and exit 0).
"""
from scripts import common
from training import lm

if __name__ == "__main__":
    common.main(lm.TrainLMConfig, lm.train, preflight=lm.check_devices, async_collectives=True)
