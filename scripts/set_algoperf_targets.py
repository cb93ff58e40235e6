r"""Sets the workloads' validation/test targets and runtime budgets the way upstream AlgoPerf set theirs.

    python -m scripts.set_algoperf_targets --workloads=mnist1d,lm,ctr --out=results/algoperf/targets.json

Tunes the reference baselines within each workload's step budget, reruns the best configuration and
takes the median of the reruns (the procedure: ``algoperf.targets``). Writes a JSON with every trial's
best value, the chosen configuration, the reruns and the resulting targets; the numbers are then copied
into the workload classes (``algoperf/workloads/*.py``), which cite that file.
"""
from algoperf import targets
from scripts import common

if __name__ == "__main__":
    common.main(targets.TargetsConfig, targets.set_all_targets)
