"""Helpers for values inside ``jax.shard_map`` with ``check_vma``: which mesh axes a value varies over, and
the casts that custom VJPs and Pallas calls need so that loop carries, outputs and cotangents carry the
right varying-manual-axes type (outside shard_map every set is empty and they do nothing)."""
from __future__ import annotations

import jax
from jax import lax


def varying_axes(x) -> set:
    """The mesh axes over which ``x`` varies inside shard_map (empty outside)."""
    mat = getattr(jax.typeof(x), "manual_axis_type", None)
    return set(getattr(mat, "varying", ()) or ())


def varying_like(z: jax.Array, *refs) -> jax.Array:
    """Marks ``z`` as varying over every mesh axis that ``refs`` vary over (shard_map's check_vma types
    loop carries; a fresh ``jnp.zeros`` varies over none)."""
    missing = set().union(*(varying_axes(r) for r in refs)) - varying_axes(z)
    return lax.pcast(z, tuple(sorted(missing)), to="varying") if missing else z


def sum_to_vma_of(ct: jax.Array, primal: jax.Array) -> jax.Array:
    """A cotangent that varies over more mesh axes than its primal is summed over them: the transpose of
    the implicit broadcast (``pcast`` to varying) of the primal in the forward computation."""
    extra = varying_axes(ct) - varying_axes(primal)
    return lax.psum(ct, tuple(sorted(extra))) if extra else ct


def aligned(*arrays):
    """``arrays`` each cast to vary over the union of the axes any of them varies over (a Pallas call inside
    shard_map needs one varying type for its inputs and its outputs)."""
    return tuple(varying_like(a, *arrays) for a in arrays)


def shape_like(shape, dtype, ref: jax.Array) -> jax.ShapeDtypeStruct:
    """An output shape that varies like ``ref`` (a Pallas call's ``out_shape`` inside shard_map)."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=getattr(jax.typeof(ref), "manual_axis_type", None))
