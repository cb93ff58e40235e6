"""The attention kernels against a plain NumPy softmax loop, forward and gradient, and the choice between them.

On CPU the platform offers XLA; the Pallas GPU flash-attention kernel runs here in Pallas' interpret mode
(the same kernel program, executed by the interpreter). cuDNN and the Pallas TPU kernel cannot run on CPU:
only their selection is tested here; tools/device_check_lm.sh runs cuDNN on a GPU.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import causal_attention as ca

# bfloat16 operands: ||out - ref|| / ||ref|| lands between 1e-3 and 1e-2; float32 far under 1e-4.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}
CPU_KERNELS = ["xla", "pallas_gpu"]  # pallas_gpu in interpret mode


def np_causal_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v with a causal mask, one query position at a time, float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            s = np.einsum("hd,shd->hs", q[b, t], k[b, : t + 1]) / np.sqrt(q.shape[-1])
            w = np.exp(s - s.max(-1, keepdims=True))
            out[b, t] = np.einsum("hs,shd->hd", w / w.sum(-1, keepdims=True), v[b, : t + 1])
    return out


def qkv(seed, shape=(2, 64, 2, 16), dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys]


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_kernel_matches_numpy_forward(kernel, dtype):
    q, k, v = qkv(1, dtype=jnp.dtype(dtype))
    out = ca.causal_attention(q, k, v, kernel, interpret=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, np_causal_attention(q, k, v)) < TOLERANCE[dtype]


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_kernel_gradient_matches_reference(kernel):
    q, k, v = qkv(2)
    w = jax.random.normal(jax.random.PRNGKey(9), q.shape)  # a loss that weights every output differently
    loss = lambda impl: lambda *a: jnp.sum(w * ca.causal_attention(*a, impl, interpret=True))  # noqa: E731
    got = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: jnp.sum(w * ca.reference_attention(*a)), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        assert rel_err(g, r) < 1e-5


def test_reference_matches_numpy_and_is_causal():
    q, k, v = qkv(3, shape=(1, 12, 2, 8))
    out = ca.reference_attention(q, k, v)
    assert rel_err(out, np_causal_attention(q, k, v)) < 1e-6
    v_future = v.at[:, 6:].set(100.0)  # changing keys/values after position 5 leaves positions 0..5 alone
    np.testing.assert_array_equal(ca.reference_attention(q, k, v_future)[:, :6], out[:, :6])


def test_probability_dropout_is_inverted_dropout_of_the_softmax():
    q, k, v = qkv(4, shape=(1, 16, 2, 8))
    rate, key = 0.25, jax.random.PRNGKey(5)
    got = ca.causal_attention(q, k, v, "xla", dropout_rate=rate, rng=key)
    # the same mask drawn by hand over [batch, heads, q, k] probabilities
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    logits = np.where(np.tril(np.ones((16, 16), bool)), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    keep = np.asarray(jax.random.bernoulli(key, 1 - rate, probs.shape))
    want = np.einsum("bhqk,bkhd->bqhd", np.where(keep, probs / (1 - rate), 0), v)
    assert rel_err(got, want) < 1e-5
    assert 0.6 < keep.mean() < 0.9
    other = ca.causal_attention(q, k, v, "xla", dropout_rate=rate, rng=jax.random.PRNGKey(6))
    assert rel_err(other, got) > 1e-2  # another key, another mask
    np.testing.assert_array_equal(ca.causal_attention(q, k, v, "xla", dropout_rate=rate, rng=None),
                                  ca.causal_attention(q, k, v, "xla"))  # no key: no dropout (evaluation)
    with pytest.raises(ValueError, match="takes no dropout"):
        ca.causal_attention(q, k, v, "cudnn", dropout_rate=rate, rng=key)


@pytest.mark.parametrize("requested, dtype, dropout, platform, want", [
    ("auto", "float32", 0.0, "cpu", ("xla", "")),
    ("auto", "bfloat16", 0.0, "gpu", ("cudnn", "")),
    ("auto", "bfloat16", 0.0, "cuda", ("cudnn", "")),
    ("auto", "bfloat16", 0.0, "tpu", ("pallas_tpu", "")),
    ("auto", "float32", 0.0, "gpu", ("xla", "cudnn flash attention needs bfloat16")),
    ("auto", "bfloat16", 0.2, "gpu", ("xla", "cudnn attention takes no dropout")),
    ("auto", "bfloat16", 0.2, "tpu", ("xla", "pallas_tpu attention takes no dropout")),
    ("pallas_gpu", "bfloat16", 0.0, "gpu", ("pallas_gpu", "")),
    ("xla", "bfloat16", 0.2, "gpu", ("xla", "")),
])
def test_resolve_picks_the_platforms_kernel_and_says_why_not(requested, dtype, dropout, platform, want):
    impl, reason = ca.resolve(requested, dtype, dropout, platform)
    assert impl == want[0]
    assert reason.startswith(want[1]) and bool(reason) == bool(want[1])


@pytest.mark.parametrize("requested, dtype, dropout, platform, message", [
    ("cudnn", "bfloat16", 0.0, "cpu", "attention='cudnn' is not available on cpu; it has: auto, xla"),
    ("pallas_tpu", "bfloat16", 0.0, "gpu", "not available on gpu; it has: auto, xla, cudnn, pallas_gpu"),
    ("cudnn", "float32", 0.0, "gpu", "needs dtype bfloat16 or float16"),
    ("cudnn", "bfloat16", 0.1, "gpu", "takes no dropout on the attention probabilities"),
    ("flash", "bfloat16", 0.0, "gpu", "attention='flash'; allowed: auto, xla, cudnn"),
])
def test_resolve_refuses_what_the_platform_lacks(requested, dtype, dropout, platform, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ca.resolve(requested, dtype, dropout, platform)
