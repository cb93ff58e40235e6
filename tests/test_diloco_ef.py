"""Error feedback (parallel/diloco.py) and its codecs, int2 / sign1 / top-k (parallel/quantize.py), against NumPy
transcriptions: the codecs' payload bits and decoded values, the error-feedback algorithm (residuals included)
at M = 2, 4 and 8, the identity codec giving plain DiLoCo bit for bit, background syncs equal to inline ones,
and a diverged worker stopping the run.

Tolerances: the codecs' bits are compared exactly (on tensors whose scales are exact) or, where a float32
mean is summed in a different order, values with rtol 1e-6; the algorithm as in tests/test_diloco.py (rtol and
atol 2e-5). A quantiser's decision boundary could amplify a last-bit difference into a different code; the
seeds are fixed, and none of these problems' values lies that close to one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from parallel import diloco
from parallel import quantize as q
from test_diloco import (LR, SHAPES, assert_tree_close, batches, init_params, loss_fn, numpy_streaming_diloco,
                         run_jax)


# ----------------------------------------------------------------------------- NumPy codecs
def as_rows(x):
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)


def block_stat(x2, scale, fn):
    return fn(x2, axis=1, keepdims=True) if scale == "row" else np.full((x2.shape[0], 1), fn(x2), np.float32)


def np_int2(x, scale="tensor"):
    """int2 round trip: s = RMS of the block, magnitude 1.5104 s where |x/s| > 0.9816 else 0.4528 s, the sign
    of x (its sign bit); an all-zero block gives zeros."""
    x2 = as_rows(np.asarray(x, np.float32))
    s = np.sqrt(block_stat(x2 * x2, scale, np.mean)).astype(np.float32)
    y = x2 / np.where(s > 0, s, np.float32(1))
    mag = np.where(np.abs(y) > np.float32((0.4528 + 1.5104) / 2), np.float32(1.5104), np.float32(0.4528))
    return (np.where(np.signbit(y), -mag, mag) * s).astype(np.float32).reshape(np.shape(x))


def np_int2_codes(x, scale="tensor"):
    """The packed bytes: per value bit 0 = large magnitude, bit 1 = negative; four values a byte, first lowest."""
    x2 = as_rows(np.asarray(x, np.float32))
    s = np.sqrt(block_stat(x2 * x2, scale, np.mean)).astype(np.float32)
    y = (x2 / np.where(s > 0, s, np.float32(1))).reshape(-1)
    codes = (np.abs(y) > np.float32((0.4528 + 1.5104) / 2)).astype(np.uint8) | (np.signbit(y).astype(np.uint8) << 1)
    codes = np.concatenate([codes, np.zeros(-len(codes) % 4, np.uint8)]).reshape(-1, 4)
    return (codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6).astype(np.uint8)


def np_sign1(x, scale="tensor"):
    """EF-SignSGD's scaled sign: (||x||_1 / d) sign(x) over the block, the sign of -0 negative."""
    x2 = as_rows(np.asarray(x, np.float32))
    s = block_stat(np.abs(x2), scale, np.mean).astype(np.float32)
    return (np.where(np.signbit(x2), -s, s)).astype(np.float32).reshape(np.shape(x))


def np_topk(x, fraction, values_roundtrip=lambda v: v):
    """Each row keeps its k = floor(f C + 1/2) largest magnitudes (stable: the lower index first on ties),
    values through ``values_roundtrip`` as a [rows, k] tensor, scattered into zeros. Returns (decoded, indices)."""
    x2 = as_rows(np.asarray(x, np.float32))
    k = min(x2.shape[1], max(1, int(np.floor(fraction * x2.shape[1] + 0.5))))
    idx = np.argsort(-np.abs(x2), axis=1, kind="stable")[:, :k]
    values = values_roundtrip(np.take_along_axis(x2, idx, axis=1))
    out = np.zeros_like(x2)
    np.put_along_axis(out, idx, values, axis=1)
    return out.reshape(np.shape(x)), idx


# ----------------------------------------------------------------------------- codecs
def test_int2_known_tensor_per_row():
    x = np.array([[2.0, 0.0, 0.0, -0.0], [0.5, -0.5, 0.5, -0.5], [0.0, 0.0, 0.0, 0.0]], np.float32)
    out = np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("int2", scale="row")))
    # row 0: RMS 1, so 2 -> the large level and the zeros -> the small one (-0 negative); row 1: RMS 0.5, |y| = 1
    expected = np.array([[1.5104, 0.4528, 0.4528, -0.4528], [0.7552, -0.7552, 0.7552, -0.7552], [0, 0, 0, 0]],
                        np.float32)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, np_int2(x, "row"))


