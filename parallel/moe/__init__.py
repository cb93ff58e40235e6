"""Sharded Mixture-of-Experts FFN: top-k router, dropless grouped SwiGLU experts, GShard capacity baseline,
expert parallelism with ``all_to_all`` and Comet-style chunked computation/communication overlap.

Each token picks k of E SwiGLU experts with a learned router; the layer returns the router-weighted sum of
their outputs, ``y_t = sum_{j<k} g_{t,j} SwiGLU_{e_{t,j}}(x_t)``, plus auxiliary losses that keep the
router balanced. One module per idea:

  * :mod:`~parallel.moe.config`       -- :class:`MoEConfig`: what the layer computes and how it runs.
  * :mod:`~parallel.moe.routing`      -- top-k gating, the combine, load-balance and router z-losses.
  * :mod:`~parallel.moe.grouped_gemm` -- expert-sorted layouts and grouped GEMMs (blocked with a hand-written
    VJP, bucketed, ragged), the dropless expert SwiGLU :func:`expert_rows`.
  * :mod:`~parallel.moe.pallas_gemm`  -- the same grouped GEMMs as Pallas kernels reading rows by index
    (``impl="pallas"``), with their VJP (a transposed grouped GEMM for the weights).
  * :mod:`~parallel.moe.vma`          -- varying-mesh-axes casts for custom VJPs and kernels in shard_map.
  * :mod:`~parallel.moe.capacity`     -- the GShard capacity-factor one-hot dispatch baseline.
  * :mod:`~parallel.moe.overlap`      -- Comet's chunk cost model and the expert-parallel shard_map body.
  * :mod:`~parallel.moe.layer`        -- :func:`moe_ffn` (picks the path), parameters, checks, and the Flax
    module :class:`MoEFFN` with :func:`moe_ffn_factory` for models.transformer.DecoderLM.

References:
  * Shazeer et al. 2017, "Outrageously Large Neural Networks" -- top-k gating.
  * Lepikhin et al. 2020, "GShard", sec. 2.2 / Alg. 1 -- expert capacity, one-hot dispatch, token dropping.
  * Fedus et al. 2021, "Switch Transformers", eq. 4 -- load-balancing loss ``E * sum_e f_e * P_e``.
  * Zoph et al. 2022, "ST-MoE", eq. 5 -- router z-loss ``mean_t logsumexp(logits_t)^2``.
  * Gale et al. 2022, "MegaBlocks" -- dropless MoE as block-sparse / grouped GEMMs over expert-sorted tokens.
  * Zhang et al. 2025, "Comet" (MLSys'25) -- fine-grained overlap: split dispatched tokens so one chunk's
    communication runs beside another chunk's expert GEMM.
"""
from parallel.moe.capacity import expert_capacity, moe_capacity_onehot, priority_positions
from parallel.moe.config import GATINGS, IMPLS, MoEConfig
from parallel.moe.grouped_gemm import (
    BUCKET_FACTOR, GemmPlan, Groups, auto_block_rows, blocked_matmul, bucket_capacity, expert_rows,
    grouped_matmul, make_groups, overflow_block_rows, plan_grouped_gemm, resolve_impl)
from parallel.moe.layer import (
    LayerFn, MoEFFN, init_params, moe_dropless_local, moe_ffn, moe_ffn_factory, sown_aux_loss, validate)
from parallel.moe.overlap import (COST_DEFAULTS, TOKEN_AXES, choose_num_chunks, chunk_time, cost_defaults,
                                  exchange_time, mesh_token_axes, pipeline_time, shard_specs)
from parallel.moe.routing import Routing, load_balance_loss, load_balance_terms, route, router_z_loss

__all__ = [
    # config
    "GATINGS", "IMPLS", "MoEConfig",
    # routing
    "Routing", "route", "load_balance_terms", "load_balance_loss", "router_z_loss",
    # grouped_gemm
    "BUCKET_FACTOR", "Groups", "make_groups", "auto_block_rows", "bucket_capacity", "overflow_block_rows",
    "blocked_matmul", "grouped_matmul", "resolve_impl", "GemmPlan", "plan_grouped_gemm", "expert_rows",
    # capacity
    "priority_positions", "expert_capacity", "moe_capacity_onehot",
    # overlap
    "COST_DEFAULTS", "TOKEN_AXES", "cost_defaults", "chunk_time", "exchange_time", "pipeline_time", "choose_num_chunks",
    "mesh_token_axes", "shard_specs",
    # layer
    "init_params", "validate", "moe_dropless_local", "moe_ffn", "LayerFn", "MoEFFN", "moe_ffn_factory",
    "sown_aux_loss",
]
