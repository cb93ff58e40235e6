"""The mallocGame in pure JAX (jit/vmap-able over a batch of padded instances).

Reference: "Optimizing Memory Mapping Using Deep Reinforcement Learning" (DeepMind 2023), Sec. 3: the
buffers of a program are decided one at a time in schedule order (sorted by start); each move puts the
current buffer at a candidate offset of fast memory or leaves it in slow memory; the return is the
benefit of the buffers placed in fast memory, normalised here by the instance's total benefit (so every
instance's return lies in [0, 1]).

Everything below is written for ONE padded instance; ``jax.vmap`` it over the leading axis of ``pad(...)``
for a batch. With ``N`` the padded buffer count, the action space has ``num_actions(N) = N + 2`` moves:

- ``0``: slow memory (always legal; also the only legal move once the episode is over, as a no-op);
- ``1``: offset 0;
- ``2 + j``: the top (offset + size) of buffer slot ``j``, a candidate only if ``j`` is already in fast
  memory and its live interval overlaps the current one.

A candidate is legal iff the buffer fits below the capacity and overlaps no placed, time-overlapping buffer;
duplicate candidates (same offset as a lower-numbered candidate) are masked so that every legal move is a
distinct placement. An illegal move passed to ``step`` is played as ``slow`` (so MCTS can expand any action
in its tree; the root should be masked with ``legal_actions``).

Note on completeness: "offset 0 or on top of an earlier-placed, time-overlapping buffer" is the issue's
candidate set. It contains every left-bottom (gravity) packing in which each buffer rests on one decided
before it; a packing where an earlier buffer must sit on a later one is not reachable, so the game's best
return can be below the CP-SAT optimum on some instances (tests measure both; see ``tests/test_malloc.py``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rl.malloc.instance import Instance

SLOW = 0
OCCUPANCY_BINS = 16
_MAX_BYTES = 2 ** 30  # int32 arithmetic on offset + size stays exact below this


class Padded(NamedTuple):
    """An instance (or, with a leading axis, a batch) with buffers in schedule order, padded to N slots."""
    size: jax.Array          # int32 [N]
    start: jax.Array         # int32 [N]
    end: jax.Array           # int32 [N]
    benefit: jax.Array       # float32 [N], 0 on padding
    valid: jax.Array         # bool [N]
    order: jax.Array         # int32 [N]: instance buffer index of slot k (-1 on padding)
    capacity: jax.Array      # int32 []
    num: jax.Array           # int32 []: real buffers
    total_benefit: jax.Array  # float32 []
    horizon: jax.Array       # int32 []


class State(NamedTuple):
    offset: jax.Array        # int32 [N]: fast-memory offset of each decided slot, -1 for slow/undecided
    t: jax.Array             # int32 []: slots decided so far (the current buffer is slot t)
    ret: jax.Array           # float32 []: normalised benefit collected so far


def num_actions(max_buffers: int) -> int:
    return max_buffers + 2


def check_fits(inst: Instance) -> None:
    """ValueError naming the instance (its file, if read from one) unless the game's int32 arithmetic holds it."""
    if inst.capacity >= _MAX_BYTES or (inst.num_buffers and inst.sizes.max() >= _MAX_BYTES):
        raise ValueError(f"{inst.where}: capacity={inst.capacity} and every size (largest "
                         f"{int(inst.sizes.max(initial=0))}) must be < 2**30 bytes for the JAX game")


