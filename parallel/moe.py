"""Sharded Mixture-of-Experts FFN: top-k router, dropless grouped SwiGLU experts, GShard capacity baseline,
expert parallelism with ``all_to_all`` and Comet-style chunked computation/communication overlap.

References:
  * Shazeer et al. 2017, "Outrageously Large Neural Networks" -- top-k gating.
  * Lepikhin et al. 2020, "GShard", sec. 2.2 / Alg. 1 -- expert capacity, one-hot dispatch, token dropping.
  * Fedus et al. 2021, "Switch Transformers", eq. 4 -- load-balancing loss ``E * sum_e f_e * P_e``.
  * Zoph et al. 2022, "ST-MoE", eq. 5 -- router z-loss ``mean_t logsumexp(logits_t)^2``.
  * Gale et al. 2022, "MegaBlocks" -- dropless MoE as block-sparse / grouped GEMMs over expert-sorted tokens.
  * Zhang et al. 2025, "Comet" (MLSys'25) -- fine-grained overlap: split dispatched tokens so one chunk's
    communication runs beside another chunk's expert GEMM.

Parameters (a plain dict, see :func:`init_params`): ``router`` [d, E], ``w_gate``/``w_up`` [E, d, h],
``w_down`` [E, h, d]. Expert i computes ``SwiGLU_i(x) = (silu(x W_gate_i) * x W_up_i) W_down_i``; the layer
returns ``y_t = sum_{j<k} g_{t,j} SwiGLU_{e_{t,j}}(x_t)`` (Shazeer 2017, eq. 1).

Execution paths, all numerically the same dropless function unless a capacity factor is set:
  * ``moe_ffn(params, x, cfg)`` with no mesh: one device. Tokens are sorted by expert and the expert
    SwiGLU runs as grouped GEMMs in one of three layouts (``impl``, :func:`resolve_impl`):
    ``blocked`` (CPU default): each group padded to a multiple of a block of rows, one ``[block, d] @
    [d, h]`` GEMM per *occupied* block in a while-loop (its VJP is written by hand so the weight gradient
    accumulates in place); ``bucketed`` (GPU default): each expert's first c rows (c ~ its mean load x
    :data:`BUCKET_FACTOR`) in one batched ``[E, c, d] @ [E, d, h]`` GEMM, the rest (the tail of an
    overloaded expert) through the blocked loop, so the layer stays dropless; ``ragged``
    (``lax.ragged_dot``; TPU default): a native grouped GEMM on TPU, but a dense masked product (E x the
    FLOPs) on XLA:CPU and on XLA:GPU (measured on an H100, jax 0.11.2). Chosen by scripts/bench_moe.py.
  * ``moe_ffn(..., mesh=mesh)``: ``shard_map`` over the ``expert`` and ``tensor`` axes (tokens are split over
    every token axis). Experts live on the ``expert`` axis; tokens travel to them with ``all_to_all`` at a
    fixed per-destination capacity (XLA:CPU has no ``ragged_all_to_all``); dropless when
    ``capacity_factor == 0`` (capacity = the worst case). Inside experts the hidden dimension is split over
    ``tensor`` and the expert GEMMs are collective matmuls (:mod:`parallel.collective_matmul`).
  * Comet chunking: the local tokens are cut into C chunks; chunk i's dispatch ``all_to_all`` does not
    depend on chunk i-1's expert GEMM, nor chunk i-1's combine on chunk i's GEMM, so a latency-hiding
    scheduler overlaps them. C comes from :func:`choose_num_chunks` unless set.
  * ``moe_capacity_onehot``: the GShard one-hot dispatch/combine einsums with token dropping (baseline).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from parallel import collective_matmul as cm

GATINGS = ("softmax", "sigmoid")
IMPLS = ("auto", "bucketed", "blocked", "ragged")
# Bucketed bulk capacity / mean expert load: on GPU a padded batched GEMM is cheap next to the overflow
# loop's per-iteration cost, so the bulk holds nearly every expert's whole load (the H100 run in README:
# no overflow at 16k tokens, grouped GEMM 1.00-1.07x dense); on CPU (where ``auto`` is blocked) every padded
# slot costs its FLOPs, so a forced bucketed layout keeps the bulk at the mean load.
BUCKET_FACTOR = {"cpu": 1.0, "gpu": 1.25, "tpu": 1.25}
TOKEN_AXES = ("data", "expert", "tensor")  # mesh axes that split tokens (batch and sequence parallel)


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
      ``blocked`` (padded row blocks), ``ragged`` (lax.ragged_dot) or ``auto`` (:func:`resolve_impl`:
      blocked on CPU, bucketed on GPU, ragged on TPU).
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


def init_params(key: jax.Array, d_model: int, hidden: int, num_experts: int, dtype=jnp.float32) -> dict:
    """Router and expert weights with fan-in scaled normal initialisation."""
    kr, kg, ku, kd = jax.random.split(key, 4)
    normal = lambda k, shape, fan_in: (jax.random.normal(k, shape, dtype) / math.sqrt(fan_in))  # noqa: E731
    return {"router": normal(kr, (d_model, num_experts), d_model),
            "w_gate": normal(kg, (num_experts, d_model, hidden), d_model),
            "w_up": normal(ku, (num_experts, d_model, hidden), d_model),
            "w_down": normal(kd, (num_experts, hidden, d_model), hidden)}


# ---------------------------------------------------------------------------------------------- router
class Routing(NamedTuple):
    weights: jax.Array   # [T, k] combine weights g_{t,j}
    experts: jax.Array   # [T, k] int32 chosen experts, best first
    logits: jax.Array    # [T, E] router logits (float32)
    scores: jax.Array    # [T, E] softmax or sigmoid scores


def route(x: jax.Array, router: jax.Array, top_k: int, gating: str = "softmax",
          renormalize: bool = True) -> Routing:
    """Top-k gating: scores = softmax(x W_r) or sigmoid(x W_r); the k best experts and their weights.

    With ``renormalize`` the k weights are divided by their sum (for softmax this is the softmax over the
    chosen k logits, as in Mixtral); otherwise they are the raw scores (Shazeer 2017 eq. 3-5, w/o noise).
    """
    logits = x.astype(jnp.float32) @ router.astype(jnp.float32)
    scores = jax.nn.softmax(logits, axis=-1) if gating == "softmax" else jax.nn.sigmoid(logits)
    weights, experts = lax.top_k(scores, top_k)
    if renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return Routing(weights, experts.astype(jnp.int32), logits, scores)


def load_balance_terms(routing: Routing, num_experts: int) -> tuple[jax.Array, jax.Array]:
    """Per-expert sums (over the given tokens) of the assignment counts and of the normalised scores."""
    counts = jnp.sum(jax.nn.one_hot(routing.experts, num_experts, dtype=jnp.float32), axis=(0, 1))
    probs = routing.scores / jnp.sum(routing.scores, axis=-1, keepdims=True)  # softmax: unchanged
    return counts, jnp.sum(probs, axis=0)


def load_balance_loss(count_sum: jax.Array, prob_sum: jax.Array, num_tokens, top_k: int) -> jax.Array:
    """Switch Transformer eq. 4 generalised to top-k: ``E * sum_e f_e P_e`` with f_e the fraction of the
    T*k assignments sent to e and P_e the mean (normalised) router score of e; 1 when perfectly uniform."""
    num_experts = count_sum.shape[0]
    f = count_sum / (num_tokens * top_k)
    p = prob_sum / num_tokens
    return num_experts * jnp.sum(f * p)


def router_z_loss(logits: jax.Array) -> jax.Array:
    """ST-MoE eq. 5 summand, summed over tokens: sum_t logsumexp(logits_t)^2 (divide by T for the mean)."""
    return jnp.sum(jax.nn.logsumexp(logits, axis=-1) ** 2)


def _aux(cfg: MoEConfig, count_sum, prob_sum, z_sum, num_tokens) -> dict:
    lb = load_balance_loss(count_sum, prob_sum, num_tokens, cfg.top_k)
    z = z_sum / num_tokens
    return {"load_balance_loss": lb, "router_z_loss": z,
            "aux_loss": cfg.load_balance_weight * lb + cfg.z_loss_weight * z,
            "expert_fraction": count_sum / (num_tokens * cfg.top_k)}


# ------------------------------------------------------------------------------------- grouped GEMM
class Groups(NamedTuple):
    """Where the rows of a batch of (row, expert) assignments go in the expert-sorted, padded layout.

    Without a bulk capacity the layout is the expert groups one after another, each padded to a multiple
    of ``block``. With a capacity c (``bucketed`` impl) it is a bulk region of E x c slots (expert e's
    first c rows at ``e*c + rank``, for one batched GEMM) followed by that blocked layout of the overflow
    rows (rank >= c); the block fields then describe the overflow region.
    """
    slot_of_row: jax.Array    # [M] int32 slot of each row in the padded layout (n_pad for invalid rows)
    row_of_slot: jax.Array    # [n_pad] int32 row feeding each slot (M = an empty slot -> zero input)
    block_expert: jax.Array   # [n_blocked // block] int32 expert of each block (blocked layout)
    num_blocks: jax.Array     # [] int32 occupied blocks (blocked layout)
    group_sizes: jax.Array    # [E] int32 slots per expert (ragged impl: padded sizes, block = 1)


def auto_block_rows(rows: int, num_experts: int) -> int:
    """Rows per block for the blocked GEMM: the largest power of two <= rows / (4 E) (expected padding
    ~ E * block / 2 <= 12.5% of the rows), clipped to [8, 256]. Measured by scripts/bench_moe.py."""
    target = max(1, rows // (4 * num_experts))
    return int(min(256, max(8, 2 ** int(math.floor(math.log2(target))))))


def bucket_capacity(expected_rows: float, num_experts: int, factor: float) -> int:
    """Bulk slots per expert of the ``bucketed`` layout: ``factor`` x the mean rows per expert, rounded up
    (to a multiple of 8 once above 8, for GEMM-friendly shapes; at least 1)."""
    c = max(1, math.ceil(factor * expected_rows / num_experts))
    return c if c <= 8 else 8 * math.ceil(c / 8)


def overflow_block_rows(capacity: int) -> int:
    """Rows per block of the ``bucketed`` overflow region: rows past the bulk capacity are few per expert
    (the tail of its load), so blocks are small: the power of two nearest sqrt(capacity), in [8, 64]."""
    return int(min(64, max(8, 2 ** round(math.log2(max(1.0, math.sqrt(capacity)))))))


def _padded_rows(rows: int, num_experts: int, block: int) -> int:
    if block == 1:
        return rows
    worst = rows + num_experts * (block - 1)          # every group may waste block-1 slots
    return -(-min(worst, rows * block) // block) * block


def make_groups(expert_of_row: jax.Array, num_experts: int, block: int, capacity: int = 0) -> Groups:
    """Sorts rows by expert (invalid rows: id < 0 or >= E) and lays them out (see :class:`Groups`): with
    ``capacity`` > 0 each expert's first ``capacity`` rows fill its bulk slots and the rest go, padded
    to a multiple of ``block`` per expert, to the overflow region."""
    m = expert_of_row.shape[0]
    valid = (expert_of_row >= 0) & (expert_of_row < num_experts)
    key = jnp.where(valid, expert_of_row, num_experts)
    order = jnp.argsort(key, stable=True)
    sorted_key = key[order]
    counts = jnp.bincount(key, length=num_experts + 1)[:num_experts].astype(jnp.int32)
    starts = jnp.cumsum(counts) - counts
    safe_key = jnp.minimum(sorted_key, num_experts - 1)
    rank = jnp.arange(m, dtype=jnp.int32) - starts[safe_key]
    bulk = num_experts * capacity
    over_counts = jnp.maximum(counts - capacity, 0)
    over_rank = rank - capacity
    blocks = (over_counts + block - 1) // block
    block_starts = (jnp.cumsum(blocks) - blocks) * block
    n_blocked = _padded_rows(max(m - capacity, 0), num_experts, block)
    n_blocked = max(n_blocked, block if capacity else 0)   # the overflow loop needs one block's rows
    n_pad = bulk + n_blocked
    slot_sorted = jnp.where(over_rank < 0, safe_key * capacity + rank, bulk + block_starts[safe_key] + over_rank)
    slot_sorted = jnp.where(sorted_key < num_experts, slot_sorted, n_pad)
    slot_of_row = jnp.zeros((m,), jnp.int32).at[order].set(slot_sorted.astype(jnp.int32))
    row_of_slot = jnp.full((n_pad,), m, jnp.int32).at[slot_of_row].set(
        jnp.arange(m, dtype=jnp.int32), mode="drop")
    nb = n_blocked // block
    block_ends = jnp.cumsum(blocks)
    block_expert = jnp.minimum(jnp.searchsorted(block_ends, jnp.arange(nb), side="right"),
                               num_experts - 1).astype(jnp.int32)
    return Groups(slot_of_row, row_of_slot, block_expert, block_ends[-1].astype(jnp.int32),
                  (blocks * block).astype(jnp.int32))


def _vma(x) -> set:
    """The mesh axes over which ``x`` varies inside shard_map (empty outside)."""
    mat = getattr(jax.typeof(x), "manual_axis_type", None)
    return set(getattr(mat, "varying", ()) or ())


def _varying_like(z: jax.Array, *refs) -> jax.Array:
    """Marks ``z`` as varying over every mesh axis that ``refs`` vary over (shard_map's check_vma types
    loop carries; a fresh ``jnp.zeros`` varies over none)."""
    missing = set().union(*(_vma(r) for r in refs)) - _vma(z)
    return lax.pcast(z, tuple(sorted(missing)), to="varying") if missing else z


def _sum_to_vma_of(ct: jax.Array, primal: jax.Array) -> jax.Array:
    """A cotangent that varies over more mesh axes than its primal is summed over them: the transpose of
    the implicit broadcast (``pcast`` to varying) of the primal in the forward computation."""
    extra = _vma(ct) - _vma(primal)
    return lax.psum(ct, tuple(sorted(extra))) if extra else ct


def _blocked_forward(x, w, block_expert, num_blocks, block):
    def body(b, out):
        xb = lax.dynamic_slice_in_dim(x, b * block, block)
        wb = lax.dynamic_index_in_dim(w, block_expert[b], keepdims=False)
        return lax.dynamic_update_slice_in_dim(out, (xb @ wb).astype(out.dtype), b * block, 0)
    out = _varying_like(jnp.zeros((x.shape[0], w.shape[-1]), x.dtype), x, w, block_expert, num_blocks)
    return lax.fori_loop(0, num_blocks, body, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def blocked_matmul(x, w, block_expert, num_blocks, block: int):
    """``out[r] = x[r] @ w[block_expert[r // block]]`` for the occupied blocks (rows beyond: zero).

    One GEMM per occupied block in a while-loop, so the work is the real (padded) token count, not E x.
    The VJP is hand-written: dx is the same loop with w transposed, dw accumulates ``x_b^T g_b`` into
    ``dw[e_b]`` in place (autodiff of the loop would add a full [E, d, h] zero tensor per block).
    """
    return _blocked_forward(x, w, block_expert, num_blocks, block)


def _blocked_fwd(x, w, block_expert, num_blocks, block):
    return _blocked_forward(x, w, block_expert, num_blocks, block), (x, w, block_expert, num_blocks)


def _blocked_bwd(block, res, g):
    x, w, block_expert, num_blocks = res
    dx = _blocked_forward(g, jnp.swapaxes(w, 1, 2), block_expert, num_blocks, block)

    def body(b, dw):
        e = block_expert[b]
        xb = lax.dynamic_slice_in_dim(x, b * block, block)
        gb = lax.dynamic_slice_in_dim(g, b * block, block)
        upd = lax.dynamic_index_in_dim(dw, e, keepdims=True) + (xb.T @ gb)[None].astype(dw.dtype)
        return lax.dynamic_update_index_in_dim(dw, upd[0], e, 0)
    dw = lax.fori_loop(0, num_blocks, body, _varying_like(jnp.zeros(w.shape, w.dtype), x, g, w, block_expert))
    return _sum_to_vma_of(dx, x), _sum_to_vma_of(dw, w), None, None


blocked_matmul.defvjp(_blocked_fwd, _blocked_bwd)


def grouped_matmul(x: jax.Array, w: jax.Array, groups: Groups, impl: str, block: int,
                   capacity: int = 0) -> jax.Array:
    """Rows ``x`` [n_pad, d] in the layout of ``groups`` times their expert's ``w`` [E, d, h]."""
    if impl == "ragged":
        return lax.ragged_dot(x, w, groups.group_sizes)
    if impl == "bucketed":
        e, bulk = w.shape[0], w.shape[0] * capacity
        dense = jnp.einsum("ecd,edh->ech", x[:bulk].reshape(e, capacity, x.shape[1]), w)
        tail = blocked_matmul(x[bulk:], w, groups.block_expert, groups.num_blocks, block)
        return jnp.concatenate([dense.reshape(bulk, w.shape[-1]), tail])
    return blocked_matmul(x, w, groups.block_expert, groups.num_blocks, block)


def resolve_impl(impl: str) -> str:
    """``auto``: ``blocked`` on CPU, ``bucketed`` on GPU, ``ragged`` on TPU. Measured by
    scripts/bench_moe.py (README, MoE results): XLA:CPU and XLA:GPU (H100, jax 0.11.2) lower ``ragged_dot``
    to a dense masked product (E x the FLOPs; 6-45x the dense-equivalent time on the H100). On the H100
    the bucketed batched GEMM runs at 1.00-1.07x the dense-equivalent GEMMs and the blocked loop at
    4-10x; on XLA:CPU the batched dot itself is 1.2-1.45x a plain GEMM, and blocked is faster there.
    On TPU ``ragged_dot`` is a native grouped GEMM (not measured here: no TPU was available)."""
    if impl != "auto":
        return impl
    return {"cpu": "blocked", "tpu": "ragged"}.get(jax.default_backend(), "bucketed")


def _swiglu_hidden(h_gate_up: jax.Array) -> jax.Array:
    gate, up = jnp.split(h_gate_up, 2, axis=-1)
    return jax.nn.silu(gate) * up


def _gate_up(w_gate, w_up):
    return jnp.concatenate([w_gate, w_up], axis=-1)  # one grouped GEMM for both SwiGLU inputs


class GemmPlan(NamedTuple):
    """How the grouped GEMMs run (static): ``impl`` (bucketed / blocked / ragged), rows per block of the
    blocked layout (the overflow region for bucketed) and the bucketed bulk capacity per expert."""
    impl: str
    block: int
    capacity: int = 0


def plan_grouped_gemm(cfg: "MoEConfig", expected_rows: int, num_experts: int) -> GemmPlan:
    """The :class:`GemmPlan` for ``expected_rows`` valid (row, expert) assignments over ``num_experts``
    local experts (the layout itself always holds the worst case: the layer stays dropless)."""
    impl = resolve_impl(cfg.impl)
    if impl == "ragged":
        return GemmPlan("ragged", 1)
    if impl == "blocked":
        return GemmPlan("blocked", cfg.block_rows or auto_block_rows(expected_rows, num_experts))
    factor = cfg.bucket_factor or BUCKET_FACTOR.get(jax.default_backend(), BUCKET_FACTOR["gpu"])
    capacity = bucket_capacity(expected_rows, num_experts, factor)
    return GemmPlan("bucketed", cfg.block_rows or overflow_block_rows(capacity), capacity)


def expert_rows(rows: jax.Array, expert_of_row: jax.Array, w_gate, w_up, w_down, plan: GemmPlan,
                tensor_axis: str | None = None, bidirectional: bool = True) -> jax.Array:
    """``SwiGLU_{e_r}(rows[r])`` for every row (0 for rows whose expert id is outside [0, E)).

    With ``tensor_axis`` (inside shard_map) the rows are this device's share of the rows of the tensor
    ring and the weights hold this device's slice of the hidden dimension: the gate/up GEMM is an
    all-gather collective matmul over the ring and the down GEMM a reduce-scatter collective matmul.
    """
    num_experts = w_gate.shape[0]
    impl, block, capacity = plan
    groups = make_groups(expert_of_row, num_experts, block, capacity)
    zero = jnp.zeros((1, rows.shape[1]), rows.dtype)
    padded = jnp.concatenate([rows, zero])[groups.row_of_slot]
    w_gu = _gate_up(w_gate, w_up)
    if tensor_axis is None:
        hidden = _swiglu_hidden(grouped_matmul(padded, w_gu, groups, impl, block, capacity))
        out = grouped_matmul(hidden, w_down, groups, impl, block, capacity)
    else:
        def first(shard, _):
            x_j, g_j = shard
            return _swiglu_hidden(grouped_matmul(x_j, w_gu, g_j, impl, block, capacity)), g_j
        hidden, all_groups = cm.all_gather_matmul((padded, groups), first, tensor_axis,
                                                  bidirectional=bidirectional)

        def second(j, lo, hi):
            g_j = jax.tree.map(lambda a: jnp.take(a, j, axis=0), all_groups)
            return grouped_matmul(jnp.take(hidden, j, axis=0), w_down[..., lo:hi], g_j, impl, block, capacity)
        out = cm.matmul_reduce_scatter(second, tensor_axis, w_down.shape[-1], bidirectional=bidirectional)
    out = jnp.concatenate([out, jnp.zeros((1, out.shape[1]), out.dtype)])
    return out[jnp.minimum(groups.slot_of_row, out.shape[0] - 1)]


def _combine(weights: jax.Array, per_assignment: jax.Array, dtype) -> jax.Array:
    t, k = weights.shape
    y = jnp.einsum("tk,tkd->td", weights.astype(jnp.float32),
                   per_assignment.reshape(t, k, -1).astype(jnp.float32))
    return y.astype(dtype)


# ------------------------------------------------------------------------------------ single device
def moe_dropless_local(params: dict, x: jax.Array, cfg: MoEConfig) -> tuple[jax.Array, dict]:
    """Dropless MoE on one device: x [T, d] -> (y [T, d], aux losses)."""
    t = x.shape[0]
    r = route(x, params["router"], cfg.top_k, cfg.gating, cfg.renormalize)
    plan = plan_grouped_gemm(cfg, t * cfg.top_k, cfg.num_experts)
    token = jnp.arange(t * cfg.top_k) // cfg.top_k
    out = expert_rows(x[token], r.experts.reshape(-1), params["w_gate"], params["w_up"], params["w_down"], plan)
    counts, probs = load_balance_terms(r, cfg.num_experts)
    return _combine(r.weights, out, x.dtype), _aux(cfg, counts, probs, router_z_loss(r.logits), t)


def priority_positions(experts: jax.Array, num_bins: int, bin_of_expert=None) -> jax.Array:
    """Position of each assignment [T, k] in its bin's queue, GShard priority: every token's first choice
    (in token order) before any second choice, and so on. Bins are experts (or devices via bin_of_expert)."""
    t, k = experts.shape
    bins = experts if bin_of_expert is None else bin_of_expert(experts)
    onehot = jax.nn.one_hot(bins.T.reshape(-1), num_bins, dtype=jnp.int32)  # slot-major order [k*T, B]
    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)
    return position.reshape(k, t).T


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """GShard: capacity = ceil(cf * T * k / E) assignments per expert (at least 1)."""
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def moe_capacity_onehot(params: dict, x: jax.Array, cfg: MoEConfig) -> tuple[jax.Array, dict]:
    """GShard Alg. 1 baseline: one-hot dispatch tensor [T, E, C], per-expert batched SwiGLU, combine.

    Assignments beyond an expert's capacity C (in :func:`priority_positions` order) are dropped: they
    contribute nothing and the remaining weights are *not* renormalised. ``cfg.capacity_factor`` 0 means 1.
    """
    t, _ = x.shape
    e = cfg.num_experts
    cap = expert_capacity(t, cfg.top_k, e, cfg.capacity_factor or 1.0)
    r = route(x, params["router"], cfg.top_k, cfg.gating, cfg.renormalize)
    pos = priority_positions(r.experts, e)
    keep = pos < cap
    dispatch = (jax.nn.one_hot(r.experts, e, dtype=x.dtype)[..., None]
                * jax.nn.one_hot(jnp.where(keep, pos, cap), cap, dtype=x.dtype)[..., None, :])  # [T,k,E,C]
    combine = jnp.einsum("tk,tkec->tec", r.weights.astype(x.dtype), dispatch)
    dispatch = jnp.sum(dispatch, axis=1)
    xin = jnp.einsum("tec,td->ecd", dispatch, x)
    hidden = jax.nn.silu(jnp.einsum("ecd,edh->ech", xin, params["w_gate"])) * jnp.einsum(
        "ecd,edh->ech", xin, params["w_up"])
    out = jnp.einsum("ech,ehd->ecd", hidden, params["w_down"])
    y = jnp.einsum("tec,ecd->td", combine, out)
    counts, probs = load_balance_terms(r, e)
    aux = _aux(cfg, counts, probs, router_z_loss(r.logits), t)
    aux["dropped_fraction"] = 1.0 - jnp.mean(keep.astype(jnp.float32))
    return y, aux


# ----------------------------------------------------------------------------------- cost model
COST_DEFAULTS = {  # per device: FLOP/s, bytes/s of the expert-axis link, per-collective and per-GEMM latency
    "cpu": dict(device_flops=5e10, link_bandwidth=1e10, collective_latency_s=2e-5, gemm_overhead_s=1e-5),
    "gpu": dict(device_flops=4e14, link_bandwidth=2e11, collective_latency_s=1e-5, gemm_overhead_s=5e-6),
    "tpu": dict(device_flops=1.9e14, link_bandwidth=9e10, collective_latency_s=1e-5, gemm_overhead_s=5e-6),
}


def chunk_time(num_chunks: int, gemm_flops: float, comm_bytes: float, flops: float, bandwidth: float,
               latency: float, overhead: float) -> float:
    """Modelled time of the dispatch -> expert GEMM -> combine pipeline cut into C chunks.

    Per chunk: a = latency + comm_bytes / (2 C bandwidth) for each of dispatch and combine, and
    g = overhead + gemm_flops / (C flops). Without overlap (C = 1) the time is 2a + g; with C chunks the
    first dispatch and last (GEMM, combine) are exposed and the rest runs at the pace of the slower of the
    GEMM and the link: T(C) = 2a + g + (C - 1) max(g, 2a). Smaller chunks hide more but pay the fixed
    latencies C times, so T has an interior minimum when communication and compute are comparable.
    """
    a = latency + comm_bytes / (2 * num_chunks * bandwidth)
    g = overhead + gemm_flops / (num_chunks * flops)
    return 2 * a + g + (num_chunks - 1) * max(g, 2 * a)


def choose_num_chunks(cfg: MoEConfig, local_tokens: int, d_model: int, hidden: int, ep: int, tp: int,
                      itemsize: int = 4, backend: str | None = None) -> tuple[int, dict]:
    """Comet's C: the divisor of ``local_tokens`` (<= cfg.max_chunks) minimising :func:`chunk_time`.

    FLOPs per device: 6 * tokens * k * d * h / tp (SwiGLU: three GEMMs). Bytes per device: the dispatch
    plus combine ``all_to_all`` (the (ep-1)/ep share of 2 * tokens * k * d values that leaves the device)
    plus the tensor rings ((tp-1)/tp of the gathered rows and of the reduce-scattered partials).
    """
    backend = backend or jax.default_backend()
    defaults = COST_DEFAULTS.get(backend if backend in COST_DEFAULTS else ("gpu" if backend in ("cuda", "rocm")
                                                                          else "cpu"))
    flops = cfg.device_flops or defaults["device_flops"]
    bandwidth = cfg.link_bandwidth or defaults["link_bandwidth"]
    latency = cfg.collective_latency_s or defaults["collective_latency_s"]
    overhead = cfg.gemm_overhead_s or defaults["gemm_overhead_s"]
    assignments = local_tokens * cfg.top_k
    gemm_flops = 6.0 * assignments * d_model * hidden / tp
    comm_bytes = itemsize * assignments * d_model * (2 * (ep - 1) / ep + 2 * (tp - 1))
    candidates = [c for c in range(1, cfg.max_chunks + 1) if local_tokens % c == 0]
    times = {c: chunk_time(c, gemm_flops, comm_bytes, flops, bandwidth, latency, overhead) for c in candidates}
    best = min(times, key=lambda c: (times[c], c))
    info = {"chosen": best, "modelled_s": times, "gemm_flops": gemm_flops, "comm_bytes": comm_bytes,
            "device_flops": flops, "link_bandwidth": bandwidth}
    return best, info


# ------------------------------------------------------------------------------------ validation
def _axis(mesh: Mesh | None, name: str) -> int:
    return int(mesh.shape[name]) if mesh is not None and name in mesh.shape else 1


def validate(cfg: MoEConfig, params: dict, x_shape: tuple, mesh: Mesh | None) -> None:
    """ValueError naming the values for every shape problem, before anything is traced or compiled."""
    if len(x_shape) != 2:
        raise ValueError(f"moe_ffn: x must be [tokens, d_model], got shape {tuple(x_shape)}")
    t, d = x_shape
    e, dw, h = params["w_gate"].shape
    if e != cfg.num_experts:
        raise ValueError(f"w_gate has {e} experts but MoEConfig.num_experts={cfg.num_experts}")
    if dw != d or params["router"].shape != (d, e) or params["w_up"].shape != (e, d, h) \
            or params["w_down"].shape != (e, h, d):
        raise ValueError(f"parameter shapes { {k: tuple(v.shape) for k, v in params.items()} } do not fit "
                         f"d_model={d}, num_experts={e}")
    if cfg.top_k > e:
        raise ValueError(f"top_k={cfg.top_k} must not exceed num_experts={e}")
    ep, tp = _axis(mesh, "expert"), _axis(mesh, "tensor")
    if e % ep:
        raise ValueError(f"num_experts={e} must be divisible by the 'expert' mesh axis size {ep}")
    if h % tp:
        raise ValueError(f"expert hidden size {h} must be divisible by the 'tensor' mesh axis size {tp}")
    shards = math.prod(_axis(mesh, a) for a in TOKEN_AXES)
    if t % shards:
        raise ValueError(f"tokens={t} must be divisible by the token-sharding mesh axes "
                         f"{[a for a in TOKEN_AXES if _axis(mesh, a) > 1]} (product {shards})")
    if cfg.num_chunks and (t // shards) % cfg.num_chunks:
        raise ValueError(f"num_chunks={cfg.num_chunks} must divide the tokens per device {t // shards} "
                         f"(tokens={t} over {shards} devices)")


# ------------------------------------------------------------------------------ expert parallel
def mesh_token_axes(mesh: Mesh | None) -> tuple[str, ...]:
    """The axes of ``mesh`` (of size > 1) that split the tokens."""
    return tuple(a for a in TOKEN_AXES if _axis(mesh, a) > 1)


def shard_specs(mesh: Mesh) -> tuple[dict, P]:
    """How the sharded layer lays out its inputs on ``mesh``: the parameters' PartitionSpecs (experts over
    ``expert``, the hidden dimension over ``tensor``) and the tokens' (over every token axis)."""
    ea = "expert" if _axis(mesh, "expert") > 1 else None
    ta = "tensor" if _axis(mesh, "tensor") > 1 else None
    params = {"router": P(), "w_gate": P(ea, None, ta), "w_up": P(ea, None, ta), "w_down": P(ea, ta, None)}
    return params, P(mesh_token_axes(mesh) or None)


def _sharded_body(params, x, *, cfg: MoEConfig, ep: int, tp: int, chunks: int, plan: GemmPlan,
                  token_axes: tuple, total_tokens: int):
    """Inside shard_map: local tokens x [T_loc, d]; local experts [E/ep, d, h/tp]."""
    e_loc = cfg.num_experts // ep
    r = route(x, params["router"], cfg.top_k, cfg.gating, cfg.renormalize)
    t_loc, d = x.shape
    tc = t_loc // chunks
    tensor_axis = "tensor" if tp > 1 else None
    if ep > 1:
        if cfg.capacity_factor:
            cap = max(1, math.ceil(cfg.capacity_factor * tc * cfg.top_k / ep))
        else:
            cap = tc * min(cfg.top_k, e_loc)  # worst case: every token sends all it can to one device
        cap = min(cap, tc * min(cfg.top_k, e_loc))
    outputs = []
    for c in range(chunks):  # Comet: chunk c's all_to_all is independent of chunk c-1's expert GEMM
        xc = lax.dynamic_slice_in_dim(x, c * tc, tc)
        experts = lax.dynamic_slice_in_dim(r.experts, c * tc, tc)
        token = jnp.arange(tc * cfg.top_k) // cfg.top_k
        flat_e = experts.reshape(-1)
        if ep == 1:
            out = expert_rows(xc[token], flat_e, params["w_gate"], params["w_up"], params["w_down"], plan,
                              tensor_axis, cfg.bidirectional)
        else:
            dev = experts // e_loc
            pos = priority_positions(experts, ep, lambda ex: ex // e_loc).reshape(-1)
            dev = dev.reshape(-1)
            keep = pos < cap
            slot = jnp.where(keep, dev * cap + pos, ep * cap)
            m = tc * cfg.top_k
            row_of_slot = jnp.full((ep * cap,), m, jnp.int32).at[slot].set(jnp.arange(m, dtype=jnp.int32),
                                                                           mode="drop")
            send_x = jnp.concatenate([xc[token], jnp.zeros((1, d), x.dtype)])[row_of_slot]
            send_e = jnp.concatenate([flat_e % e_loc, jnp.full((1,), -1, jnp.int32)])[row_of_slot]
            recv_x = lax.all_to_all(send_x, "expert", 0, 0, tiled=True)
            recv_e = lax.all_to_all(send_e, "expert", 0, 0, tiled=True)
            done = expert_rows(recv_x, recv_e, params["w_gate"], params["w_up"], params["w_down"], plan,
                               tensor_axis, cfg.bidirectional)
            back = lax.all_to_all(done, "expert", 0, 0, tiled=True)
            back = jnp.concatenate([back, jnp.zeros((1, d), back.dtype)])
            out = back[slot]
        outputs.append(_combine(lax.dynamic_slice_in_dim(r.weights, c * tc, tc), out, x.dtype))
    y = jnp.concatenate(outputs) if chunks > 1 else outputs[0]
    counts, probs = load_balance_terms(r, cfg.num_experts)
    z = router_z_loss(r.logits)
    counts, probs, z = (lax.psum(v, token_axes) for v in (counts, probs, z))
    return y, _aux(cfg, counts, probs, z, total_tokens)


def moe_ffn(params: dict, x: jax.Array, cfg: MoEConfig, mesh: Mesh | None = None) -> tuple[jax.Array, dict]:
    """The MoE FFN on tokens ``x`` [T, d] (or [..., d]); returns ``(y, aux)`` with y shaped like x.

    ``aux``: ``load_balance_loss``, ``router_z_loss``, ``aux_loss`` (their weighted sum with the config's
    weights) and ``expert_fraction`` [E]. Without a mesh (or a mesh whose ``expert`` and ``tensor`` axes are
    both 1 and no token axis > 1) the single-device path runs; ``cfg.capacity_factor > 0`` without a mesh
    runs the GShard one-hot baseline.
    """
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    validate(cfg, params, x2.shape, mesh)
    ep, tp = _axis(mesh, "expert"), _axis(mesh, "tensor")
    token_axes = mesh_token_axes(mesh)
    if mesh is None or (ep == 1 and tp == 1 and not token_axes):
        fn = moe_capacity_onehot if cfg.capacity_factor else moe_dropless_local
        y, aux = fn(params, x2, cfg)
        return y.reshape(shape), aux
    t_loc = x2.shape[0] // math.prod(_axis(mesh, a) for a in token_axes)
    h = params["w_gate"].shape[-1]
    chunks = cfg.num_chunks
    if not chunks:
        chunks, info = choose_num_chunks(cfg, t_loc, shape[-1], h, ep, tp, x.dtype.itemsize)
        logging.info("MoE Comet chunks: C=%d for %d tokens/device, ep=%d tp=%d (modelled s per C: %s)",
                     chunks, t_loc, ep, tp, {c: f"{s:.3g}" for c, s in info["modelled_s"].items()})
    # every device receives, on average, its own chunk's tokens x k assignments (for its E/ep experts)
    plan = plan_grouped_gemm(cfg, (t_loc // chunks) * cfg.top_k, cfg.num_experts // ep)
    param_specs, tok = shard_specs(mesh)
    aux_specs = {"load_balance_loss": P(), "router_z_loss": P(), "aux_loss": P(), "expert_fraction": P()}
    body = functools.partial(_sharded_body, cfg=cfg, ep=ep, tp=tp, chunks=chunks, plan=plan,
                             token_axes=token_axes, total_tokens=x2.shape[0])
    y, aux = jax.shard_map(body, mesh=mesh, in_specs=(param_specs, tok), out_specs=(tok, aux_specs))(
        {k: params[k] for k in param_specs}, x2)
    return y.reshape(shape), aux


# ------------------------------------------------------------------------------- model integration
def moe_ffn_factory(cfg: MoEConfig, mesh: Mesh | None = None, hidden: int | None = None):
    """An ``ffn_factory`` for models.transformer.DecoderLM: every block's FFN becomes a
    models.moe.MoEFFN running :func:`moe_ffn` (sharded over ``mesh`` when given; the initialising call
    runs unsharded since only shapes matter). ``hidden``: expert width (default: the config's mlp_dim)."""
    from models.moe import MoEFFN  # parallel -> models is the allowed import direction

    def layer_fn(params, x, initializing):
        return moe_ffn(params, x, cfg, None if initializing else mesh)

    def factory(model_config, name):
        return MoEFFN(model_config.d_model, cfg.num_experts, hidden or model_config.mlp_dim, layer_fn,
                      num_layers=model_config.num_layers, name=name)
    return factory


def sown_aux_loss(intermediates) -> jax.Array:
    """Sum of every ``aux_loss`` sown into an ``intermediates`` collection (0.0 when there is none)."""
    total = jnp.zeros((), jnp.float32)
    flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]
    for path, leaf in flat:
        if any(getattr(k, "key", None) == "aux_loss" for k in path):
            total = total + jnp.sum(leaf)
    return total