def test_sign1_known_tensor():
    x = np.array([3.0, -1.0, 0.0, -0.0], np.float32)  # ||x||_1 / 4 = 1
    np.testing.assert_array_equal(np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("sign1"))), [1.0, -1.0, 1.0, -1.0])


@pytest.mark.parametrize("scale", q.SCALE_MODES)
@pytest.mark.parametrize("shape", [(37,), (5, 13), (2, 3, 7)])
def test_int2_and_sign1_payload_bits_and_values_against_numpy(scale, shape):
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32) * np.float32(0.01)
    int2 = q.encode(jnp.asarray(x), q.Codec("int2", scale=scale))
    np.testing.assert_array_equal(np.asarray(int2["codes"]), np_int2_codes(x, scale))
    np.testing.assert_allclose(np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("int2", scale=scale))),
                               np_int2(x, scale), rtol=1e-6, atol=0)
    sign = q.encode(jnp.asarray(x), q.Codec("sign1", scale=scale))
    np.testing.assert_array_equal(np.asarray(sign["codes"]), np.packbits(np.signbit(x).reshape(-1), bitorder="little"))
    np.testing.assert_allclose(np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("sign1", scale=scale))),
                               np_sign1(x, scale), rtol=1e-6, atol=0)
    for codec, payload, per_byte in ((q.Codec("int2", scale=scale), int2, 4), (q.Codec("sign1", scale=scale), sign, 8)):
        n_scales = int(np.prod(shape[:-1])) if scale == "row" and len(shape) > 1 else 1
        assert payload["codes"].dtype == jnp.uint8 and payload["scale"].shape == (n_scales,)
        nbytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(payload))
        assert nbytes == q.payload_nbytes(shape, codec) == -(-x.size // per_byte) + 4 * n_scales


def test_int2_is_the_mse_optimal_gaussian_quantiser_scaled_by_rms():
    """On Gaussian data the RMS-scaled levels give about Max (1960)'s distortion for 4 levels, 0.1175 σ²
    (sign1 at its L1 scale: 1 - 2/π = 0.3634 σ²): the grid is neither clipped nor wasted."""
    x = np.random.default_rng(4).normal(size=200_000).astype(np.float32)
    for codec, distortion in ((q.Codec("int2"), 0.1175), (q.Codec("sign1"), 1 - 2 / np.pi)):
        err = np.mean((np.asarray(q.roundtrip(jnp.asarray(x), codec)) - x) ** 2)
        assert err == pytest.approx(distortion, rel=0.02), codec


def test_topk_with_ties_keeps_the_lower_index():
    x = np.array([[3.0, -3.0, 1.0, 3.0, 0.0, -1.0, 2.0, -2.0]], np.float32)
    codec = q.Codec("fp32", topk_fraction=0.5)  # k = 4 of 8: the three 3s, then the first 2
    payload = q.encode(jnp.asarray(x), codec)
    np.testing.assert_array_equal(np.asarray(payload["indices"]), [[0, 1, 3, 6]])
    assert payload["indices"].dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(q.decode(payload, x.shape, codec)), [[3, -3, 0, 3, 0, 0, 2, 0]])


@pytest.mark.parametrize("precision,scale", [("fp32", "tensor"), ("int2", "row"), ("int2", "tensor"),
                                             ("sign1", "row"), ("fp4", "tensor")])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_topk_against_numpy_with_many_ties(precision, scale, fraction):
    x = np.random.default_rng(5).integers(-3, 4, size=(6, 40)).astype(np.float32)  # magnitudes 0..3: ties
    codec = q.Codec(precision, scale=scale, topk_fraction=fraction)
    value_ref = {"fp32": lambda v: v, "int2": lambda v: np_int2(v, scale), "sign1": lambda v: np_sign1(v, scale),
                 "fp4": lambda v: np.asarray(q.roundtrip(jnp.asarray(v), q.Codec("fp4")))}[precision]
    ref, ref_idx = np_topk(x, fraction, value_ref)
    payload = q.encode(jnp.asarray(x), codec)
    np.testing.assert_array_equal(np.asarray(payload["indices"]), ref_idx)
    np.testing.assert_allclose(np.asarray(q.decode(payload, x.shape, codec)), ref, rtol=1e-6, atol=0)
    nbytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(payload))
    assert nbytes == q.payload_nbytes(x.shape, codec)


