"""The capacity-factor baseline (Lepikhin et al. 2020, "GShard", sec. 2.2 / Alg. 1): every expert takes at
most C = ceil(cf * T * k / E) assignments, in priority order (all first choices before any second choice),
dispatched and combined with one-hot einsums; later assignments are dropped. The expert-parallel path of
:mod:`parallel.moe.overlap` reuses the priority order for its per-device capacity.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from parallel.moe.config import MoEConfig
from parallel.moe.routing import _aux, load_balance_terms, route, router_z_loss


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
