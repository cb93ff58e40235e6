"""Training throughput: tokens per second and model FLOPs utilisation (MFU).

MFU (Chowdhery et al. 2022, PaLM, appendix B) is the model's FLOPs per second over the chips' peak:
a decoder of N parameters (those a token passes through: every parameter of a dense model, the tied
embedding included since it is also the output projection; for MoE the experts a token is routed to)
costs 6N FLOPs per token for the forward and backward matmuls, plus 12 * layers * d_model * context for
the attention scores and their weighting (counted for the full square, as PaLM and nanoGPT do, not the
causal half). The peak is the chip's dense bfloat16 matrix rate from the vendor's datasheet, whatever the
compute dtype (as nanoGPT reports it); a chip not in :data:`PEAK_BF16_FLOPS` has MFU "unknown".
"""
from __future__ import annotations

import math

# Dense (no sparsity) bfloat16 matrix FLOP/s per chip, vendors' datasheets. Matched as substrings of
# jax's ``device_kind``, longest first (so "H100 PCIe" wins over "H100").
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,        # SXM ("NVIDIA H100 80GB HBM3")
    "H200 NVL": 835e12,
    "H200": 989e12,        # SXM: the H100's arithmetic, faster memory
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # Trillium (v6e)
}


def peak_flops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak FLOP/s, or None for a chip not in the table (CPUs included)."""
    for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            return PEAK_BF16_FLOPS[name]
    return None


def flops_per_token(active_params: int, num_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 L d T (PaLM appendix B; nanoGPT's ``estimate_mfu``)."""
    return 6.0 * active_params + 12.0 * num_layers * d_model * seq_len


def active_params(params, top_k: int = 0, num_experts: int = 0) -> int:
    """Parameters a token passes through: all of them, except that of an expert weight tensor (a leaf
    under a name starting ``w_`` in an MoE FFN, leading axis = experts) only top_k / num_experts count."""
    import jax

    total = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = str(getattr(path[-1], "key", path[-1]))
        expert = num_experts and name.startswith("w_") and leaf.ndim == 3 and leaf.shape[0] == num_experts
        total += leaf.size * (top_k / num_experts if expert else 1.0)
    return int(round(total))


def throughput(steps_per_sec: float | None, tokens_per_step: int, flops_per_tok: float, device_kind: str,
               num_devices: int) -> dict:
    """``{tokens_per_sec, mfu}`` for a measured step rate (MFU "unknown" for a chip without a known peak)."""
    if steps_per_sec is None or not math.isfinite(steps_per_sec):
        return {"tokens_per_sec": None, "mfu": None}
    tokens = steps_per_sec * tokens_per_step
    peak = peak_flops(device_kind)
    mfu = "unknown" if peak is None else tokens * flops_per_tok / (peak * num_devices)
    return {"tokens_per_sec": tokens, "mfu": mfu}
