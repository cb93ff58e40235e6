"""Dropless expert computation as grouped GEMMs over expert-sorted rows (Gale et al. 2022, "MegaBlocks":
block-sparse / grouped GEMMs instead of capacity-padded batches, so no token is dropped).

Rows (token, expert) are sorted by expert and laid out by :func:`make_groups`; the expert SwiGLU
``(silu(x W_gate_e) * x W_up_e) W_down_e`` then runs as grouped GEMMs in one of four layouts
(``impl``, :func:`resolve_impl`):
  * ``blocked`` (CPU default): each group padded to a multiple of a block of rows, one ``[block, d] @
    [d, h]`` GEMM per *occupied* block in a while-loop; its VJP is written by hand
    (:func:`blocked_matmul`) so the weight gradient accumulates in place.
  * ``bucketed`` (GPU default): each expert's first c rows (c ~ its mean load x :data:`BUCKET_FACTOR`) in
    one batched ``[E, c, d] @ [E, d, h]`` GEMM, the rest (the tail of an overloaded expert) through the
    blocked loop, so the layer stays dropless.
  * ``ragged`` (``lax.ragged_dot``; TPU default): a native grouped GEMM on TPU, but a dense masked product
    (E x the FLOPs) on XLA:CPU and on XLA:GPU (measured on an H100, jax 0.11.2).
  * ``pallas``: the blocked layout as Pallas kernels (:mod:`parallel.moe.pallas_gemm`) that read the rows
    by index, so on one device the gate/up GEMM gathers token rows itself (no ``x[token]`` or padded copy);
    written for the GPU (Triton lowering), interpret mode elsewhere; on an H200 its grouped GEMM ran at
    about 2x the dense GEMMs where ``bucketed`` ran at 1.1x, so ``auto`` does not pick it.
Chosen by scripts/bench_moe.py. Inside shard_map :func:`expert_rows` runs the same GEMMs as collective
matmuls over the ``tensor`` ring (:mod:`parallel.collective_matmul`).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from parallel import collective_matmul as cm
from parallel.moe import pallas_gemm
from parallel.moe.vma import sum_to_vma_of, varying_like
from parallel.moe.config import MoEConfig


# Bucketed bulk capacity / mean expert load: on GPU a padded batched GEMM is cheap next to the overflow
# loop's per-iteration cost, so the bulk holds nearly every expert's whole load (the H100 run in results/moe/README.md:
# no overflow at 16k tokens, grouped GEMM 1.00-1.07x dense); on CPU (where ``auto`` is blocked) every padded
# slot costs its FLOPs, so a forced bucketed layout keeps the bulk at the mean load.
BUCKET_FACTOR = {"cpu": 1.0, "gpu": 1.25, "tpu": 1.25}


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


def _blocked_forward(x, w, block_expert, num_blocks, block):
    def body(b, out):
        xb = lax.dynamic_slice_in_dim(x, b * block, block)
        wb = lax.dynamic_index_in_dim(w, block_expert[b], keepdims=False)
        return lax.dynamic_update_slice_in_dim(out, (xb @ wb).astype(out.dtype), b * block, 0)
    out = varying_like(jnp.zeros((x.shape[0], w.shape[-1]), x.dtype), x, w, block_expert, num_blocks)
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
    dw = lax.fori_loop(0, num_blocks, body, varying_like(jnp.zeros(w.shape, w.dtype), x, g, w, block_expert))
    return sum_to_vma_of(dx, x), sum_to_vma_of(dw, w), None, None


blocked_matmul.defvjp(_blocked_fwd, _blocked_bwd)


def grouped_matmul(x: jax.Array, w: jax.Array, groups: Groups, impl: str, block: int,
                   capacity: int = 0) -> jax.Array:
    """Rows ``x`` [n_pad, d] in the layout of ``groups`` times their expert's ``w`` [E, d, h]."""
    if impl == "ragged":
        return lax.ragged_dot(x, w, groups.group_sizes)
    if impl == "pallas":
        slots = jnp.arange(x.shape[0], dtype=jnp.int32)
        return pallas_gemm.gather_matmul(x, slots, w, groups.block_expert, groups.num_blocks, block)
    if impl == "bucketed":
        e, bulk = w.shape[0], w.shape[0] * capacity
        dense = jnp.einsum("ecd,edh->ech", x[:bulk].reshape(e, capacity, x.shape[1]), w)
        tail = blocked_matmul(x[bulk:], w, groups.block_expert, groups.num_blocks, block)
        return jnp.concatenate([dense.reshape(bulk, w.shape[-1]), tail])
    return blocked_matmul(x, w, groups.block_expert, groups.num_blocks, block)


def resolve_impl(impl: str) -> str:
    """``auto``: ``blocked`` on CPU, ``bucketed`` on GPU, ``ragged`` on TPU. Measured by
    scripts/bench_moe.py (results/moe/README.md): XLA:CPU and XLA:GPU (H100, jax 0.11.2) lower ``ragged_dot``
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
    if impl == "pallas":  # 16 to 64 rows: a Triton dot's smallest tile; the most that fits Hopper's shared memory
        return GemmPlan("pallas", cfg.block_rows or min(pallas_gemm.MAX_BLOCK_ROWS,
                                                        max(16, auto_block_rows(expected_rows, num_experts))))
    factor = cfg.bucket_factor or BUCKET_FACTOR.get(jax.default_backend(), BUCKET_FACTOR["gpu"])
    capacity = bucket_capacity(expected_rows, num_experts, factor)
    return GemmPlan("bucketed", cfg.block_rows or overflow_block_rows(capacity), capacity)


def expert_ffn_by_index(x: jax.Array, experts: jax.Array, weights: jax.Array, w_gate, w_up, w_down,
                        plan: GemmPlan) -> jax.Array:
    """The whole dropless expert FFN on one device in Pallas kernels (``plan.impl == "pallas"``):
    ``y_t = sum_j weights[t, j] SwiGLU_{experts[t, j]}(x_t)`` for x [T, d], experts / weights [T, k]. The
    gate/up kernel gathers each slot's token row from ``x`` itself, the down kernel reads the hidden rows in
    place, and the combine kernel reads each token's k outputs by index and writes y in token order: no
    ``x[token]``, padded or per-row copy is materialised (MegaBlocks' no-padding goal, Comet's rows read
    straight from the tokens)."""
    t, k = experts.shape
    groups = make_groups(experts.reshape(-1), w_gate.shape[0], plan.block)
    m = t * k
    token = jnp.where(groups.row_of_slot < m, groups.row_of_slot // k, t)      # empty slot: no token
    hidden = _swiglu_hidden(pallas_gemm.gather_matmul(x, token, _gate_up(w_gate, w_up), groups.block_expert,
                                                      groups.num_blocks, plan.block))
    out = grouped_matmul(hidden, w_down, groups, "pallas", plan.block)
    return pallas_gemm.combine(out, groups.slot_of_row, weights, groups.row_of_slot)


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
    w_gu = _gate_up(w_gate, w_up)
    zero = jnp.zeros((1, rows.shape[1]), rows.dtype)
    padded = jnp.concatenate([rows, zero])[groups.row_of_slot]
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
