"""Greedy baselines for the mallocGame: XLA-style memory-space assignment, first-fit decreasing, random.

XLA's default memory-space assignment (MSA; see the mallocMuZero paper, Sec. 2 and XLA's
``memory_space_assignment`` buffer-interval comparator) visits buffers by decreasing
``benefit / sqrt(size)`` and puts each at the best-fitting free chunk of fast memory over its whole live
interval (the smallest free gap that fits, lowest address among equals), else leaves it in slow memory.
All functions return int64 offsets [n] with -1 for slow memory.
"""
from __future__ import annotations

import numpy as np

from rl.malloc.instance import Instance


def free_gaps(instance: Instance, offsets: np.ndarray, i: int) -> list[tuple[int, int]]:
    """Free address ranges [lo, hi) of fast memory over buffer i's live interval, given placed ``offsets``."""
    a, b, s = instance.starts, instance.ends, instance.sizes
    placed = np.flatnonzero((offsets >= 0) & (a <= b[i]) & (a[i] <= b))
    placed = placed[placed != i]
    busy = sorted((int(offsets[j]), int(offsets[j] + s[j])) for j in placed)
    gaps, cursor = [], 0
    for lo, hi in busy:
        if lo > cursor:
            gaps.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < instance.capacity:
        gaps.append((cursor, instance.capacity))
    return gaps


def place_in_order(instance: Instance, order, fit: str = "best", placed: np.ndarray | None = None) -> np.ndarray:
    """Place buffers in ``order`` at the best-fitting ('best') or lowest ('first') free gap, else slow;
    ``placed`` (offsets, -1 slow) are decided already and stay where they are."""
    if fit not in ("best", "first"):
        raise ValueError(f"fit={fit!r}; allowed: 'best', 'first'")
    offsets = np.full(instance.num_buffers, -1, np.int64) if placed is None else np.array(placed, np.int64)
    for i in order:
        size = int(instance.sizes[i])
        fitting = [(hi - lo, lo) for lo, hi in free_gaps(instance, offsets, i) if hi - lo >= size]
        if fitting:
            offsets[i] = min(fitting)[1] if fit == "best" else min(lo for _, lo in fitting)
    return offsets


def xla_heuristic(instance: Instance, placed: np.ndarray | None = None,
                  decided: np.ndarray | None = None) -> np.ndarray:
    """XLA MSA order (benefit / sqrt(size), descending; zero-benefit buffers skipped), best fit. To complete
    a partial placement, ``decided`` (bool [n]) marks the buffers already decided, at ``placed`` (offsets,
    -1 slow); only the others are visited."""
    key = instance.benefits / np.sqrt(instance.sizes)
    todo = np.ones(instance.num_buffers, bool) if decided is None else ~np.asarray(decided, bool)
    order = [i for i in np.lexsort((np.arange(instance.num_buffers), -key)) if instance.benefits[i] > 0 and todo[i]]
    return place_in_order(instance, order, fit="best", placed=placed)


def first_fit_decreasing(instance: Instance) -> np.ndarray:
    """First-fit decreasing size (largest buffers first, lowest free offset; zero-benefit skipped)."""
    order = [i for i in np.lexsort((np.arange(instance.num_buffers), -instance.sizes)) if instance.benefits[i] > 0]
    return place_in_order(instance, order, fit="first")


def random_legal(instance: Instance, seed: int = 0) -> np.ndarray:
    """Uniformly random legal mallocGame moves (uses the JAX game itself; see ``game.random_rollout``)."""
    from rl.malloc import game  # local import: keeps the NumPy baselines importable without tracing JAX
    import jax
    batch = game.pad([instance], max_buffers=32 * max(1, -(-instance.num_buffers // 32)))  # few compiled shapes
    inst0 = jax.tree.map(lambda x: x[0], batch)
    state, _ = game.random_rollout(inst0, jax.random.key(seed))
    return game.offsets_in_instance_order(inst0, state)
