r"""Benchmarks the mallocGame (JAX vs plain Python) and the mallocMuZero search (rl/malloc/bench.py).

    python -m scripts.bench_malloc --out=/tmp/bench_malloc.json

Every flag is a setting of ``rl.malloc.bench.BenchMallocConfig``.
"""
from rl.malloc import bench
from scripts import common

if __name__ == "__main__":
    common.main(bench.BenchMallocConfig, bench.run)
