r"""Runner overhead: per-step time of the AlgoPerf runner vs a hand-written loop of the same step.

    python -m scripts.bench_algoperf --workload=mnist1d --steps=300 --repeats=5 --out=results/algoperf/bench_algoperf.json

Both run the NAdamW baseline's step on the same workload, batches and optimizer; median of ``--repeats``
alternating runs; overhead = runner / hand - 1 (``algoperf.bench``). On a shared machine pin it to one
idle core (``taskset -c 0``).
"""
from algoperf import bench
from scripts import common

if __name__ == "__main__":
    common.main(bench.BenchConfig, bench.run_bench)
