r"""Benchmark of the MoE layer (training/benchmarks/moe.py): the dropless layer against dense GEMMs of the
same active FLOPs and the one-hot capacity baseline, at scaled-down Mixtral, Qwen2-MoE and Phi-3.5-MoE shapes.

    python -m scripts.bench_moe --out=bench_moe.json
    python -m scripts.bench_moe --tokens=512 --repeats=3 --models=mixtral

Every flag but ``--out`` is a setting of ``training.benchmarks.moe.BenchMoEConfig``; the async-collective
XLA flags are set on GPU/TPU.
"""
from absl import flags

from scripts import common
from training import benchmarks
from training.benchmarks import moe

if __name__ == "__main__":
    common.main(moe.BenchMoEConfig, lambda cfg: benchmarks.report(moe, cfg, flags.FLAGS.out), async_collectives=True,
                extra_flags=lambda: flags.DEFINE_string("out", "", benchmarks.OUT_HELP),
                preflight=common.require_out_flag)
