r"""Consecutive multi-process training runs with periodic checkpoints, counted by how each ended (finished,
stalled, lost a peer, failed, timed out), per checkpoint mode (training/benchmarks/multiprocess.py).

    python -m scripts.bench_multiprocess --workdir=/tmp/mp                       # 20 runs x 3 modes (resumable)
    python -m scripts.bench_multiprocess --workdir=/tmp/mp1 --runs=1 --modes=sync --steps=20 --checkpoint_every=5

Every flag is a setting of ``training.benchmarks.multiprocess.BenchMultiprocessConfig``.
"""
from scripts import common
from training.benchmarks import multiprocess


def _run(cfg: multiprocess.BenchMultiprocessConfig) -> None:
    record = multiprocess.run(cfg)
    print(multiprocess.format_table(record))
    print(f"\nwrote {cfg.out_path}")


if __name__ == "__main__":
    common.main(multiprocess.BenchMultiprocessConfig, _run)
