"""Decoder-only transformer language model (Flax linen).

A pre-norm decoder in the LLaMA style: RMSNorm (Zhang & Sennrich 2019), rotary position embeddings
(Su et al. 2021, RoFormer eq. 34), SwiGLU feed-forward (Shazeer 2020), causal multi-head attention
(:mod:`models.causal_attention`: XLA, cuDNN flash attention or a Pallas kernel) and tied or untied
input/output embeddings; GPT-2's dropout (Radford et al. 2019: on the embeddings, on each residual branch
and on the attention probabilities), mixed precision (``dtype``: activations and matmuls in bfloat16,
parameters, normalisation statistics, softmax and logits in float32) and per-block rematerialisation.

Initialisation (``init="gpt2"``, the default): the tied embedding table is N(0, 1/(16 d)) and the logits
are the final normalised state times its transpose, so at initialisation every logit is about
N(0, 1/16) whatever the width d and the loss starts within about 1/32 nat of ln(vocab); the residual
stream is dominated by the blocks' outputs, not by the current token's embedding (which would make an
untrained model predict the current token: the loss then starts near sqrt(d), 9.4 nats at width 128).
Projections are fan-in scaled, those that write into the residual stream (attention out, FFN down) by
1/num_layers in variance -- GPT-2's 1/sqrt(2 num_layers) std rule for pre-norm depth. ``init="v1"`` is
the scheme before (unit-variance embeddings, logits divided by sqrt(d)), kept because the AlgoPerf ``lm``
workload's targets and the mallocGame's extracted programs were made with it.

The feed-forward block is a slot: ``DecoderLM(config, ffn_factory=...)`` takes any callable that
builds a module mapping ``[batch, seq, d_model] -> [batch, seq, d_model]`` (for instance a Mixture-of-
Experts layer). A factory's module may ``self.sow("intermediates", "aux_loss", x)`` auxiliary losses.

Every parameter carries logical axis names (``vocab, embed, heads, kv, mlp, layers``) through
``nn.with_logical_partitioning``, so that a caller maps them to mesh axes with rules
(see :func:`parallel.sharding.logical_rules`) without this file knowing about meshes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import causal_attention

DTYPES = ("auto", "float32", "bfloat16")
REMAT = ("none", "block", "dots")
INITS = ("gpt2", "v1")


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
    dtype: Compute dtype of activations and matmuls: float32, bfloat16, or auto (bfloat16 on GPU and TPU,
      float32 on CPU); parameters, optimiser state, normalisation statistics, softmax and loss stay float32.
    attention: Attention kernel: auto (cuDNN flash attention on GPU in bfloat16, the Pallas flash kernel on
      TPU, XLA elsewhere), xla, cudnn, pallas_gpu or pallas_tpu (models/causal_attention.py).
    dropout: GPT-2 dropout rate on the embeddings and on each residual branch (attention out, FFN out)
      while training; off at evaluation.
    attention_dropout: Dropout rate on the attention probabilities while training (-1: the same as
      dropout); > 0 needs the xla attention (the fused kernels take no random key).
    remat: Rematerialisation of each block in the backward pass: none, block (keep only the block's input)
      or dots (keep the matmul outputs, recompute the rest).
    init: Initialisation scheme: gpt2 (small tied embeddings, depth-scaled residual projections; the
      loss starts at ln(vocab)) or v1 (the earlier unit-variance embeddings; see the module docstring).
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
    dtype: str = "auto"
    attention: str = "auto"
    dropout: float = 0.0
    attention_dropout: float = -1.0
    remat: str = "none"
    init: str = "gpt2"

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
        if self.dtype not in DTYPES:
            raise ValueError(f"TransformerConfig.dtype={self.dtype!r}; allowed: {', '.join(DTYPES)} (float16 "
                             "would need loss scaling, which this trainer does not do)")
        if self.attention not in causal_attention.IMPLEMENTATIONS:
            raise ValueError(f"TransformerConfig.attention={self.attention!r}; allowed: "
                             f"{', '.join(causal_attention.IMPLEMENTATIONS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"TransformerConfig.dropout={self.dropout!r} must be in [0, 1)")
        if not (self.attention_dropout == -1 or 0 <= self.attention_dropout < 1):
            raise ValueError(f"TransformerConfig.attention_dropout={self.attention_dropout!r} must be in [0, 1), "
                             "or -1 for the same as dropout")
        if self.remat not in REMAT:
            raise ValueError(f"TransformerConfig.remat={self.remat!r}; allowed: {', '.join(REMAT)}")
        if self.init not in INITS:
            raise ValueError(f"TransformerConfig.init={self.init!r}; allowed: {', '.join(INITS)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(resolved_dtype(self.dtype))

    @property
    def attention_dropout_rate(self) -> float:
        return self.dropout if self.attention_dropout == -1 else self.attention_dropout

    @property
    def attention_implementation(self) -> str:
        return causal_attention.resolve(self.attention, resolved_dtype(self.dtype), self.attention_dropout_rate)[0]


def resolved_dtype(dtype: str, platform: str | None = None) -> str:
    """``auto`` -> bfloat16 on GPU and TPU, float32 on CPU (where bfloat16 matmuls are emulated, slower)."""
    if dtype != "auto":
        return dtype
    return "float32" if causal_attention.platform_of(platform) == "cpu" else "bfloat16"


def for_platform(config: TransformerConfig, platform: str | None = None) -> tuple[TransformerConfig, str]:
    """(config with ``dtype`` and ``attention`` made concrete for ``platform``, the reason the attention is
    not the platform's fused kernel or ""). ValueError for a choice the platform lacks."""
    dtype = resolved_dtype(config.dtype, platform)
    attention, reason = causal_attention.resolve(config.attention, dtype, config.attention_dropout_rate, platform)
    return dataclasses.replace(config, dtype=dtype, attention=attention), reason


def _dense_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x / rms(x) * g (Zhang & Sennrich 2019, eq. 4), computed in float32 and
    returned in ``dtype`` (default: the input's)."""
    eps: float = 1e-6
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale).astype(self.dtype or x.dtype)


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
    def __call__(self, x, positions, deterministic: bool = True):
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
        rate = cfg.attention_dropout_rate
        rng = None if deterministic or rate == 0 else self.make_rng("dropout")
        out = causal_attention.causal_attention(q, k, v, cfg.attention_implementation, rate, rng)
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
    def __call__(self, x, positions, deterministic: bool = True):
        cfg = self.config
        # The residual stream x stays float32; each branch computes in the compute dtype.
        drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
        norm = lambda name: RMSNorm(cfg.norm_eps, dtype=cfg.compute_dtype, name=name)  # noqa: E731
        x = x + drop(CausalSelfAttention(cfg, name="attention")(norm("attn_norm")(x), positions, deterministic))
        return x + drop(self.ffn_factory(cfg, "ffn")(norm("ffn_norm")(x)))


@functools.cache
def block_class(remat: str) -> type[nn.Module]:
    """DecoderBlock, or it rematerialised in the backward pass (``block``: only its input is kept; ``dots``:
    the matmul outputs are kept, the elementwise work is recomputed)."""
    if remat == "none":
        return DecoderBlock
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat == "dots" else None
    return nn.remat(DecoderBlock, policy=policy, static_argnums=(3,))  # (self, x, positions, deterministic)


class DecoderLM(nn.Module):
    """Token ids [batch, seq] -> next-token logits [batch, seq, vocab] (float32)."""
    config: TransformerConfig
    ffn_factory: FFNFactory = swiglu_factory

    @nn.compact
    def __call__(self, tokens, positions=None, deterministic: bool = True):
        """``deterministic=False`` turns dropout on; it then needs ``rngs={"dropout": key}``."""
        cfg = self.config
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
        if tokens.shape[1] > cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={cfg.max_seq_len}")
        if positions is None:
            positions = jnp.arange(tokens.shape[1])[None, :]
        v1 = cfg.init == "v1"
        embed_std = 1.0 if v1 else 0.25 / cfg.d_model ** 0.5
        embed = nn.Embed(
            cfg.vocab_size, cfg.d_model, name="embed",
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(embed_std), ("vocab", "embed")))
        x = nn.Dropout(cfg.dropout, deterministic=deterministic)(embed(tokens).astype(jnp.float32))
        block = block_class(cfg.remat)
        for i in range(cfg.num_layers):
            x = block(cfg, self.ffn_factory, name=f"block_{i}")(x, positions, deterministic)
        x = RMSNorm(cfg.norm_eps, name="final_norm")(x).astype(jnp.float32)
        if cfg.tie_embeddings:
            logits = embed.attend(x) / jnp.sqrt(cfg.d_model) if v1 else embed.attend(x)
        else:
            logits = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=jnp.float32, name="head",
                kernel_init=nn.with_logical_partitioning(_dense_init(1.0 if v1 else 1.0 / 16), ("embed", "vocab")))(x)
        return logits.astype(jnp.float32)
