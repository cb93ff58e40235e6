"""Short GPU check of the bucketed grouped GEMM (parallel/moe's default on GPU since ragged_dot measured
6-45x dense there): full MoE layer fwd+bwd vs the dense-equivalent GEMMs, each figure printed as soon as it
is measured (the device session had under 3 minutes left). Run by hand on the device machine, from the
repository root:
    python3 -m tools.device_check_bucketed [model ...]"""
import sys

import jax.numpy as jnp

from training.benchmarks import moe as b
from training.benchmarks.timing import time_variants

if __name__ == "__main__":
    for name in sys.argv[1:] or ["qwen2_moe", "mixtral", "phi35_moe"]:
        variants, info = b.make_variants(name, 16384, 1.25, 1024, jnp.bfloat16)
        variants.pop("onehot_capacity")
        med, _ = time_variants(variants, 5)
        print(name, info["plan"], {v: f"{t * 1e3:.2f} ms" for v, t in med.items()},
              f"moe/dense {med['moe_dropless'] / med['dense_equivalent']:.2f}", flush=True)
