"""Two-level transformer policy/value network for job-shop dispatching (Flax linen).

After Tassel, Gebser & Schekotihin (ICAPS'23), Sec. 4.2: the observation is, for each job, a window of
its next operations. Level 1 (operation level) embeds each job's window with self-attention among the
window's operations (padding masked) and pools it into one job embedding; level 2 (job level) is
self-attention among jobs, where a learned per-head bias is added to the attention logits of jobs whose
next operations compete for the same machine (the job-machine conflict mask). Heads: one logit per
job, one for the No-Op (from the pooled jobs), and a state value. Illegal actions get -inf logits.

The network is permutation-equivariant over jobs and independent of their number, so one set of
parameters serves every instance size with the same window length.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from models.attention import NEG, Block



@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """The policy/value network's shape.

    window: Operations per job in the observation.
    d_model: Transformer width.
    num_heads: Attention heads.
    op_layers: Operation-level transformer blocks.
    job_layers: Job-level transformer blocks.
    mlp_dim: Feed-forward width.
    noop_bias_init: Initial bias of the No-Op logit (negative: start near the non-delay policies; waiting
      must be learned).
    """
    window: int = 4
    d_model: int = 32
    num_heads: int = 4
    op_layers: int = 1
    job_layers: int = 2
    mlp_dim: int = 64
    noop_bias_init: float = -3.0

    def __post_init__(self):
        for name in ("window", "d_model", "num_heads", "op_layers", "job_layers", "mlp_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")


class JobShopPolicy(nn.Module):
    """``__call__(obs) -> (logits [..., J + 1], value [...])`` on one or a batch of observations."""
    cfg: PolicyConfig

    @nn.compact
    def __call__(self, obs):
        c = self.cfg
        ops, valid, jobs, conflict, legal = obs["ops"], obs["ops_valid"], obs["jobs"], obs["conflict"], obs["legal"]
        # level 1: operations within each job's window  [..., J, W, D]
        pos = self.param("op_position", nn.initializers.normal(0.02), (c.window, c.d_model))
        x = nn.Dense(c.d_model)(ops) + pos
        key_mask = jnp.where(valid, 0.0, NEG)[..., None, None, :]  # [..., J, 1, 1, W]
        for _ in range(c.op_layers):
            x = Block(c.d_model, c.num_heads, c.mlp_dim)(x, bias=key_mask)
        w = valid.astype(x.dtype)[..., None]
        pooled = jnp.concatenate([x[..., 0, :], (x * w).sum(-2) / jnp.maximum(w.sum(-2), 1.0)], -1)
        y = nn.Dense(c.d_model)(jnp.concatenate([pooled, jobs], -1))  # [..., J, D]
        # level 2: jobs, with a learned per-head bias for machine conflicts
        conflict_w = self.param("conflict_bias", nn.initializers.zeros, (c.num_heads,))
        bias = conflict.astype(y.dtype)[..., None, :, :] * conflict_w[:, None, None]
        for _ in range(c.job_layers):
            y = Block(c.d_model, c.num_heads, c.mlp_dim)(y, bias=bias)
        y = nn.LayerNorm()(y)
        job_logits = nn.Dense(1)(y)[..., 0]
        g = y.mean(-2)
        noop_logit = nn.Dense(1, bias_init=nn.initializers.constant(c.noop_bias_init))(nn.gelu(nn.Dense(c.d_model)(g)))
        value = nn.Dense(1)(nn.gelu(nn.Dense(c.d_model)(g)))[..., 0]
        logits = jnp.concatenate([job_logits, noop_logit], -1)
        return jnp.where(legal, logits, NEG), value
