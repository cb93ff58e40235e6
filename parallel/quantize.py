"""Low-precision codecs for the outer gradients of (Streaming) DiLoCo.

Streaming DiLoCo (Douillard et al. 2025, "Streaming DiLoCo with overlapping communication", Sec. 2.4)
sends outer gradients as 4-bit floats (E3M0: 1 sign bit, 3 exponent bits, no mantissa) and accumulates
them in FP32. This module offers, for any float array ``x``:

* ``fp32`` (identity), ``bf16`` (a cast) and ``fp8`` (E4M3 ``float8_e4m3fn`` with a scale so that the
  largest magnitude maps to 448, the format's maximum);
* ``fp4`` in two flavours, both scaled so that the largest magnitude of a tensor (``scale="tensor"``)
  or of each row (``scale="row"``: rows = every index of the leading dimensions, the last dimension
  the row) maps to the grid's top value, rounded to the nearest grid point (ties to the smaller):

  - **E3M0**: magnitudes {0} ∪ {2^-6, ..., 2^0}: code 0 is zero, codes 1..7 are 2^(code-7).
    Relative error bound |q - y| <= max(|y|/3, 2^-7) · s for the scaled value y = x/s.
  - **E2M1** (the OCP MX "FP4"): magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}; bound |q - y| <= max(|y|/4, 1/4) · s.

  4-bit codes (sign bit 3, magnitude index bits 0..2) are packed two per byte, so a tensor of n values
  travels as ``ceil(n/2)`` bytes plus its float32 scales: this packed array is what the collective
  sends, and :func:`payload_nbytes` is its exact size.

Non-finite values are never encoded as finite ones: a NaN or ±inf anywhere in a tensor (per-row scale: in a
row) makes its scale NaN (with top-k: its kept values NaN, whether or not the bad value was kept), so the
whole tensor (row) decodes to NaN and the receiver sees the divergence
(Streaming DiLoCo then stops with an error naming the worker, parallel/diloco.py) instead of a silently
clipped update.

Two codecs for error feedback (parallel/diloco.py carries what they drop into the next sync), one code per
value, scaled per tensor or per row like fp4:

* ``int2``: 2 bits, a sign bit and one magnitude bit, magnitudes {0.4528, 1.5104} · s with s the block's RMS:
  the levels of the MSE-optimal 4-level quantiser of a unit Gaussian (Max 1960), so a Gaussian block is
  quantised with least mean squared error; the decision threshold is their midpoint 0.9816 · s (ties to the
  smaller). Codes are packed four per byte (``ceil(n/4)`` bytes) plus the float32 scales. The 2-bit outer
  deltas of MuLoCo (Thérien et al. 2025) and the 2-bit values of SparseLoCo (Sarfi et al. 2025) are of
  this kind; the papers' exact grids may differ.
* ``sign1``: 1 bit, the scaled sign of EF-SignSGD (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD
  and other Gradient Compression Schemes", Algorithm 2): C(x) = (||x||_1 / d) · sign(x), d the block's
  size; the sign is the float's sign bit (+0 is +, -0 is -). Eight per byte (``ceil(n/8)`` bytes) plus the scales.

An all-zero block has scale 0 for both, so it decodes to exact zeros (neither grid holds a 0).

**Top-k sparsification** (``topk_fraction`` f < 1) composes with any precision: every row (the last
dimension; a 1-D tensor is one row of C values) keeps its k = clip(floor(f·C + 1/2), 1, C) largest
magnitudes (ties to the lower index, as ``jax.lax.top_k``), sent as their column indices in the narrowest
unsigned integer that holds C - 1 (uint8 up to C = 256, uint16 up to 65,536, else uint32) and their values
encoded as a [rows, k] tensor with the precision above (its scale per row or per tensor over the kept
values). Rows are the chunks of SparseLoCo's chunked top-k (Sarfi et al. 2025). The receiver scatters the
values into zeros.

Every codec is a pair ``encode(x) -> payload`` (a pytree of arrays) and ``decode(payload, shape) -> f32``.
Payloads hold bf16 / fp8 bits as uint16 / uint8: collectives then move exactly those bytes on every
backend (XLA:CPU would otherwise widen a bf16 all-gather to f32).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PRECISIONS = ("fp32", "bf16", "fp8", "fp4", "int2", "sign1")
FP4_FORMATS = ("e3m0", "e2m1")
SCALE_MODES = ("tensor", "row")

E3M0_GRID = np.array([0.0] + [2.0 ** k for k in range(-6, 1)], np.float32)  # 8 magnitudes, top 1
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float32)  # top 6
FP8_MAX = 448.0  # float8_e4m3fn largest finite value
GRIDS = {"e3m0": E3M0_GRID, "e2m1": E2M1_GRID}
# int2 magnitudes in units of the block's RMS: Max (1960)'s 4-level MSE-optimal quantiser of N(0, 1)
INT2_LEVELS = np.array([0.4528, 1.5104], np.float32)
INT2_THRESHOLD = float((INT2_LEVELS[0] + INT2_LEVELS[1]) / 2)  # 0.9816
BITS = {"int2": 2, "sign1": 1}  # bits per value of the packed codecs (fp4: 4, see fp4_encode)


class Codec(NamedTuple):
    """How outer gradients travel: ``precision`` in PRECISIONS, ``fp4_format``, ``scale`` mode, and the
    fraction of each row kept by top-k sparsification (1: dense)."""
    precision: str = "fp32"
    fp4_format: str = "e3m0"
    scale: str = "tensor"
    topk_fraction: float = 1.0

    @property
    def sparse(self) -> bool:
        return self.topk_fraction < 1.0

    @property
    def lossless(self) -> bool:
        """FP32 and dense: the decoded message equals the tensor (error feedback would carry nothing)."""
        return self.precision == "fp32" and not self.sparse


def validate_codec(codec: Codec) -> None:
    if codec.precision not in PRECISIONS:
        raise ValueError(f"outer_precision={codec.precision!r}; allowed: {', '.join(PRECISIONS)}")
    if codec.fp4_format not in FP4_FORMATS:
        raise ValueError(f"fp4_format={codec.fp4_format!r}; allowed: {', '.join(FP4_FORMATS)}")
    if codec.scale not in SCALE_MODES:
        raise ValueError(f"quant_scale={codec.scale!r}; allowed: {', '.join(SCALE_MODES)}")
    f = codec.topk_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
        raise ValueError(f"topk_fraction={f!r} must be in (0, 1] (the fraction of each row sent; 1: all of it)")


def _rows(shape) -> int:
    return int(math.prod(shape[:-1])) if len(shape) > 1 else 1


def num_scales(shape, scale: str) -> int:
    return _rows(shape) if scale == "row" else 1


def _absmax(x2d: jax.Array, scale: str) -> jax.Array:
    """Largest magnitude per row ([rows, 1]) or of the whole tensor ([1, 1])."""
    if scale == "row":
        return jnp.max(jnp.abs(x2d), axis=1, keepdims=True)
    return jnp.max(jnp.abs(x2d)).reshape(1, 1)


def _scale(amax: jax.Array, top: float) -> jax.Array:
    """s with amax / s = top; 1 for an all-zero block; NaN when the block holds a NaN or an inf, so
    that it decodes to NaN (a NaN's magnitude is NaN, hence any(isnan) is caught by isfinite(amax))."""
    s = jnp.where(amax > 0, amax / top, 1.0)
    return jnp.where(jnp.isfinite(amax), s, jnp.nan).astype(jnp.float32)


def _as_2d(x: jax.Array) -> jax.Array:
    return x.reshape(_rows(x.shape), x.shape[-1] if x.ndim else 1).astype(jnp.float32)


def round_to_grid(y: jax.Array, grid: np.ndarray) -> jax.Array:
    """Index of the grid magnitude nearest to |y| (ties to the smaller); monotone in |y|."""
    midpoints = jnp.asarray((grid[1:] + grid[:-1]) / 2)
    return jnp.sum(jnp.abs(y)[..., None] > midpoints, axis=-1).astype(jnp.uint8)


def pack_bits(codes: jax.Array, bits: int) -> jax.Array:
    """Flat uint8 codes in [0, 2^bits) -> ceil(n·bits/8) bytes, 8/bits codes a byte, the first in the low bits."""
    per = 8 // bits
    flat = codes.reshape(-1).astype(jnp.uint8)
    if flat.size % per:
        flat = jnp.concatenate([flat, jnp.zeros((per - flat.size % per,), jnp.uint8)])
    groups = flat.reshape(-1, per)
    packed = groups[:, 0]
    for i in range(1, per):
        packed = packed | (groups[:, i] << (bits * i))
    return packed.astype(jnp.uint8)


def unpack_bits(packed: jax.Array, n: int, bits: int) -> jax.Array:
    """The first ``n`` codes of :func:`pack_bits`."""
    per, mask = 8 // bits, (1 << bits) - 1
    codes = jnp.stack([(packed >> (bits * i)) & mask for i in range(per)], axis=-1).reshape(-1)
    return codes[:n]


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """Flat uint8 codes in [0, 16) -> ceil(n/2) bytes, low nibble first."""
    return pack_bits(codes, 4)


def unpack_nibbles(packed: jax.Array, n: int) -> jax.Array:
    return unpack_bits(packed, n, 4)


def fp4_encode(x: jax.Array, fmt: str = "e3m0", scale: str = "tensor") -> dict:
    """4-bit float codes of ``x / s`` packed two per byte, and the float32 scales ``s``."""
    grid = GRIDS[fmt]
    x2d = _as_2d(x)
    s = _scale(_absmax(x2d, scale), float(grid[-1]))
    y = x2d / s
    codes = round_to_grid(y, grid) | (jnp.signbit(y).astype(jnp.uint8) << 3)
    return {"codes": pack_nibbles(codes), "scale": s.reshape(-1)}


def fp4_decode(payload: dict, shape, fmt: str = "e3m0") -> jax.Array:
    grid = jnp.asarray(GRIDS[fmt])
    n = int(math.prod(shape))
    codes = unpack_nibbles(payload["codes"], n)
    magnitude = grid[(codes & 0x7).astype(jnp.int32)]
    value = jnp.where((codes >> 3) > 0, -magnitude, magnitude)
    cols = shape[-1] if len(shape) else 1
    value = value.reshape(-1, cols) * payload["scale"].reshape(-1, 1)
    return value.reshape(shape)


def fp8_encode(x: jax.Array, scale: str = "tensor") -> dict:
    x2d = _as_2d(x)
    s = _scale(_absmax(x2d, scale), FP8_MAX)
    values = jax.lax.bitcast_convert_type((x2d / s).astype(jnp.float8_e4m3fn), jnp.uint8)
    return {"values": values, "scale": s.reshape(-1)}


def fp8_decode(payload: dict, shape) -> jax.Array:
    values = jax.lax.bitcast_convert_type(payload["values"], jnp.float8_e4m3fn).astype(jnp.float32)
    values = values * payload["scale"].reshape(-1, 1)
    return values.reshape(shape)


def _statistic_scale(stat: jax.Array) -> jax.Array:
    """The scale of an int2 / sign1 block from its RMS / mean magnitude: 0 for an all-zero block (it decodes
    to zeros), NaN for a block holding a NaN or an inf (it decodes to NaN)."""
    return jnp.where(jnp.isfinite(stat), stat, jnp.nan).astype(jnp.float32)


def int2_encode(x: jax.Array, scale: str = "tensor") -> dict:
    """2-bit codes (bit 0: magnitude 1.5104 rather than 0.4528, bit 1: sign) of ``x / s``, s the RMS of the
    tensor or row, packed four per byte, and the float32 scales."""
    x2d = _as_2d(x)
    sq = x2d * x2d
    ms = jnp.mean(sq, axis=1, keepdims=True) if scale == "row" else jnp.mean(sq).reshape(1, 1)
    s = _statistic_scale(jnp.sqrt(ms))
    y = x2d / jnp.where(s > 0, s, 1.0)
    codes = (jnp.abs(y) > INT2_THRESHOLD).astype(jnp.uint8) | (jnp.signbit(y).astype(jnp.uint8) << 1)
    return {"codes": pack_bits(codes, 2), "scale": s.reshape(-1)}


def int2_decode(payload: dict, shape) -> jax.Array:
    n = int(math.prod(shape))
    codes = unpack_bits(payload["codes"], n, 2)
    magnitude = jnp.asarray(INT2_LEVELS)[(codes & 1).astype(jnp.int32)]
    value = jnp.where((codes >> 1) > 0, -magnitude, magnitude)
    cols = shape[-1] if len(shape) else 1
    return (value.reshape(-1, cols) * payload["scale"].reshape(-1, 1)).reshape(shape)


def sign1_encode(x: jax.Array, scale: str = "tensor") -> dict:
    """Sign bits (1: negative) packed eight per byte, and the float32 scales ||x||_1 / d of the tensor or row."""
    x2d = _as_2d(x)
    a = jnp.abs(x2d)
    mean_abs = jnp.mean(a, axis=1, keepdims=True) if scale == "row" else jnp.mean(a).reshape(1, 1)
    s = _statistic_scale(mean_abs)
    return {"codes": pack_bits(jnp.signbit(x2d).astype(jnp.uint8), 1), "scale": s.reshape(-1)}


def sign1_decode(payload: dict, shape) -> jax.Array:
    n = int(math.prod(shape))
    bits = unpack_bits(payload["codes"], n, 1)
    value = jnp.where(bits > 0, -1.0, 1.0).astype(jnp.float32)
    cols = shape[-1] if len(shape) else 1
    return (value.reshape(-1, cols) * payload["scale"].reshape(-1, 1)).reshape(shape)


def _encode_dense(x: jax.Array, codec: Codec):
    if codec.precision == "fp32":
        return x.astype(jnp.float32)
    if codec.precision == "bf16":
        return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)
    if codec.precision == "fp8":
        return fp8_encode(x, codec.scale)
    if codec.precision == "int2":
        return int2_encode(x, codec.scale)
    if codec.precision == "sign1":
        return sign1_encode(x, codec.scale)
    return fp4_encode(x, codec.fp4_format, codec.scale)


