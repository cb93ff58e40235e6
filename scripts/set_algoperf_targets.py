r"""Sets the workloads' validation/test targets and runtime budgets by upstream AlgoPerf's procedure.

    python -m scripts.set_algoperf_targets --workloads=mnist1d,ctr,lm --out=results/algoperf/targets.json

Tunes the four target-setting algorithms (8 quasi-random points each, within each workload's step budget),
reruns the best configuration 5 times, takes the median of the reruns' best validation values as the
target, the worst test value of the reruns that reached it as the test target, and 4/3 of the reruns'
median runtime as the budget (the procedure: ``algoperf.targets``). Writes a JSON with every trial's
best value, the chosen configuration, the reruns and the resulting targets; the numbers are then copied
into the workload classes (``algoperf/workloads/*.py``), which cite that file.
"""
from algoperf import targets
from scripts import common

if __name__ == "__main__":
    common.main(targets.TargetsConfig, targets.set_all_targets)
