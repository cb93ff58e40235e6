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
row) makes its scale NaN, so the whole tensor (row) decodes to NaN and the receiver sees the divergence
(Streaming DiLoCo then stops with an error naming the worker, parallel/diloco.py) instead of a silently
clipped update.

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

PRECISIONS = ("fp32", "bf16", "fp8", "fp4")
FP4_FORMATS = ("e3m0", "e2m1")
SCALE_MODES = ("tensor", "row")

E3M0_GRID = np.array([0.0] + [2.0 ** k for k in range(-6, 1)], np.float32)  # 8 magnitudes, top 1
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float32)  # top 6
FP8_MAX = 448.0  # float8_e4m3fn largest finite value
GRIDS = {"e3m0": E3M0_GRID, "e2m1": E2M1_GRID}


class Codec(NamedTuple):
    """How outer gradients travel: ``precision`` in PRECISIONS, ``fp4_format``, ``scale`` mode."""
    precision: str = "fp32"
    fp4_format: str = "e3m0"
    scale: str = "tensor"


def validate_codec(codec: Codec) -> None:
    if codec.precision not in PRECISIONS:
        raise ValueError(f"outer_precision={codec.precision!r}; allowed: {', '.join(PRECISIONS)}")
    if codec.fp4_format not in FP4_FORMATS:
        raise ValueError(f"fp4_format={codec.fp4_format!r}; allowed: {', '.join(FP4_FORMATS)}")
    if codec.scale not in SCALE_MODES:
        raise ValueError(f"quant_scale={codec.scale!r}; allowed: {', '.join(SCALE_MODES)}")


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


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """Flat uint8 codes in [0, 16) -> ceil(n/2) bytes, low nibble first."""
    flat = codes.reshape(-1)
    if flat.size % 2:
        flat = jnp.concatenate([flat, jnp.zeros((1,), jnp.uint8)])
    pairs = flat.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).astype(jnp.uint8)


def unpack_nibbles(packed: jax.Array, n: int) -> jax.Array:
    codes = jnp.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1)
    return codes[:n]


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


def encode(x: jax.Array, codec: Codec):
    """The payload that travels for ``x`` (a pytree of arrays)."""
    if codec.precision == "fp32":
        return x.astype(jnp.float32)
    if codec.precision == "bf16":
        return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)
    if codec.precision == "fp8":
        return fp8_encode(x, codec.scale)
    return fp4_encode(x, codec.fp4_format, codec.scale)


def decode(payload, shape, codec: Codec) -> jax.Array:
    """The float32 value of a payload made by :func:`encode` (accumulation happens in FP32)."""
    if codec.precision == "fp32":
        return payload.astype(jnp.float32)
    if codec.precision == "bf16":
        return jax.lax.bitcast_convert_type(payload, jnp.bfloat16).astype(jnp.float32)
    if codec.precision == "fp8":
        return fp8_decode(payload, shape)
    return fp4_decode(payload, shape, codec.fp4_format)


def roundtrip(x: jax.Array, codec: Codec) -> jax.Array:
    return decode(encode(x, codec), x.shape, codec)


def payload_nbytes(shape, codec: Codec) -> int:
    """Exact bytes of ``encode(x)`` for an ``x`` of ``shape`` (what one worker puts on the wire)."""
    n = int(math.prod(shape))
    if codec.precision == "fp32":
        return 4 * n
    if codec.precision == "bf16":
        return 2 * n
    scales = 4 * num_scales(shape, codec.scale)
    if codec.precision == "fp8":
        return n + scales
    return (n + 1) // 2 + scales


def error_bound(y: np.ndarray, fmt: str) -> np.ndarray:
    """Worst-case |q - y| of fp4 rounding of a scaled value y (|y| <= grid top), see the module doc."""
    y = np.abs(y)
    if fmt == "e3m0":
        return np.maximum(y / 3.0, 2.0 ** -7)
    return np.maximum(y / 4.0, 0.25)


def tree_payload_nbytes(tree, codec: Codec) -> int:
    return int(sum(payload_nbytes(x.shape, codec) for x in jax.tree.leaves(tree)))