def _decode_dense(payload, shape, codec: Codec) -> jax.Array:
    if codec.precision == "fp32":
        return payload.astype(jnp.float32)
    if codec.precision == "bf16":
        return jax.lax.bitcast_convert_type(payload, jnp.bfloat16).astype(jnp.float32)
    if codec.precision == "fp8":
        return fp8_decode(payload, shape)
    if codec.precision == "int2":
        return int2_decode(payload, shape)
    if codec.precision == "sign1":
        return sign1_decode(payload, shape)
    return fp4_decode(payload, shape, codec.fp4_format)


# ----------------------------------------------------------------------------- top-k
def topk_count(cols: int, fraction: float) -> int:
    """k kept of a row of ``cols`` values: floor(f·C + 1/2), at least 1, at most C."""
    return min(cols, max(1, int(math.floor(fraction * cols + 0.5))))


def index_dtype(cols: int) -> np.dtype:
    """The narrowest unsigned integer that holds a column index of a row of ``cols`` values."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if cols - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"rows of {cols} values are too long for uint32 indices")


def _rows_cols(shape) -> tuple[int, int]:
    return _rows(shape), (int(shape[-1]) if len(shape) else 1)


def topk_encode(x: jax.Array, codec: Codec) -> dict:
    """Column indices (``index_dtype``) and encoded values ([rows, k]) of each row's k largest magnitudes."""
    x2d = _as_2d(x)
    rows, cols = x2d.shape
    k = topk_count(cols, codec.topk_fraction)
    _, idx = jax.lax.top_k(jnp.abs(x2d), k)  # equal magnitudes: the lower index first
    values = jnp.take_along_axis(x2d, idx, axis=1)
    finite = jnp.all(jnp.isfinite(x2d), axis=1, keepdims=True)
    if codec.scale == "tensor":
        finite = jnp.all(finite)
    values = jnp.where(finite, values, jnp.nan)  # a bad value left out must still reach the receiver
    return {"indices": idx.astype(index_dtype(cols)), "values": _encode_dense(values, codec)}


