r"""Chooses each baseline's short-list search space per workload, leave-one-workload-out (algoperf/search_spaces.py).

    python -m scripts.choose_algoperf_search_spaces --out=results/algoperf/search_spaces.json

From the target-setting trials (scripts.set_algoperf_targets' files): for each workload, the points of each
baseline that come closest to the other workloads' targets (greedy coverage), written in upstream's list
format to algoperf/baselines/search_spaces/BASELINE/WORKLOAD.json; the suite tunes over them with
--search_spaces=lists.
"""
from algoperf import search_spaces
from scripts import common

if __name__ == "__main__":
    common.main(search_spaces.ChooseConfig, search_spaces.choose_all)
