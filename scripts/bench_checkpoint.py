r"""Benchmark of parallel/checkpoint.py (training/benchmarks/checkpoint.py): blocking vs synchronous save,
time to durable, memory, and the end-to-end cost of checkpointing inside the LM experiment.

    python -m scripts.bench_checkpoint --out=bench_checkpoint.json
    python -m scripts.bench_checkpoint --sizes_mb=64,256 --loop_steps=0        # save part only

Every flag but ``--out`` is a setting of ``training.benchmarks.checkpoint.BenchCheckpointConfig``.
"""
from absl import flags

from scripts import common
from training import benchmarks
from training.benchmarks import checkpoint

if __name__ == "__main__":
    common.main(checkpoint.BenchCheckpointConfig, lambda cfg: benchmarks.report(checkpoint, cfg, flags.FLAGS.out),
                extra_flags=lambda: flags.DEFINE_string("out", "", benchmarks.OUT_HELP),
                preflight=common.require_out_flag)
