r"""Benchmarks DiLoCo's inner step against data-parallel on the same mesh, the outer step separately,
and prints the utilisation simulator's Table 4 beside the paper's (training/benchmarks/diloco.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m scripts.bench_diloco --out=results/diloco/bench_diloco.json

Every flag but ``--out`` is a setting of ``training.benchmarks.diloco.BenchDiLoCoConfig``.
"""
from absl import flags

from scripts import common
from training import benchmarks
from training.benchmarks import diloco

if __name__ == "__main__":
    common.main(diloco.BenchDiLoCoConfig, lambda cfg: benchmarks.report(diloco, cfg, flags.FLAGS.out),
                extra_flags=lambda: flags.DEFINE_string("out", "", benchmarks.OUT_HELP),
                preflight=common.require_out_flag)
