"""4-bit (E3M0, E2M1), fp8 and bf16 codecs of parallel/quantize.py: exact on representable values,
monotone, within their stated error bounds, and exactly as large on the wire as payload_nbytes says."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallel import quantize as q

FP4 = [(fmt, scale) for fmt in q.FP4_FORMATS for scale in q.SCALE_MODES]


@pytest.mark.parametrize("fmt,scale", FP4)
def test_fp4_exact_on_representable_values(fmt, scale):
    grid = q.GRIDS[fmt]
    values = np.concatenate([grid, -grid[1:]])  # contains ±top, so the scale is exactly 1
    x = np.tile(values, (3, 1)).astype(np.float32) * np.float32(2.0 ** 3)  # a power-of-two scale stays exact
    out = np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("fp4", fmt, scale)))
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("fmt,scale", FP4)
def test_fp4_monotone_and_within_error_bound(fmt, scale):
    rng = np.random.default_rng(0)
    x = np.sort(rng.normal(size=(4, 257)).astype(np.float32) * rng.uniform(0.01, 10, size=(4, 1)), axis=1)
    codec = q.Codec("fp4", fmt, scale)
    out = np.asarray(q.roundtrip(jnp.asarray(x), codec))
    assert np.all(np.diff(out, axis=1) >= 0), "decoded values must be non-decreasing in the input"
    top = q.GRIDS[fmt][-1]
    amax = np.abs(x).max(axis=1, keepdims=True) if scale == "row" else np.abs(x).max()
    s = amax / top
    bound = q.error_bound(x / s, fmt) * s
    assert np.all(np.abs(out - x) <= bound * (1 + 1e-6) + 1e-12)
    # the bound is attained within a factor 2 somewhere (it is not vacuous)
    assert np.max(np.abs(out - x) / bound) > 0.5


def test_e3m0_nearest_grid_point_against_brute_force():
    x = np.linspace(-1.0, 1.0, 2001, dtype=np.float32)
    out = np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("fp4", "e3m0")))
    grid = np.concatenate([q.E3M0_GRID, -q.E3M0_GRID[1:]])
    dist = np.abs(x[:, None] - grid[None, :])
    best = dist.min(axis=1)
    np.testing.assert_allclose(np.abs(out - x), best, rtol=0, atol=1e-7)  # ties may go either way


def test_fp4_packs_two_codes_per_byte_plus_scales():
    x = jnp.ones((3, 5), jnp.float32)
    for scale, n_scales in (("tensor", 1), ("row", 3)):
        payload = q.encode(x, q.Codec("fp4", "e3m0", scale))
        assert payload["codes"].dtype == jnp.uint8 and payload["codes"].shape == (8,)  # ceil(15/2)
        assert payload["scale"].shape == (n_scales,)
        nbytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(payload))
        assert nbytes == q.payload_nbytes((3, 5), q.Codec("fp4", "e3m0", scale)) == 8 + 4 * n_scales


@pytest.mark.parametrize("precision,shape", list(itertools.product(q.PRECISIONS, [(7,), (4, 6), (2, 3, 5)])))
def test_payload_nbytes_is_the_encoded_size(precision, shape):
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    codec = q.Codec(precision, "e2m1", "row")
    nbytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(q.encode(x, codec)))
    assert nbytes == q.payload_nbytes(shape, codec)


def test_fp8_and_bf16_relative_error():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(64, 32)), jnp.float32)
    fp8 = np.asarray(q.roundtrip(x, q.Codec("fp8")))
    bf16 = np.asarray(q.roundtrip(x, q.Codec("bf16")))
    xs = np.asarray(x)
    big = np.abs(xs) > np.abs(xs).max() * 2.0 ** -6  # E4M3 normal range after scaling to 448
    assert np.all(np.abs(fp8 - xs)[big] <= np.abs(xs)[big] * 2.0 ** -4 * 1.0001)  # 3 mantissa bits
    assert np.all(np.abs(bf16 - xs) <= np.abs(xs) * 2.0 ** -8)  # 7 mantissa bits, round to nearest
    np.testing.assert_array_equal(np.asarray(q.roundtrip(x, q.Codec("fp32"))), xs)


def test_zero_tensor_round_trips_to_zero():
    for codec in (q.Codec("fp4", "e3m0"), q.Codec("fp4", "e2m1", "row"), q.Codec("fp8")):
        np.testing.assert_array_equal(np.asarray(q.roundtrip(jnp.zeros((2, 3)), codec)), 0.0)


def test_bad_codec_names_the_flag():
    with pytest.raises(ValueError, match="quant_scale='col'"):
        q.validate_codec(q.Codec("fp4", "e3m0", "col"))


@pytest.mark.parametrize("fmt", q.FP4_FORMATS)
def test_fp4_ties_go_to_the_smaller_magnitude(fmt):
    """The documented rule: a value exactly halfway between two grid points takes the smaller magnitude
    (for either sign), so rounding never increases |x| on a tie."""
    grid = q.GRIDS[fmt]
    midpoints = (grid[1:] + grid[:-1]) / 2  # exact in float32: grid points are small dyadic numbers
    x = np.concatenate([[grid[-1]], midpoints, -midpoints]).astype(np.float32)  # top present: scale is 1
    out = np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("fp4", fmt)))
    np.testing.assert_array_equal(out, np.concatenate([[grid[-1]], grid[:-1], -grid[:-1]]))


@pytest.mark.parametrize("codec", [q.Codec("fp4", "e3m0"), q.Codec("fp4", "e2m1"), q.Codec("fp8"),
                                   q.Codec("bf16"), q.Codec("fp32")], ids=lambda c: f"{c.precision}-{c.fp4_format}")
def test_a_non_finite_value_never_decodes_as_finite(codec):
    """Before: a NaN made the fp4 scale fall back to 1, the NaN became 0 and every other value was clipped
    to ±1 ([5, nan, .3, -4] -> [1, 0, .25, -1]): a diverging worker sent a finite, wrong update."""
    for bad in (np.nan, np.inf, -np.inf):
        out = np.asarray(q.roundtrip(jnp.asarray([5.0, bad, 0.3, -4.0], jnp.float32), codec))
        assert not np.isfinite(out[1]), (codec, bad, out)
        if codec.precision in ("fp4", "fp8"):  # one scale for the tensor: nothing of it may look valid
            assert not np.isfinite(out).any(), (codec, bad, out)


def test_per_row_scale_confines_a_nan_to_its_row():
    x = np.array([[5.0, np.nan, 0.3, -4.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    out = np.asarray(q.roundtrip(jnp.asarray(x), q.Codec("fp4", "e3m0", "row")))
    assert np.isnan(out[0]).all()
    np.testing.assert_array_equal(out[1], [1.0, 2.0, 2.0, 4.0])  # 3 = 0.75 * 4 is a tie: to 0.5 * 4
