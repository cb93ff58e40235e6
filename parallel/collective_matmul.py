"""Collective matmuls: all-gather -> GEMM and GEMM -> reduce-scatter as rings of ``ppermute`` steps.

Wang et al., "Overlap Communication with Dependent Computation via Decomposition in Large Deep Learning
Models" (ASPLOS'23), sec. 3: instead of ``all_gather(x) @ w`` (the GEMM waits for the whole gather), the
shard of ``x`` held by each device travels round the ring one hop per step and every device multiplies
the shard it holds *now* while the next hop is in flight; likewise ``reduce_scatter(a @ w)`` becomes a
ring in which the partial sum for one destination travels while the GEMM for the next destination runs.
Both rings are bidirectional (sec. 3.3): half of the traffic goes each way round, so each link carries
half as much per step and the ring needs about n/2 steps instead of n - 1.

In every step the ``ppermute`` that is issued moves data that already existed *before* that step's GEMM
(a received shard, or an accumulator finished in the previous step), so the transfer never depends on
the GEMM it hides behind; XLA's latency-hiding scheduler on GPU/TPU can then run them concurrently
(see :mod:`parallel.xla_flags`). XLA:CPU keeps the program order but does not overlap in time.

All functions run *inside* ``jax.shard_map`` over the ring axis ``axis_name``. The GEMM is a callback so
that the same rings serve plain matrices and the grouped expert GEMMs of :mod:`parallel.moe`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


def _shift(tree, axis_name: str, n: int, offset: int):
    """Sends every leaf from device i to device (i + offset) mod n along ``axis_name``."""
    perm = [(i, (i + offset) % n) for i in range(n)]
    return jax.tree.map(lambda a: lax.ppermute(a, axis_name, perm), tree)


def _place(stacked_by_step: list, sources: list, n: int):
    """Reorders per-step results into source order: out[j] = result of the step that held shard j."""
    order = jnp.zeros((n,), jnp.int32)
    for step, src in enumerate(sources):
        order = order.at[src].set(step)
    return jax.tree.map(lambda *xs: jnp.take(jnp.stack(xs), order, axis=0), *stacked_by_step)


def all_gather_matmul(x: Any, fn: Callable[[Any, jax.Array], Any], axis_name: str, *,
                      bidirectional: bool = True):
    """Computes ``fn(x_j, j)`` for the shard ``x_j`` of every device j of the ring, without an all-gather.

    Args:
      x: this device's shard (any pytree; every leaf travels round the ring).
      fn: ``fn(shard, source_index) -> result``, typically ``shard @ w_local``.
      axis_name: the ring's mesh axis.
      bidirectional: send half of the hops each way round (ceil((n-1)/2) steps one way,
        floor((n-1)/2) the other) instead of n - 1 steps one way.

    Returns:
      The results stacked in source order along a new leading axis of size n, i.e. the value of
      ``fn`` applied to ``all_gather(x)`` shard by shard.
    """
    n = lax.axis_size(axis_name)
    me = lax.axis_index(axis_name)
    results, sources = [fn(x, me)], [me]
    if n == 1:
        return _place(results, sources, n)
    right_steps = (n - 1 + 1) // 2 if bidirectional else n - 1
    left_steps = (n - 1) - right_steps
    from_left, from_right = x, x  # shards travelling rightwards (from i-s) and leftwards (from i+s)
    for step in range(1, max(right_steps, left_steps) + 1):
        # Both transfers move shards received in the previous step: independent of this step's GEMMs.
        if step <= right_steps:
            from_left = _shift(from_left, axis_name, n, +1)
        if step <= left_steps:
            from_right = _shift(from_right, axis_name, n, -1)
        if step <= right_steps:
            src = (me - step) % n
            results.append(fn(from_left, src))
            sources.append(src)
        if step <= left_steps:
            src = (me + step) % n
            results.append(fn(from_right, src))
            sources.append(src)
    return _place(results, sources, n)


def matmul_reduce_scatter(fn: Callable[[jax.Array, int, int], jax.Array], axis_name: str, out_cols: int, *,
                          bidirectional: bool = True) -> jax.Array:
    """``sum over devices of fn(j)`` delivered to device j, as a ring of partial sums.

    Args:
      fn: ``fn(dest_index, lo, hi) -> partial`` computes this device's contribution to the rows owned by
        device ``dest_index``, output columns ``lo:hi`` (static ints), e.g. ``a[dest] @ w[:, lo:hi]``.
      axis_name: the ring's mesh axis.
      out_cols: the number of output columns; the bidirectional ring sends columns ``[:out_cols//2]``
        rightwards and the rest leftwards, so each direction's GEMMs and transfers are half size.

    Returns:
      This device's block of ``reduce_scatter(sum_i fn_i)``: ``sum_i fn_i(me, 0, out_cols)``.

    Ring (rightwards): device i starts the accumulator for destination i-1, then at step s adds its partial
    for destination i-1-s to the accumulator received from its left neighbour; after n-1 hops the
    accumulator for destination i is complete on device i. The accumulator sent in step s was finished in
    step s-1, so it is independent of the GEMM of step s. Leftwards mirrors it with i+1+s.
    """
    n = lax.axis_size(axis_name)
    me = lax.axis_index(axis_name)
    if n == 1:
        return fn(me, 0, out_cols)
    split = out_cols // 2 if bidirectional and out_cols >= 2 else out_cols
    directions = [(+1, 0, split)] + ([(-1, split, out_cols)] if split < out_cols else [])
    accs = [fn((me - d) % n, lo, hi) for d, lo, hi in directions]
    for step in range(1, n):
        accs = [_shift(acc, axis_name, n, d) for acc, (d, _, _) in zip(accs, directions)]
        accs = [acc + fn((me - d * (step + 1)) % n, lo, hi) for acc, (d, lo, hi) in zip(accs, directions)]
    return jnp.concatenate(accs, axis=-1) if len(accs) > 1 else accs[0]


def ag_matmul(x: jax.Array, w: jax.Array, axis_name: str, *, bidirectional: bool = True) -> jax.Array:
    """``all_gather(x, tiled) @ w`` for rows ``x`` [m, k] sharded along the ring and a local ``w`` [k, n]."""
    out = all_gather_matmul(x, lambda shard, _: shard @ w, axis_name, bidirectional=bidirectional)
    return out.reshape(-1, out.shape[-1])


def matmul_rs(a: jax.Array, w: jax.Array, axis_name: str, *, bidirectional: bool = True) -> jax.Array:
    """``reduce_scatter(a @ w)`` over rows: ``a`` [m, k_local] (k sharded along the ring), ``w`` [k_local, n].

    Returns this device's rows ``[m / n_devices, n]`` of the summed product.
    """
    n = lax.axis_size(axis_name)
    if a.shape[0] % n:
        raise ValueError(f"matmul_rs: rows {a.shape[0]} must be divisible by the {axis_name!r} axis size {n}")
    blocks = a.reshape(n, a.shape[0] // n, a.shape[1])
    fn = lambda j, lo, hi: jnp.take(blocks, j, axis=0) @ w[:, lo:hi]  # noqa: E731
    return matmul_reduce_scatter(fn, axis_name, w.shape[1], bidirectional=bidirectional)
