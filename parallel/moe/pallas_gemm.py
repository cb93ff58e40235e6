"""Grouped expert GEMMs as Pallas kernels that read their rows BY INDEX (issue 17: no padded copy of the
activations): ``out[s] = x[index[s]] @ w[block_expert[s // bm]]`` over the blocked expert-sorted layout of
:func:`parallel.moe.grouped_gemm.make_groups`, and its hand-written VJP.

MegaBlocks (Gale et al. 2022, Sec. 5) avoids padding by block-sparse kernels over the expert-sorted rows;
Comet (Zhang et al. 2025, Sec. 3) goes further and reads each GEMM tile's rows straight from the unsorted
tokens. Here the gate/up GEMM's kernel gathers token rows inside the K loop (``x_ref[rows, k-slice]``), so
neither ``x[token]`` nor the padded ``[n_pad, d]`` copy is ever written; the down GEMM reads the hidden
rows in place (identity index). The weight gradient is a transposed grouped GEMM (``tgmm``, megablox's
name) that gathers the same rows again: ``dw[e] = sum_{blocks b of e} x[index_b]^T g_b``.

Kernels, one program per output tile, f32 accumulation whatever the input dtype:
  * :func:`_gmm_kernel` grid (row blocks, N tiles): K loop of ``[bm, bk] @ [bk, bn]``; blocks past the
    occupied ones write zeros;
  * the input gradient is the same kernel on ``w`` transposed, then one scatter-add of the slots' rows
    into token order (XLA);
  * :func:`_tgmm_kernel` grid (experts, K tiles, N tiles): a loop over that expert's blocks (contiguous
    in the blocked layout);
  * :func:`combine` (grid: token tiles, column tiles): the gate-weighted sum of each token's k expert
    outputs, read from the padded layout by index and written in token order; its VJP is two more
    gathers by index (each slot holds one row, so d out_slots needs no scatter) and a row-dot kernel for
    the gate weights.

Tile sizes: bm = the layout's rows per block (:data:`MAX_BLOCK_ROWS` at most), bk x bn = :data:`GPU_TILES`
= 64 x 256, the fastest of four tilings tried on an H200 (64x64x64, 128x64x128, 128x32x128, 64x64x256:
results/moe/bench_moe_h200.json), where the grouped GEMM alone ran at 1.86-2.10x the dense GEMMs of equal
FLOPs (XLA's bucketed batched GEMM: 1.09-1.13x). bm = 256 with bk = 64, bn = 128 asked Triton for 258 KB of
shared memory (the H200 has 227 KB) and did not compile. On CPU the kernels run in Pallas interpret mode
(``interpret=True``, chosen automatically off GPU): correct, slow, used by the tests only. ``auto`` never
picks them.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from parallel.moe.vma import aligned, shape_like, sum_to_vma_of


class Tiles(NamedTuple):
    bk: int   # reduction (K) tile
    bn: int   # output column (N) tile


GPU_TILES = Tiles(bk=64, bn=256)
MAX_BLOCK_ROWS = 64   # bm: larger row blocks overflow a Hopper SM's shared memory at these K/N tiles


def _tile(dim: int, want: int) -> int:
    """The largest power of two <= ``want`` dividing ``dim`` (at least 1)."""
    t = want
    while t > 1 and dim % t:
        t //= 2
    return t


def interpret() -> bool:
    """Pallas interpret mode: everywhere but on a GPU (the kernels are written for its Triton lowering)."""
    return jax.default_backend() != "gpu"


def _rows_by_index(ref, index, cols, rows_in: int):
    """``ref[index, cols]`` inside a kernel, with rows for ``index >= rows_in`` (an empty slot) read as 0."""
    rows = ref[jnp.minimum(index, rows_in - 1), cols]
    return jnp.where((index < rows_in)[:, None], rows, 0).astype(ref.dtype)


def _call(kernel, grid, shape, dtype, *args):
    """``pallas_call`` with the inputs and the output typed alike inside shard_map (:mod:`parallel.moe.vma`)."""
    args = aligned(*args)
    return pl.pallas_call(kernel, out_shape=shape_like(shape, dtype, args[-1]), grid=grid,
                          interpret=interpret())(*args)


def _gmm_kernel(index_ref, block_expert_ref, num_blocks_ref, x_ref, w_ref, o_ref, *, bm, bk, bn, rows_in):
    b, n = pl.program_id(0), pl.program_id(1)
    cols = pl.ds(n * bn, bn)

    @pl.when(b < num_blocks_ref[0])
    def _():
        index = index_ref[pl.ds(b * bm, bm)]
        e = block_expert_ref[b]

        def k_step(k, acc):
            xk = _rows_by_index(x_ref, index, pl.ds(k * bk, bk), rows_in)
            return acc + jnp.dot(xk, w_ref[e, pl.ds(k * bk, bk), cols], preferred_element_type=jnp.float32)
        acc = lax.fori_loop(0, x_ref.shape[1] // bk, k_step, jnp.zeros((bm, bn), jnp.float32))
        o_ref[pl.ds(b * bm, bm), cols] = acc.astype(o_ref.dtype)

    @pl.when(b >= num_blocks_ref[0])
    def _():
        o_ref[pl.ds(b * bm, bm), cols] = jnp.zeros((bm, bn), o_ref.dtype)


def gmm(x, index, w, block_expert, num_blocks, bm: int, tiles: Tiles = GPU_TILES):
    """``out[s] = x[index[s]] @ w[block_expert[s // bm]]`` for s in the occupied blocks, 0 elsewhere and for
    ``index[s] >= len(x)`` (an empty slot). x [R, K], index [S] (S a multiple of bm), w [E, K, N]."""
    s, (_, k_dim, n_dim) = index.shape[0], w.shape
    bk, bn = _tile(k_dim, tiles.bk), _tile(n_dim, tiles.bn)
    kernel = functools.partial(_gmm_kernel, bm=bm, bk=bk, bn=bn, rows_in=x.shape[0])
    return _call(kernel, (s // bm, n_dim // bn), (s, n_dim), x.dtype, index.astype(jnp.int32),
                 block_expert.astype(jnp.int32), jnp.reshape(num_blocks, (1,)).astype(jnp.int32), x, w)


def _tgmm_kernel(first_ref, count_ref, index_ref, x_ref, g_ref, o_ref, *, bm, bk, bn, rows_in):
    e, kt, n = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    ks, cols = pl.ds(kt * bk, bk), pl.ds(n * bn, bn)
    first = first_ref[e]

    def block_step(i, acc):
        b = first + i
        xb = _rows_by_index(x_ref, index_ref[pl.ds(b * bm, bm)], ks, rows_in)
        gb = g_ref[pl.ds(b * bm, bm), cols]
        return acc + jnp.dot(xb.T, gb, preferred_element_type=jnp.float32)
    acc = lax.fori_loop(0, count_ref[e], block_step, jnp.zeros((bk, bn), jnp.float32))
    o_ref[e, ks, cols] = acc.astype(o_ref.dtype)


def tgmm(x, index, g, block_expert, num_blocks, num_experts: int, bm: int, tiles: Tiles = GPU_TILES):
    """``dw[e] = sum over the occupied blocks b of expert e of x[index_b]^T @ g_b`` -> [E, K, N]."""
    k_dim, n_dim = x.shape[1], g.shape[1]
    bk, bn = _tile(k_dim, tiles.bk), _tile(n_dim, tiles.bn)
    occupied = jnp.arange(block_expert.shape[0]) < num_blocks
    count = jnp.zeros((num_experts,), jnp.int32).at[block_expert].add(occupied.astype(jnp.int32))
    first = (jnp.cumsum(count) - count).astype(jnp.int32)   # an expert's blocks are contiguous
    kernel = functools.partial(_tgmm_kernel, bm=bm, bk=bk, bn=bn, rows_in=x.shape[0])
    return _call(kernel, (num_experts, k_dim // bk, n_dim // bn), (num_experts, k_dim, n_dim), g.dtype,
                 first, count, index.astype(jnp.int32), x, g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def gather_matmul(x, index, w, block_expert, num_blocks, bm: int, tiles: Tiles = GPU_TILES):
    """Differentiable :func:`gmm` (in x and w). The input gradient scatters each slot's ``g_s @ w^T`` back
    to row ``index[s]`` (rows read by several slots sum their gradients). ``tiles``: the K and N tiles of
    every kernel of the call (forward and backward)."""
    return gmm(x, index, w, block_expert, num_blocks, bm, tiles)


def _gather_matmul_fwd(x, index, w, block_expert, num_blocks, bm, tiles):
    return gmm(x, index, w, block_expert, num_blocks, bm, tiles), (x, index, w, block_expert, num_blocks)


def _gather_matmul_bwd(bm, tiles, res, g):
    x, index, w, block_expert, num_blocks = res
    slots = jnp.arange(index.shape[0], dtype=jnp.int32)
    dx_slots = gmm(g, slots, jnp.swapaxes(w, 1, 2), block_expert, num_blocks, bm, tiles)
    dx = jnp.zeros(x.shape, jnp.float32).at[index].add(dx_slots.astype(jnp.float32), mode="drop").astype(x.dtype)
    dw = tgmm(x, index, g, block_expert, num_blocks, w.shape[0], bm, tiles).astype(w.dtype)
    return sum_to_vma_of(dx, x), None, sum_to_vma_of(dw, w), None, None


gather_matmul.defvjp(_gather_matmul_fwd, _gather_matmul_bwd)


# --------------------------------------------------------------------------- combine in token order

COMBINE_TOKENS, COMBINE_COLUMNS = 32, 128   # per program of the combine kernels (and rows per program of
                                            # its slot-gradient kernel)


def _combine_kernel(slot_ref, weight_ref, x_ref, o_ref, *, bt, bd, top_k, rows_in):
    t, n = pl.program_id(0), pl.program_id(1)
    tokens, cols = pl.ds(t * bt, bt), pl.ds(n * bd, bd)
    acc = jnp.zeros((bt, bd), jnp.float32)
    for j in range(top_k):
        rows = _rows_by_index(x_ref, slot_ref[j, tokens], cols, rows_in)
        acc += weight_ref[j, tokens].astype(jnp.float32)[:, None] * rows.astype(jnp.float32)
    o_ref[tokens, cols] = acc.astype(o_ref.dtype)


def _spread_kernel(row_ref, weight_ref, dy_ref, o_ref, *, bs, bd, top_k, rows_in):
    s, n = pl.program_id(0), pl.program_id(1)
    cols = pl.ds(n * bd, bd)
    row = row_ref[pl.ds(s * bs, bs)]
    valid = row < rows_in
    safe = jnp.minimum(row, rows_in - 1)
    weight = jnp.where(valid, weight_ref[safe], 0).astype(jnp.float32)
    o_ref[pl.ds(s * bs, bs), cols] = (weight[:, None] * dy_ref[safe // top_k, cols].astype(jnp.float32)).astype(
        o_ref.dtype)


def _weight_grad_kernel(slot_ref, x_ref, dy_ref, o_ref, *, bt, bd, top_k, rows_in):
    t = pl.program_id(0)
    tokens = pl.ds(t * bt, bt)
    for j in range(top_k):
        slot = slot_ref[j, tokens]

        def d_step(n, acc, slot=slot):
            cols = pl.ds(n * bd, bd)
            rows = _rows_by_index(x_ref, slot, cols, rows_in).astype(jnp.float32)
            return acc + jnp.sum(rows * dy_ref[tokens, cols].astype(jnp.float32), axis=1)
        o_ref[j, tokens] = lax.fori_loop(0, x_ref.shape[1] // bd, d_step, jnp.zeros((bt,), jnp.float32))


@jax.custom_vjp
def combine(out_slots, slot_of_row, weights, row_of_slot):
    """``y[t] = sum_j weights[t, j] * out_slots[slot_of_row[t * k + j]]`` in float32, cast to out_slots' dtype:
    the gate-weighted combine written in token order by a kernel that reads each token's k expert outputs
    from the padded layout by index (a slot past the end reads zero). ``row_of_slot`` (the inverse map, for
    the VJP) comes with them from :func:`parallel.moe.grouped_gemm.make_groups`."""
    t, k = weights.shape
    d = out_slots.shape[1]
    bt, bd = _tile(t, COMBINE_TOKENS), _tile(d, COMBINE_COLUMNS)
    kernel = functools.partial(_combine_kernel, bt=bt, bd=bd, top_k=k, rows_in=out_slots.shape[0])
    return _call(kernel, (t // bt, d // bd), (t, d), out_slots.dtype,
                 slot_of_row.reshape(t, k).T.astype(jnp.int32), weights.T, out_slots)


def _combine_fwd(out_slots, slot_of_row, weights, row_of_slot):
    return combine(out_slots, slot_of_row, weights, row_of_slot), (out_slots, slot_of_row, weights, row_of_slot)


def _combine_bwd(res, dy):
    """d out_slots[s] = w[r] dy[r // k] for the row r = row_of_slot[s] (one row per slot, so a gather, not a
    scatter); d weights[t, j] = <dy[t], out_slots[slot_of_row[t k + j]]>."""
    out_slots, slot_of_row, weights, row_of_slot = res
    t, k = weights.shape
    n_slots, d = out_slots.shape
    bs, bd = _tile(n_slots, COMBINE_TOKENS), _tile(d, COMBINE_COLUMNS)
    spread = functools.partial(_spread_kernel, bs=bs, bd=bd, top_k=k, rows_in=t * k)
    d_slots = _call(spread, (n_slots // bs, d // bd), (n_slots, d), out_slots.dtype,
                    row_of_slot.astype(jnp.int32), weights.reshape(-1), dy)
    bt = _tile(t, COMBINE_TOKENS)
    grad_w = functools.partial(_weight_grad_kernel, bt=bt, bd=bd, top_k=k, rows_in=n_slots)
    d_weights = _call(grad_w, (t // bt,), (k, t), jnp.float32,
                      slot_of_row.reshape(t, k).T.astype(jnp.int32), out_slots, dy).T
    return (sum_to_vma_of(d_slots, out_slots), None, sum_to_vma_of(d_weights.astype(weights.dtype), weights),
            None)


combine.defvjp(_combine_fwd, _combine_bwd)
