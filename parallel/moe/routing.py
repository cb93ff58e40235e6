"""Top-k routing and its auxiliary losses: which k experts each token goes to, with what weights, the
weighted combine of their outputs, and the terms that keep the router balanced.

  * Shazeer et al. 2017, "Outrageously Large Neural Networks", eq. 3-5 (top-k gating, without the noise)
    and eq. 1: ``y_t = sum_{j<k} g_{t,j} E_{e_{t,j}}(x_t)`` (:func:`_combine`).
  * Fedus et al. 2021, "Switch Transformers", eq. 4 -- load-balancing loss ``E * sum_e f_e * P_e``.
  * Zoph et al. 2022, "ST-MoE", eq. 5 -- router z-loss ``mean_t logsumexp(logits_t)^2``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from parallel.moe.config import MoEConfig


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


def _combine(weights: jax.Array, per_assignment: jax.Array, dtype) -> jax.Array:
    t, k = weights.shape
    y = jnp.einsum("tk,tkd->td", weights.astype(jnp.float32),
                   per_assignment.reshape(t, k, -1).astype(jnp.float32))
    return y.astype(dtype)
