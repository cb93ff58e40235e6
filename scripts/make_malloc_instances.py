r"""Regenerates the shipped mallocGame instance set from the toolkit's own programs (rl/malloc/instance_sets.py).

    python -m scripts.make_malloc_instances                         # rl/malloc/instances/{train,test}/
    python -m scripts.make_malloc_instances --random=1000 --random_dir=/tmp/malloc_random

Every flag is a setting of ``rl.malloc.instance_sets.MakeInstancesConfig``.
"""
from rl.malloc import instance_sets
from scripts import common

if __name__ == "__main__":
    common.main(instance_sets.MakeInstancesConfig, instance_sets.make)
