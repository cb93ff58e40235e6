"""Shardings of the AlgoPerf v0.6 JAX API: a 1-D mesh named ``batch`` over all devices.

Batches are global ``jax.Array``s split along their first dimension; parameters and optimizer
state are replicated. Submissions use these names to give ``jax.jit`` its in/out shardings.
"""
from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(list(devices), (BATCH_AXIS,))


def get_mesh() -> Mesh:
    """The 1-D mesh over ``jax.devices()`` with axis ``batch`` (cached)."""
    return _mesh(tuple(jax.devices()))


def get_replicate_sharding() -> NamedSharding:
    return NamedSharding(get_mesh(), P())


def get_batch_dim_sharding() -> NamedSharding:
    return NamedSharding(get_mesh(), P(BATCH_AXIS))


def shard_along_batch_dim(x):
    """Places every leaf of ``x`` split along its leading (batch) dimension."""
    sharding = get_batch_dim_sharding()
    return jax.tree.map(lambda a: jax.device_put(a, sharding), x)


def replicate(x):
    """Places every leaf of ``x`` on all devices."""
    sharding = get_replicate_sharding()
    return jax.tree.map(lambda a: jax.device_put(a, sharding), x)