def pad(instances: list[Instance], max_buffers: int | None = None) -> Padded:
    """Stack instances into a batch (leading axis), buffers sorted by (start, end, index), zero-padded."""
    if not instances:
        raise ValueError("pad: need at least one instance")
    n_max = max(inst.num_buffers for inst in instances)
    max_buffers = n_max if max_buffers is None else max_buffers
    if max_buffers < n_max or max_buffers < 1:
        raise ValueError(f"max_buffers={max_buffers} must be >= 1 and >= the largest instance ({n_max} buffers)")
    cols = {k: [] for k in Padded._fields}
    for inst in instances:
        check_fits(inst)
        k = inst.num_buffers
        order = inst.schedule_order()
        fill = lambda x, v, dt: np.concatenate([np.asarray(x)[order], np.full(max_buffers - k, v)]).astype(dt)
        total = inst.total_benefit
        cols["size"].append(fill(inst.sizes, 1, np.int32))
        cols["start"].append(fill(inst.starts, 0, np.int32))
        cols["end"].append(fill(inst.ends, -1, np.int32))  # padding never overlaps anything in time
        cols["benefit"].append(fill(inst.benefits, 0.0, np.float32))
        cols["valid"].append(np.arange(max_buffers) < k)
        cols["order"].append(np.concatenate([order, np.full(max_buffers - k, -1)]).astype(np.int32))
        cols["capacity"].append(np.int32(inst.capacity))
        cols["num"].append(np.int32(k))
        cols["total_benefit"].append(np.float32(total if total > 0 else 1.0))
        cols["horizon"].append(np.int32(max(inst.horizon, 1)))
    return Padded(**{k: jnp.asarray(np.stack(v)) for k, v in cols.items()})


def init(inst: Padded) -> State:
    n = inst.size.shape[-1]
    return State(offset=jnp.full((n,), -1, jnp.int32), t=jnp.zeros((), jnp.int32), ret=jnp.zeros((), jnp.float32))


def done(inst: Padded, state: State) -> jax.Array:
    return state.t >= inst.num


def _current(inst: Padded, state: State) -> jax.Array:
    return jnp.minimum(state.t, inst.size.shape[-1] - 1)


def _time_overlapping_fast(inst: Padded, state: State, cur) -> jax.Array:
    """bool [N]: slots in fast memory whose live interval overlaps the current buffer's."""
    return ((state.offset >= 0) & (inst.start <= inst.end[cur]) & (inst.start[cur] <= inst.end)
            & (jnp.arange(inst.size.shape[-1]) != cur))


def candidate_offsets(inst: Padded, state: State) -> jax.Array:
    """int32 [N + 2]: the offset each action proposes (action 0, slow, shows 0)."""
    tops = jnp.where(state.offset >= 0, state.offset + inst.size, 0)
    return jnp.concatenate([jnp.zeros((2,), jnp.int32), tops.astype(jnp.int32)])


def legal_actions(inst: Padded, state: State) -> jax.Array:
    """bool [N + 2]: which moves are legal for the current buffer (see the module docstring)."""
    cur = _current(inst, state)
    over = _time_overlapping_fast(inst, state, cur)
    offs = candidate_offsets(inst, state)
    is_candidate = jnp.concatenate([jnp.array([False, True]), over])
    size = inst.size[cur]
    fits = offs + size <= inst.capacity
    lo, hi = state.offset, state.offset + inst.size
    clash = (offs[:, None] < hi[None, :]) & (lo[None, :] < offs[:, None] + size) & over[None, :]
    ok = is_candidate & fits & ~clash.any(axis=1)
    a = jnp.arange(offs.shape[0])
    earlier_same = (offs[:, None] == offs[None, :]) & (a[None, :] < a[:, None]) & ok[None, :]
    ok = ok & ~earlier_same.any(axis=1) & ~done(inst, state)
    return ok.at[SLOW].set(True)


def step(inst: Padded, state: State, action) -> tuple[State, jax.Array, jax.Array]:
    """Decide the current buffer. Returns (next state, reward = benefit placed / total benefit, done)."""
    cur = _current(inst, state)
    finished = done(inst, state)
    legal = legal_actions(inst, state)
    place = (action != SLOW) & legal[action] & ~finished
    offset = jnp.where(place, candidate_offsets(inst, state)[action], -1)
    reward = jnp.where(place, inst.benefit[cur] / inst.total_benefit, 0.0).astype(jnp.float32)
    new_offset = jnp.where(finished, state.offset, state.offset.at[cur].set(offset))
    t = jnp.where(finished, state.t, state.t + 1)
    nxt = State(offset=new_offset, t=t, ret=state.ret + reward)
    return nxt, reward, done(inst, nxt)


