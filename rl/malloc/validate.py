"""Independent NumPy validator of a fast-memory placement (no code shared with the game or solvers).

A placement maps every buffer to an integer offset in fast memory or to ``None`` (slow memory; ``-1`` is
accepted as a synonym in arrays). It is valid iff every fast buffer lies inside ``[0, capacity)`` and no two
fast buffers overlap both in time (inclusive live intervals) and in address (half-open byte ranges).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rl.malloc.instance import Instance

SLOW = None


def as_offsets(instance: Instance, placement) -> np.ndarray:
    """Placement (sequence of int|None, or dict index->int|None) -> int64 [n] with -1 for slow."""
    n = instance.num_buffers
    if isinstance(placement, dict):
        placement = [placement.get(i, None) for i in range(n)]
    placement = list(placement)
    if len(placement) != n:
        raise ValueError(f"placement has {len(placement)} entries, instance {instance.name!r} has {n} buffers")
    out = np.full(n, -1, np.int64)
    for i, p in enumerate(placement):
        if p is None or (not isinstance(p, str) and int(p) == -1) or p == "slow":
            continue
        if int(p) != p or int(p) < 0:
            raise ValueError(f"buffer #{i} ({instance.buffer_names[i]!r}): offset {p!r} must be an integer >= 0 "
                             "or None/'slow'")
        out[i] = int(p)
    return out


def violations(instance: Instance, placement) -> list[str]:
    """Every rule broken by the placement, as readable strings (empty list: valid)."""
    off = as_offsets(instance, placement)
    s, a, b = instance.sizes, instance.starts, instance.ends
    errs = []
    fast = np.flatnonzero(off >= 0)
    for i in fast:
        if off[i] + s[i] > instance.capacity:
            errs.append(f"buffer #{i} ({instance.buffer_names[i]!r}) at [{off[i]}, {off[i] + s[i]}) exceeds "
                        f"capacity {instance.capacity}")
    for x_idx, i in enumerate(fast):
        for j in fast[x_idx + 1:]:
            time = a[i] <= b[j] and a[j] <= b[i]
            space = off[i] < off[j] + s[j] and off[j] < off[i] + s[i]
            if time and space:
                errs.append(f"buffers #{i} ({instance.buffer_names[i]!r}) and #{j} ({instance.buffer_names[j]!r}) "
                            "overlap in time and address")
    return errs


def benefit(instance: Instance, placement, check: bool = True) -> float:
    """Total benefit of the fast buffers; raises ValueError on an invalid placement when ``check``."""
    if check:
        errs = violations(instance, placement)
        if errs:
            raise ValueError(f"invalid placement for {instance.name!r}: " + "; ".join(errs[:5]))
    off = as_offsets(instance, placement)
    return float(instance.benefits[off >= 0].sum())


def normalised_benefit(instance: Instance, placement) -> float:
    total = instance.total_benefit
    return benefit(instance, placement) / total if total > 0 else 0.0


def to_json_placement(instance: Instance, offsets: Sequence) -> dict:
    """{buffer name: offset or 'slow'} in buffer order, for result files."""
    off = as_offsets(instance, offsets)
    return {instance.buffer_names[i]: (int(off[i]) if off[i] >= 0 else "slow") for i in range(len(off))}
