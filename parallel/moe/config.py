"""What the MoE layer computes and how it runs: :class:`MoEConfig` (a frozen dataclass, checked on
construction so that a wrong flag is a ``ValueError`` naming it) and the allowed values of its enumerated
fields. The defaults follow Switch/ST-MoE (Fedus et al. 2021; Zoph et al. 2022: aux-loss weights
0.01 and 0.001) and Mixtral (top-2 of 8, renormalised)."""
from __future__ import annotations

import dataclasses
import math

GATINGS = ("softmax", "sigmoid")
IMPLS = ("auto", "bucketed", "blocked", "ragged", "pallas")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """What the layer computes and how it is executed.

    num_experts, top_k: E experts, k chosen per token.
    gating: ``softmax`` (Shazeer 2017) or ``sigmoid`` (DeepSeek-V3) router scores.
    renormalize: divide the k chosen scores by their sum (Mixtral, Qwen2-MoE) so the weights sum to 1.
    capacity_factor: 0 = dropless; > 0: each expert (one device: ``moe_capacity_onehot``) or each
      destination device (expert parallel) accepts ``ceil(cf * tokens * k / E)`` assignments per chunk
      (times experts per device), later ones are dropped (GShard priority: all first choices, then second ...).
    num_chunks: Comet chunks C; 0 = chosen by the cost model :func:`choose_num_chunks`.
    impl: grouped-GEMM implementation: ``bucketed`` (per-expert bulk batched GEMM + blocked overflow),
      ``blocked`` (padded row blocks), ``ragged`` (lax.ragged_dot), ``pallas`` (the blocked layout in Pallas
      kernels that read rows by index, :mod:`parallel.moe.pallas_gemm`; interpret mode off GPU) or ``auto``
      (:func:`resolve_impl`: blocked on CPU, bucketed on GPU, ragged on TPU).
    block_rows: rows per block of the blocked layout (bucketed: of its overflow region); 0 = automatic
      (:func:`auto_block_rows`, :func:`overflow_block_rows`).
    bucket_factor: bucketed bulk capacity per expert as a multiple of its mean load; 0 = per-backend
      default (:data:`BUCKET_FACTOR`).
    bidirectional: bidirectional collective-matmul rings over ``tensor``.
    device_flops, link_bandwidth, collective_latency_s, gemm_overhead_s: cost-model figures; 0 = per-backend
      defaults (:data:`COST_DEFAULTS`).
    load_balance_weight, z_loss_weight: weights of the two auxiliary losses in ``aux["aux_loss"]``.
    """
    num_experts: int = 8
    top_k: int = 2
    gating: str = "softmax"
    renormalize: bool = True
    capacity_factor: float = 0.0
    num_chunks: int = 0
    impl: str = "auto"
    block_rows: int = 0
    bucket_factor: float = 0.0
    bidirectional: bool = True
    max_chunks: int = 8
    device_flops: float = 0.0
    link_bandwidth: float = 0.0
    collective_latency_s: float = 0.0
    gemm_overhead_s: float = 0.0
    load_balance_weight: float = 0.01
    z_loss_weight: float = 0.001

    def __post_init__(self):
        for name in ("num_experts", "top_k", "max_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MoEConfig.{name}={value!r} must be a positive integer")
        for name in ("num_chunks", "block_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"MoEConfig.{name}={value!r} must be an integer >= 0 (0 = automatic)")
        if self.top_k > self.num_experts:
            raise ValueError(f"MoEConfig.top_k={self.top_k} must not exceed num_experts={self.num_experts}")
        if self.gating not in GATINGS:
            raise ValueError(f"MoEConfig.gating={self.gating!r}; allowed: {GATINGS}")
        if self.impl not in IMPLS:
            raise ValueError(f"MoEConfig.impl={self.impl!r}; allowed: {IMPLS}")
        for name in ("capacity_factor", "device_flops", "link_bandwidth", "collective_latency_s",
                     "gemm_overhead_s", "load_balance_weight", "z_loss_weight", "bucket_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"MoEConfig.{name}={value!r} must be a finite number >= 0")