def test_topk_index_width_follows_the_row_length():
    for cols, dtype in ((256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)):
        assert q.index_dtype(cols) == dtype
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 300)), jnp.float32)
    codec = q.Codec("int2", topk_fraction=0.1)  # k = 30 per row: 60 uint16 indices, 60 2-bit values, 1 scale
    payload = q.encode(x, codec)
    assert payload["indices"].dtype == jnp.uint16 and payload["indices"].shape == (2, 30)
    assert q.payload_nbytes((2, 300), codec) == 2 * 30 * 2 + 15 + 4


@pytest.mark.parametrize("codec", [q.Codec("int2"), q.Codec("sign1", scale="row"), q.Codec("fp32", topk_fraction=0.25),
                                   q.Codec("int2", topk_fraction=0.25), q.Codec("sign1", "e3m0", "row", 0.25)],
                         ids=lambda c: f"{c.precision}-{c.scale}-{c.topk_fraction}")
def test_a_non_finite_value_never_decodes_as_finite(codec):
    """As the other codecs: the bad value's whole block (row or tensor) decodes non-finite, with top-k too (it
    keeps a NaN or inf, which sort as the largest, and fp32 values have no scale to carry it to the rest)."""
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([[5.0, 0.3, bad, -4.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
        out = np.asarray(q.roundtrip(jnp.asarray(x), codec))
        assert not np.isfinite(out[0]).any(), (codec, bad, out)
        if codec.scale == "row":
            assert np.isfinite(out[1]).all()
        else:
            assert not np.isfinite(out).any()


@pytest.mark.parametrize("value,needle", [(0.0, "topk_fraction=0.0 must be in (0, 1]"),
                                          (1.5, "topk_fraction=1.5 must be in (0, 1]"),
                                          (-0.1, "topk_fraction=-0.1")])
def test_bad_topk_fraction_names_the_setting(value, needle):
    with pytest.raises(ValueError) as e:
        diloco.DiLoCoConfig(topk_fraction=value)
    assert needle in str(e.value)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(error_feedback=True), "error_feedback=True with outer_precision=fp32 and topk_fraction=1.0"),
    (dict(error_feedback=True, algo="dp", outer_precision="int2"),
     "error_feedback=True needs algo=diloco or streaming"),
    (dict(error_feedback=True, outer_precision="int2", error_feedback_decay=0.0), "error_feedback_decay=0.0"),
    (dict(outer_precision="int4"), "outer_precision='int4'; allowed: fp32, bf16, fp8, fp4, int2, sign1"),
])
def test_bad_error_feedback_settings_name_the_setting(kwargs, needle):
    with pytest.raises(ValueError) as e:
        diloco.DiLoCoConfig(**kwargs)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------- the algorithm
def numpy_codec(precision, fraction):
    dense = {"int2": np_int2, "sign1": np_sign1, "fp32": lambda v: v}[precision]
    return (lambda x: np_topk(x, fraction, dense)[0]) if fraction < 1 else dense


def streaming(**kwargs):
    return diloco.DiLoCoConfig(**{"algo": "streaming", "inner_steps": 4, "fragments": 2, "overlap_tau": 1,
                                  "alpha": 0.6, "outer_lr": 0.7, "outer_momentum": 0.9, **kwargs})


EF_CASES = [
    # M, outer_precision, topk_fraction, error_feedback_decay, tau, outer_momentum
    (2, "int2", 1.0, 1.0, 1, 0.9),
    (4, "sign1", 1.0, 1.0, 0, 0.9),
    (8, "int2", 0.5, 0.9, 1, 0.0),   # SparseLoCo's shape: top-k + 2 bits, decayed residual, no outer momentum
    (2, "fp32", 0.5, 1.0, 1, 0.9),
]


@pytest.mark.parametrize("M,precision,fraction,decay,tau,mu", EF_CASES)
def test_error_feedback_matches_numpy_at_m_2_4_8(devices, M, precision, fraction, decay, tau, mu):
    cfg = streaming(workers=M, overlap_tau=tau, outer_momentum=mu, outer_precision=precision,
                    topk_fraction=fraction, error_feedback=True, error_feedback_decay=decay)
    params, data = init_params(), batches(13)
    trainer, state, synced = run_jax(cfg, params, data)
    theta, local, synced_ref, residual = numpy_streaming_diloco(
        params, data, M, 4, 2, [list(f) for f in trainer.fragments], tau, 0.6, 0.7, mu, True,
        quantizer=numpy_codec(precision, fraction), error_feedback=True, decay=decay)
    assert synced == synced_ref and len(synced) == 6
    assert_tree_close(state.global_params, theta)
    for m in range(M):
        assert_tree_close(jax.tree.map(lambda x: x[m], state.params), local[m])
        assert_tree_close(jax.tree.map(lambda x: x[m], state.residual), residual[m])
    assert any(np.abs(r[k]).max() > 1e-4 for r in residual for k in SHAPES), "the residual must carry something"


