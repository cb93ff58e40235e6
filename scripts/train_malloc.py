r"""Trains mallocMuZero by self-play on the mallocGame (rl/malloc/train.py).

    python -m scripts.train_malloc --workdir=/tmp/malloc --steps=200
    python -m scripts.train_malloc --workdir=/tmp/malloc --export_dir=rl/malloc/trained   # the shipped network

Every flag is a setting of ``rl.malloc.train.TrainMallocConfig`` (``--helpfull`` lists them with their help);
the old spellings --simulations and --pretrain_steps still work. Writes config.json, metrics.jsonl (and
TensorBoard event files), curves.png, summary.json and Orbax checkpoints; re-running the same command on the
same workdir resumes (SIGTERM: checkpoint and exit 0); with --export_dir, the final network (muzero.msgpack +
muzero.json).
"""
from rl.malloc import train
from scripts import common

if __name__ == "__main__":
    common.main(train.TrainMallocConfig, train.train)
