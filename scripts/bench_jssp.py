r"""Environment throughput: the pure-JAX job-shop env vs a plain-Python one, both with SPT (rl/jssp/bench.py).

    python -m scripts.bench_jssp --out=results/jssp/bench_jssp.json
    python -m scripts.bench_jssp --sizes=10x10,15x15 --batches=1,64,512 --repeats=3

Every flag is a setting of ``rl.jssp.bench.BenchJSSPConfig``.
"""
from rl.jssp import bench
from scripts import common

if __name__ == "__main__":
    common.main(bench.BenchJSSPConfig, bench.run)