def lossless_error_feedback(**kwargs) -> diloco.DiLoCoConfig:
    """Error feedback with the identity codec, which the config refuses (nothing to feed back): the error
    feedback path must then be plain DiLoCo, so the test sets it past the validation."""
    cfg = streaming(outer_precision="int2", error_feedback=True, **kwargs)
    object.__setattr__(cfg, "outer_precision", "fp32")
    assert cfg.codec.lossless and cfg.error_feedback
    return cfg


@pytest.mark.parametrize("M", [2, 8])
def test_error_feedback_with_the_identity_codec_is_plain_diloco_bit_for_bit(devices, M):
    params, data = init_params(), batches(13)
    _, plain, synced = run_jax(streaming(workers=M), params, data)
    _, ef, synced_ef = run_jax(lossless_error_feedback(workers=M), params, data)
    assert synced == synced_ef and plain.residual is None
    jax.tree.map(np.testing.assert_array_equal, ef.replace(residual=None), plain)
    jax.tree.map(lambda r: np.testing.assert_array_equal(r, 0.0), ef.residual)


def test_error_feedback_pmap_backend_matches_shard_map(devices):
    cfg = streaming(workers=2, outer_precision="int2", topk_fraction=0.5, error_feedback=True)
    params, data = init_params(), batches(9)
    _, a, _ = run_jax(cfg, params, data, "shard_map", devices[:2])
    _, b, _ = run_jax(cfg, params, data, "pmap", devices[:2])
    assert_tree_close(a.global_params, b.global_params, rtol=1e-6, atol=1e-7)
    assert_tree_close(jax.tree.map(lambda x: x[1], a.residual), jax.tree.map(lambda x: x[1], b.residual),
                      rtol=1e-6, atol=1e-7)


def test_error_feedback_syncs_from_the_background_thread_equal_inline_syncs_bit_for_bit(devices):
    cfg = streaming(workers=2, outer_precision="sign1", topk_fraction=0.5, error_feedback=True)
    params, data = init_params(), batches(9)
    seen = {}
    for dispatch in ("inline", "thread"):
        trainer = diloco.DiLoCo(cfg, loss_fn, optax.adam(LR), diloco.make_worker_mesh(2), params.keys(),
                                sync_dispatch=dispatch)
        state, snapshots = trainer.init(params), []
        for t, batch in enumerate(data, start=1):
            state, _ = trainer.step(state, jax.device_put(batch, trainer.batch_sharding), t)
            if t % 3 == 0:
                state = trainer.settle(state)
                snapshots.append(jax.tree.map(np.asarray, state))
        trainer.close()
        seen[dispatch] = snapshots
    for a, b in zip(seen["inline"], seen["thread"]):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    assert np.abs(seen["thread"][-1].residual["block_1"]).max() > 0


@pytest.mark.parametrize("precision,fraction", [("int2", 1.0), ("fp32", 0.5)])
def test_a_diverged_worker_stops_the_error_feedback_run_naming_it(devices, precision, fraction):
    """As without error feedback: a NaN in worker 1's replica stops the run at the sync, naming the worker,
    before the residual or θ is used or saved."""
    cfg = streaming(workers=2, outer_precision=precision, topk_fraction=fraction, error_feedback=True)
    params, data = init_params(), batches(6)
    trainer = diloco.DiLoCo(cfg, loss_fn, optax.adam(LR), diloco.make_worker_mesh(2), params.keys())
    state = trainer.init(params)
    for t in range(1, 4):
        state, _ = trainer.step(state, jax.device_put(data[t - 1], trainer.batch_sharding), t)
    poisoned = state.params["block_1"].at[1, 0, 0].set(jnp.nan)  # block_1 is in fragment 1 (syncs at t = 6)
    state = state.replace(params={**state.params, "block_1": jax.device_put(poisoned, trainer.stacked)})
    with pytest.raises(diloco.NonFiniteOuterGradient, match=r"worker\(s\) \[1\] .* inner step 6, fragment 1"):
        for t in range(4, 7):
            state, _ = trainer.step(state, jax.device_put(data[t - 1], trainer.batch_sharding), t)