def occupancy(inst: Padded, state: State, bins: int = OCCUPANCY_BINS) -> jax.Array:
    """float32 [bins]: fraction of each address bin of [0, capacity) used by placed buffers that are live
    at some point of the current buffer's interval (1 = the bin is blocked for some of that interval)."""
    cur = _current(inst, state)
    over = _time_overlapping_fast(inst, state, cur)
    cap = inst.capacity.astype(jnp.float32)
    edges = jnp.arange(bins + 1, dtype=jnp.float32) * cap / bins
    lo = state.offset.astype(jnp.float32)
    hi = lo + inst.size
    cover = jnp.clip(jnp.minimum(hi[:, None], edges[None, 1:]) - jnp.maximum(lo[:, None], edges[None, :-1]), 0, None)
    cover = jnp.where(over[:, None], cover, 0.0).sum(axis=0)
    return jnp.clip(cover / (cap / bins), 0.0, 1.0)


def buffer_features(inst: Padded, state: State) -> jax.Array:
    """float32 [N, 9] per-slot features for attention networks: size/capacity (clipped at 2), start/horizon,
    end/horizon, benefit/total, valid, is current, decided, in fast memory, offset/capacity."""
    n = inst.size.shape[-1]
    cap = inst.capacity.astype(jnp.float32)
    hor = inst.horizon.astype(jnp.float32)
    k = jnp.arange(n)
    fast = state.offset >= 0
    return jnp.stack([
        jnp.minimum(inst.size / cap, 2.0), inst.start / hor, jnp.maximum(inst.end, 0) / hor,
        inst.benefit / inst.total_benefit, inst.valid, (k == state.t) & inst.valid, k < state.t, fast,
        jnp.where(fast, state.offset / cap, -1.0)], axis=-1).astype(jnp.float32)


def observe(inst: Padded, state: State) -> jax.Array:
    """float32 [10 + OCCUPANCY_BINS] observation vector: current buffer (6), remaining buffers (4),
    occupancy of fast memory around the current buffer's live interval (OCCUPANCY_BINS)."""
    cur = _current(inst, state)
    cap = inst.capacity.astype(jnp.float32)
    hor = inst.horizon.astype(jnp.float32)
    size, ben = inst.size[cur].astype(jnp.float32), inst.benefit[cur]
    k = jnp.arange(inst.size.shape[-1])
    remaining = inst.valid & (k > state.t)
    overlaps_cur = remaining & (inst.start <= inst.end[cur])
    current = jnp.stack([
        jnp.minimum(size / cap, 2.0), (inst.end[cur] - inst.start[cur] + 1) / hor, inst.start[cur] / hor,
        ben / inst.total_benefit, ben / inst.total_benefit / jnp.sqrt(jnp.minimum(size / cap, 2.0) + 1e-6),
        (size <= cap).astype(jnp.float32)])
    rest = jnp.stack([
        remaining.sum() / jnp.maximum(inst.num, 1), jnp.where(remaining, inst.benefit, 0).sum() / inst.total_benefit,
        jnp.minimum(jnp.where(overlaps_cur, inst.size, 0).sum() / cap, 8.0) / 8.0, state.ret])
    obs = jnp.concatenate([current, rest, occupancy(inst, state)])
    return jnp.where(done(inst, state), jnp.zeros_like(obs), obs).astype(jnp.float32)


def rollout(inst: Padded, policy: Callable, key: jax.Array) -> tuple[State, jax.Array]:
    """Play a whole episode: ``policy(inst, state, legal, key) -> action``. Returns (final state, rewards [N])."""
    def body(carry, _):
        state, key = carry
        key, sub = jax.random.split(key)
        action = policy(inst, state, legal_actions(inst, state), sub)
        state, reward, _ = step(inst, state, action)
        return (state, key), reward
    (state, _), rewards = jax.lax.scan(body, (init(inst), key), None, length=inst.size.shape[-1])
    return state, rewards


def random_policy(inst, state, legal, key):
    """Uniform over legal moves."""
    return jax.random.categorical(key, jnp.where(legal, 0.0, -jnp.inf))


@jax.jit
def random_rollout(inst: Padded, key: jax.Array) -> tuple[State, jax.Array]:
    return rollout(inst, random_policy, key)


def offsets_in_instance_order(inst: Padded, state: State) -> np.ndarray:
    """int64 [num] offsets (-1 slow) indexed like the original Instance's buffers (one padded instance)."""
    order = np.asarray(inst.order)
    offset = np.asarray(state.offset)
    out = np.full(int(inst.num), -1, np.int64)
    keep = order >= 0
    out[order[keep]] = offset[keep]
    return out
