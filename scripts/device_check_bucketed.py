"""Short GPU check of the bucketed grouped GEMM (parallel/moe's default on GPU since ragged_dot measured
6-45x dense there): full MoE layer fwd+bwd vs the dense-equivalent GEMMs, each figure printed as soon as it
is measured (the device session had under 3 minutes left). Run by hand on the device machine:
    python3 scripts/device_check_bucketed.py"""
import sys

import jax.numpy as jnp

sys.path.insert(0, ".")
from training.benchmarks import moe as b  # noqa: E402
from training.benchmarks.timing import time_variants  # noqa: E402

for name in sys.argv[1:] or ["qwen2_moe", "mixtral", "phi35_moe"]:
    variants, info = b.make_variants(name, 16384, 1.25, 1024, jnp.bfloat16)
    variants.pop("onehot_capacity")
    med, _ = time_variants(variants, 5)
    print(name, info["plan"], {v: f"{t * 1e3:.2f} ms" for v, t in med.items()},
          f"moe/dense {med['moe_dropless'] / med['dense_equivalent']:.2f}", flush=True)
