r"""Writes a test set of generated job-shop instances (the families of rl.jssp.instances.DISTRIBUTIONS) with
CP-SAT bounds, for ``eval_jssp --instances=DIR --bounds=DIR/bounds.csv``.

    python -m scripts.make_jssp_instances --out_dir=runs/families --sizes=20x15 --count=10 --bound_time_limit=10

Every flag is a setting of ``rl.jssp.instance_sets.MakeSetConfig`` (see ``rl.jssp.instance_sets.make_set``).
"""
from rl.jssp import instance_sets
from scripts import common

if __name__ == "__main__":
    common.main(instance_sets.MakeSetConfig, lambda cfg: print(f"{len(instance_sets.make_set(cfg))} instances and "
                                                               f"bounds.csv in {cfg.out_dir}"))
