"""Causal multi-head attention, one call for every kernel a platform offers, and the choice between them.

``causal_attention(q, k, v, implementation=...)`` computes softmax(q kᵀ / √d + causal mask) v for
q, k, v of shape [batch, seq, heads, head_dim] with one of:

- ``xla``: XLA's fused softmax attention (``jax.nn.dot_product_attention(implementation="xla")``;
  logits and softmax in float32 whatever the input dtype), or, when probability dropout is on, the
  same computation written out with the dropout mask applied to the probabilities (GPT-2's attn_pdrop);
- ``cudnn``: cuDNN's fused flash attention (``implementation="cudnn"``; GPU, bfloat16/float16 inputs);
- ``pallas_gpu``: the Pallas flash-attention kernel of ``jax.experimental.pallas.ops.gpu.attention``
  (Triton lowering on GPU; the tests run it on CPU in Pallas' interpret mode);
- ``pallas_tpu``: the Pallas TPU flash-attention kernel of ``jax.experimental.pallas.ops.tpu``
  (TPU only; it cannot run on CPU or GPU, so no test here executes it -- only its selection is tested).

:func:`resolve` turns ``auto`` into the fastest implementation the platform offers for the dtype and the
dropout, and says why when that is not the platform's fused kernel; asking for an implementation the
platform lacks is a ValueError naming what it has. Flash attention: Dao et al. 2022, "FlashAttention".
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_gpu", "pallas_tpu")
# What each platform offers for training (CPU: interpret-mode Pallas is for tests, not training).
PLATFORM_IMPLEMENTATIONS = {"cpu": ("xla",), "gpu": ("xla", "cudnn", "pallas_gpu"), "tpu": ("xla", "pallas_tpu")}
FUSED_DTYPES = ("bfloat16", "float16")  # cuDNN's flash attention takes half precision only


def platform_of(backend: str | None = None) -> str:
    """``cpu``, ``gpu`` or ``tpu`` for a JAX backend name (default: the default backend; cuda/rocm -> gpu)."""
    backend = backend or jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def resolve(requested: str, dtype: str, attention_dropout: float, platform: str | None = None) -> tuple[str, str]:
    """(implementation, reason): ``auto`` made concrete for ``platform``; reason is "" when the platform's
    fused kernel was taken (or the user named one), else why the slower XLA path is used.

    ValueError (naming the setting, the value and what the platform has) for an implementation the platform
    lacks, or one that cannot do what the config asks (cuDNN or Pallas with probability dropout, cuDNN in
    float32)."""
    platform = platform_of(platform)
    offered = PLATFORM_IMPLEMENTATIONS.get(platform, ("xla",))
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention={requested!r}; allowed: {', '.join(IMPLEMENTATIONS)}")
    if requested == "auto":
        fused = {"gpu": "cudnn", "tpu": "pallas_tpu"}.get(platform)
        if fused is None:
            return "xla", ""
        if attention_dropout > 0:
            return "xla", (f"{fused} attention takes no dropout on the attention probabilities "
                           f"(attention_dropout={attention_dropout}); using xla")
        if fused == "cudnn" and dtype not in FUSED_DTYPES:
            return "xla", f"cudnn flash attention needs bfloat16 or float16 (dtype={dtype}); using xla"
        return fused, ""
    if requested not in offered:
        raise ValueError(f"attention={requested!r} is not available on {platform}; it has: auto, {', '.join(offered)}")
    if requested != "xla" and attention_dropout > 0:
        raise ValueError(f"attention={requested!r} takes no dropout on the attention probabilities "
                         f"(attention_dropout={attention_dropout}); use attention=xla or attention_dropout=0")
    if requested == "cudnn" and dtype not in FUSED_DTYPES:
        raise ValueError(f"attention='cudnn' needs dtype bfloat16 or float16, got dtype={dtype!r}")
    return requested, ""


def reference_attention(q, k, v, dropout_rate: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
    """Causal softmax attention written out, logits and softmax in float32; with ``dropout_rate`` > 0 and an
    ``rng`` the probabilities are dropped (and the kept ones scaled by 1/(1-p)) before weighting v."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    t_q, t_k = q.shape[1], k.shape[1]
    causal = jnp.tril(jnp.ones((t_q, t_k), bool), k=t_k - t_q)
    logits = jnp.where(causal, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0 and rng is not None:
        keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v,
                      preferred_element_type=jnp.float32).astype(q.dtype)


def causal_attention(q, k, v, implementation: str = "xla", dropout_rate: float = 0.0,
                     rng: jax.Array | None = None, interpret: bool = False) -> jax.Array:
    """[batch, seq, heads, head_dim] x3 -> [batch, seq, heads, head_dim] with the named kernel (see the
    module docstring); ``rng`` None means no probability dropout; ``interpret`` runs a Pallas kernel in
    Pallas' interpret mode (CPU tests)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if dropout_rate > 0 and rng is not None:
        if implementation != "xla":
            raise ValueError(f"attention={implementation!r} takes no dropout on the attention probabilities")
        return reference_attention(q, k, v, dropout_rate, rng)
    if implementation in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale, implementation=implementation)
    if implementation == "pallas_gpu":
        from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

        return pallas_gpu.mha(q, k, v, segment_ids=None, sm_scale=scale, causal=True, interpret=interpret)
    if implementation == "pallas_tpu":
        from jax.experimental.pallas.ops.tpu import flash_attention as pallas_tpu

        heads_first = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731  the TPU kernel takes [batch, heads, seq, d]
        out = pallas_tpu.flash_attention(heads_first(q), heads_first(k), heads_first(v), causal=True, sm_scale=scale)
        return heads_first(out)
    raise ValueError(f"attention={implementation!r}; allowed here: xla, cudnn, pallas_gpu, pallas_tpu")