def topk_decode(payload: dict, shape, codec: Codec) -> jax.Array:
    rows, cols = _rows_cols(shape)
    k = topk_count(cols, codec.topk_fraction)
    values = _decode_dense(payload["values"], (rows, k), codec)
    idx = payload["indices"].astype(jnp.int32)
    dense = jnp.zeros((rows, cols), jnp.float32).at[jnp.arange(rows)[:, None], idx].set(values)
    dense = jnp.where(jnp.any(jnp.isnan(values), axis=1, keepdims=True), jnp.nan, dense)
    return dense.reshape(shape)


# ----------------------------------------------------------------------------- the codec
def encode(x: jax.Array, codec: Codec):
    """The payload that travels for ``x`` (a pytree of arrays)."""
    if codec.sparse:
        return topk_encode(x, codec)
    return _encode_dense(x, codec)


def decode(payload, shape, codec: Codec) -> jax.Array:
    """The float32 value of a payload made by :func:`encode` (accumulation happens in FP32)."""
    if codec.sparse:
        return topk_decode(payload, shape, codec)
    return _decode_dense(payload, shape, codec)


def roundtrip(x: jax.Array, codec: Codec) -> jax.Array:
    return decode(encode(x, codec), x.shape, codec)


def _dense_nbytes(shape, codec: Codec) -> int:
    n = int(math.prod(shape))
    if codec.precision == "fp32":
        return 4 * n
    if codec.precision == "bf16":
        return 2 * n
    scales = 4 * num_scales(shape, codec.scale)
    if codec.precision == "fp8":
        return n + scales
    bits = BITS.get(codec.precision, 4)
    per = 8 // bits
    return (n + per - 1) // per + scales


