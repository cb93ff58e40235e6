"""Decoder-only transformer language model (Flax linen).

A pre-norm decoder in the LLaMA style: RMSNorm (Zhang & Sennrich 2019), rotary position embeddings
(Su et al. 2021, RoFormer eq. 34), SwiGLU feed-forward (Shazeer 2020), causal multi-head attention
and tied or untied input/output embeddings.

The feed-forward block is a slot: ``DecoderLM(config, ffn_factory=...)`` takes any callable that
builds a module mapping ``[batch, seq, d_model] -> [batch, seq, d_model]`` (for instance a Mixture-of-
Experts layer). A factory's module may ``self.sow("intermediates", "aux_loss", x)`` auxiliary losses.

Every parameter carries logical axis names (``vocab, embed, heads, kv, mlp, layers``) through
``nn.with_logical_partitioning``, so that a caller maps them to mesh axes with rules
(see :func:`parallel.sharding.logical_rules`) without this file knowing about meshes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The decoder's shape and numerics; validates itself (ValueError naming the field).

    vocab_size: Vocabulary size (256 for bytes).
    num_layers: Transformer blocks.
    num_heads: Attention heads (must divide d_model; the head dimension must be even for RoPE).
    d_model: Model width.
    mlp_dim: SwiGLU hidden width of the dense FFN.
    max_seq_len: Longest context.
    tie_embeddings: Share input and output embeddings.
    rope_base: Rotary-embedding base frequency.
    norm_eps: RMSNorm epsilon.
    dtype: Compute dtype (float32, bfloat16 or float16); parameters stay float32.
    """
    vocab_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    d_model: int = 128
    mlp_dim: int = 512  # hidden width of the SwiGLU FFN
    max_seq_len: int = 64
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    dtype: str = "float32"  # compute dtype; parameters stay float32

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "num_heads", "d_model", "mlp_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name}={value!r} must be a positive integer")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerConfig.d_model={self.d_model} must be divisible by "
                f"num_heads={self.num_heads}")
        if (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"head dimension d_model/num_heads={self.d_model // self.num_heads} must be even "
                "for rotary embeddings")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"TransformerConfig.dtype={self.dtype!r}; allowed: float32, bfloat16, float16")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def _dense_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x / rms(x) * g (Zhang & Sennrich 2019, eq. 4)."""
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale).astype(x.dtype)


def rotary_embedding(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotates channel pairs (i, i + d/2) of ``x`` [..., seq, heads, d] by angle pos * base^(-2i/d)."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., :, None].astype(jnp.float32) * freqs  # [..., seq, half]
    sin = jnp.sin(angles)[..., None, :]
    cos = jnp.cos(angles)[..., None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class CausalSelfAttention(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x, positions):
        cfg = self.config
        dense = lambda name, axes, shape_out, scale=1.0: nn.DenseGeneral(  # noqa: E731
            shape_out, axis=-1, use_bias=False, dtype=cfg.compute_dtype, name=name,
            kernel_init=nn.with_logical_partitioning(_dense_init(scale), axes))
        shape = (cfg.num_heads, cfg.head_dim)
        q = dense("query", ("embed", "heads", "kv"), shape)(x)
        k = dense("key", ("embed", "heads", "kv"), shape)(x)
        v = dense("value", ("embed", "heads", "kv"), shape)(x)
        q = rotary_embedding(q, positions, cfg.rope_base)
        k = rotary_embedding(k, positions, cfg.rope_base)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        out_proj = nn.DenseGeneral(
            cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.compute_dtype, name="out",
            kernel_init=nn.with_logical_partitioning(
                _dense_init(1.0 / cfg.num_layers), ("heads", "kv", "embed")))
        return out_proj(out)


class SwiGLU(nn.Module):
    """FFN(x) = W_down (silu(W_gate x) * W_up x)  (Shazeer 2020, "GLU Variants", eq. 6)."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = lambda name, axes, width, scale=1.0: nn.Dense(  # noqa: E731
            width, use_bias=False, dtype=cfg.compute_dtype, name=name,
            kernel_init=nn.with_logical_partitioning(_dense_init(scale), axes))
        gate = dense("gate", ("embed", "mlp"), cfg.mlp_dim)(x)
        up = dense("up", ("embed", "mlp"), cfg.mlp_dim)(x)
        return dense("down", ("mlp", "embed"), cfg.d_model, 1.0 / cfg.num_layers)(nn.silu(gate) * up)


FFNFactory = Callable[[TransformerConfig, str], nn.Module]


def swiglu_factory(config: TransformerConfig, name: str) -> nn.Module:
    return SwiGLU(config, name=name)


class DecoderBlock(nn.Module):
    config: TransformerConfig
    ffn_factory: FFNFactory = swiglu_factory

    @nn.compact
    def __call__(self, x, positions):
        cfg = self.config
        x = x + CausalSelfAttention(cfg, name="attention")(RMSNorm(cfg.norm_eps, name="attn_norm")(x), positions)
        x = x + self.ffn_factory(cfg, "ffn")(RMSNorm(cfg.norm_eps, name="ffn_norm")(x))
        return x


class DecoderLM(nn.Module):
    """Token ids [batch, seq] -> next-token logits [batch, seq, vocab] (float32)."""
    config: TransformerConfig
    ffn_factory: FFNFactory = swiglu_factory

    @nn.compact
    def __call__(self, tokens, positions=None):
        cfg = self.config
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
        if tokens.shape[1] > cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={cfg.max_seq_len}")
        if positions is None:
            positions = jnp.arange(tokens.shape[1])[None, :]
        embed = nn.Embed(
            cfg.vocab_size, cfg.d_model, name="embed",
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
        x = embed(tokens).astype(cfg.compute_dtype)
        for i in range(cfg.num_layers):
            x = DecoderBlock(cfg, self.ffn_factory, name=f"block_{i}")(x, positions)
        x = RMSNorm(cfg.norm_eps, name="final_norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x.astype(jnp.float32)) / jnp.sqrt(cfg.d_model)
        else:
            logits = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=jnp.float32, name="head",
                kernel_init=nn.with_logical_partitioning(_dense_init(), ("embed", "vocab")))(x)
        return logits.astype(jnp.float32)
