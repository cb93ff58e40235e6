"""Device meshes from named axis sizes, and placing a global batch along the `data` axis.

A mesh is described by a string such as ``"data:4,expert:2"``. Axis names come from a fixed
vocabulary (:data:`KNOWN_AXES`) so that every module of the toolkit agrees on what an axis means;
a size of ``-1`` (at most once) takes the devices left over.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

KNOWN_AXES = ("data", "workers", "expert", "tensor")


def simulate_devices_hint(needed: int) -> str:
    """How to run something that needs ``needed`` devices on a machine with fewer: XLA's virtual CPU devices."""
    on_cpu = jax.default_backend() == "cpu"
    return (f"to simulate {needed} devices on CPU, run with XLA_FLAGS=--xla_force_host_platform_device_count={needed}"
            + ("" if on_cpu else " JAX_PLATFORMS=cpu"))


def _devices(n: int) -> str:
    return f"{n} device{'' if n == 1 else 's'}"


def parse_mesh_spec(spec: str, num_devices: int) -> dict[str, int]:
    """Parses ``"data:4,expert:2"`` into ``{"data": 4, "expert": 2}`` with ``-1`` resolved.

    Raises:
      ValueError: naming the string and the device count, for a malformed entry, an unknown or
        repeated axis, a size < 1 (other than a single -1), or a product that is not ``num_devices``;
        a mesh larger than the devices also says how to simulate enough devices on CPU.
    """
    def fail(why: str, needed: int = 0) -> ValueError:
        hint = f"; {simulate_devices_hint(needed)}" if needed > num_devices else ""
        return ValueError(
            f"mesh spec {spec!r} for {_devices(num_devices)}: {why} "
            f"(expected comma-separated AXIS:SIZE with AXIS in {list(KNOWN_AXES)}, "
            f"sizes multiplying to {num_devices}, at most one size -1){hint}")

    if not isinstance(spec, str) or not spec.strip():
        raise fail("empty")
    sizes: dict[str, int] = {}
    for entry in spec.split(","):
        name, sep, size_text = entry.strip().partition(":")
        name = name.strip()
        if not sep or not name:
            raise fail(f"entry {entry!r} is not AXIS:SIZE")
        if name not in KNOWN_AXES:
            raise fail(f"unknown axis {name!r}")
        if name in sizes:
            raise fail(f"axis {name!r} given twice")
        try:
            size = int(size_text.strip())
        except ValueError:
            raise fail(f"size {size_text.strip()!r} of axis {name!r} is not an integer") from None
        if size < 1 and size != -1:
            raise fail(f"size {size} of axis {name!r} must be >= 1 or -1")
        sizes[name] = size

    wildcards = [n for n, s in sizes.items() if s == -1]
    if len(wildcards) > 1:
        raise fail(f"more than one axis has size -1: {wildcards}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if wildcards:
        if num_devices % known:
            raise fail(f"fixed sizes multiply to {known}, which does not divide the device count", known)
        sizes[wildcards[0]] = num_devices // known
    elif known != num_devices:
        raise fail(f"sizes multiply to {known}", known)
    return sizes


def make_mesh(spec: str = "data:-1", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a :class:`jax.sharding.Mesh` whose axes are named and sized by ``spec``."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes.values())
    try:
        device_grid = jax.make_mesh(shape, tuple(sizes), devices=devices).devices
    except Exception:  # backends without a topology-aware layout: plain row-major order
        device_grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(device_grid, tuple(sizes))


def batch_sharding(mesh: Mesh, batch_axes: str | tuple[str, ...] = "data") -> NamedSharding:
    """Sharding of arrays whose leading dimension is the global batch, split along ``batch_axes``."""
    return NamedSharding(mesh, P(batch_axes))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_axis_size(mesh: Mesh, batch_axes: str | tuple[str, ...] = "data") -> int:
    axes = (batch_axes,) if isinstance(batch_axes, str) else batch_axes
    return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def check_global_batch(batch_size: int, mesh: Mesh, batch_axes: str | tuple[str, ...] = "data") -> None:
    """Raises a ValueError unless the global batch splits evenly along the batch axes."""
    n = batch_axis_size(mesh, batch_axes)
    if batch_size < 1 or batch_size % n:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of the {batch_axes!r} mesh axis "
            f"size {n} (mesh {dict(mesh.shape)})")


def shard_batch(batch, mesh: Mesh, batch_axes: str | tuple[str, ...] = "data"):
    """Places a host pytree of global-batch arrays onto ``mesh``, split along the batch axes.

    Single-process only takes the full host batch; on several hosts each process passes its own
    slice of the global batch and the global array is assembled from the per-process pieces.
    """
    sharding = batch_sharding(mesh, batch_axes)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def to_host(x) -> np.ndarray:
    """The whole value of a (possibly multi-process) global array as NumPy, on every process: an array that
    spans devices of other processes is all-gathered across processes (a collective: every process must
    call this in the same order)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_mean(x, key: str, timeout_s: float = 60.0) -> float:
    """The mean of a global array's elements, on every process, WITHOUT a device collective: each process
    sums the distinct shards it holds and the (sum, count) pairs meet in ``jax.distributed``'s key-value
    store under ``key`` (unique per call, the same on every process). For readouts (a logged loss) while a
    collective runs in another thread: a second collective over the same devices would share its
    communicator. One process: ``np.mean`` of the whole array."""
    if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
        return float(np.mean(to_host(x)))
    from jax._src import distributed

    shards = {str(s.index): np.asarray(s.data) for s in x.addressable_shards}.values()
    local_sum, local_count = float(sum(np.sum(s, dtype=np.float64) for s in shards)), sum(s.size for s in shards)
    client = distributed.global_state.client
    client.key_value_set(f"{key}/{jax.process_index()}", f"{local_sum!r} {local_count}")
    total, count = 0.0, 0
    for process in range(jax.process_count()):
        s, n = client.blocking_key_value_get(f"{key}/{process}", int(timeout_s * 1000)).split()
        total, count = total + float(s), count + int(n)
    return total / count