def payload_nbytes(shape, codec: Codec) -> int:
    """Exact bytes of ``encode(x)`` for an ``x`` of ``shape`` (what one worker puts on the wire).

    Dense: fp32 4n, bf16 2n, fp8 n + 4S, fp4 ceil(n/2) + 4S, int2 ceil(n/4) + 4S, sign1 ceil(n/8) + 4S, with
    S scales (1 per tensor, or one per row). Top-k: R·k index bytes (R rows, k kept per row, each index
    1, 2 or 4 bytes) plus the dense size of the [R, k] values.
    """
    if not codec.sparse:
        return _dense_nbytes(shape, codec)
    rows, cols = _rows_cols(shape)
    k = topk_count(cols, codec.topk_fraction)
    return rows * k * index_dtype(cols).itemsize + _dense_nbytes((rows, k), codec)


def error_bound(y: np.ndarray, fmt: str) -> np.ndarray:
    """Worst-case |q - y| of fp4 rounding of a scaled value y (|y| <= grid top), see the module doc."""
    y = np.abs(y)
    if fmt == "e3m0":
        return np.maximum(y / 3.0, 2.0 ** -7)
    return np.maximum(y / 4.0, 0.25)


def tree_payload_nbytes(tree, codec: Codec) -> int:
    return int(sum(payload_nbytes(x.shape, codec) for x in jax.tree.leaves(tree)))
