"""The pre-norm transformer block shared by the policy/value networks (job shop, mallocMuZero).

LayerNorm → multi-head self-attention (Vaswani et al. 2017) → residual, LayerNorm → GELU MLP → residual.
The attention logits take an additive ``bias`` [..., heads, q, k] (e.g. a learned per-head bias for
machine conflicts, or 0/NEG for padded keys) and/or a boolean ``key_mask`` [..., k] (False: the key is
padding; its logit is replaced by NEG).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG = -1e9  # the logit of an impossible choice: exp underflows to exactly 0 in float32


class Block(nn.Module):
    """``x`` [..., tokens, width] -> same shape."""
    width: int
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x, bias=None, key_mask=None):
        hd = self.width // self.num_heads
        h = nn.LayerNorm()(x)
        qkv = nn.DenseGeneral((3, self.num_heads, hd))(h)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(hd)
        if bias is not None:
            logits = logits + bias
        if key_mask is not None:
            logits = jnp.where(key_mask[..., None, None, :], logits, NEG)
        out = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), v)
        x = x + nn.DenseGeneral(self.width, axis=(-2, -1))(out)
        h = nn.LayerNorm()(x)
        return x + nn.Dense(self.width)(nn.gelu(nn.Dense(self.mlp_dim)(h)))
