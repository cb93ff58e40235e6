"""The mallocGame in pure JAX (jit/vmap-able over a batch of padded instances).

Reference: "Optimizing Memory Mapping Using Deep Reinforcement Learning" (DeepMind 2023), Sec. 3: the
buffers of a program are decided one at a time in schedule order (sorted by start); each move puts the
current buffer at a candidate offset of fast memory or leaves it in slow memory; the return is the
benefit of the buffers placed in fast memory, normalised here by the instance's total benefit (so every
instance's return lies in [0, 1]).

Everything below is written for ONE padded instance; ``jax.vmap`` it over the leading axis of ``pad(...)``
for a batch. With ``N`` the padded buffer count, the action space has ``num_actions(N) = 2 N + 3`` moves:

- ``0`` (``SLOW``): slow memory (always legal; also the only legal move once the episode is over, as a no-op);
- ``1`` (``ZERO``): offset 0, the floor of fast memory;
- ``2`` (``CEILING``): offset ``capacity - size``, the buffer ends at the top of fast memory;
- ``3 + j`` (``on_top(j)``): the top (offset + size) of buffer slot ``j``;
- ``3 + N + j`` (``under(j, N)``): ending exactly at the bottom of slot ``j`` (offset_j - size);

the slot moves are candidates only if ``j`` is already in fast memory and its live interval overlaps the
current one. So the candidates are both ends of every free gap of fast memory over the current buffer's
live interval: the floor and ceiling of the address space and the faces of the placed buffers that are
live with it. A candidate is legal iff the buffer lies inside [0, capacity) and overlaps no placed,
time-overlapping buffer; duplicate candidates (same offset as a lower-numbered legal candidate) are
masked so that every legal move is a distinct placement. An illegal move passed to ``step`` is played as
``slow`` (so MCTS can expand any action in its tree; the root should be masked with ``legal_actions``).

Completeness (what the move set can and cannot reach). Push every buffer of a feasible packing down until
it rests on the floor or on a time-overlapping buffer: the packing stays feasible (gravity compaction),
and each buffer's offset is the floor or the top of a buffer below it. When that supporting buffer was
decided EARLIER (it starts no later), the offset is an ``on_top`` or ``ZERO`` move; the mirror image
(pushing up) gives ``under`` and ``CEILING``. Every packing in which each buffer touches, from above or
below, the floor, the ceiling or an earlier-decided live buffer is therefore reachable; in particular
every packing that gravity compaction in either direction turns into one whose supports precede their
loads. The previous move set (floor and tops only) kept the game's optimum at or above XLA's heuristic on
87 % of the held-out windows; with this one it equals the unrestricted optimum on all 23
(``results/malloc/malloc_eval.json``, solvers cpsat_game and cpsat).

It is NOT complete, and no move set of faces of earlier-decided buffers can be: a buffer may have to
float strictly inside a free gap, leaving room beneath it for buffers that start later (they are not
placed yet, so no face marks that height). ``tests/test_malloc.py::test_no_face_move_set_is_complete``
keeps a 9-buffer instance where the optimum needs exactly that (CP-SAT 85, this game 84): its first
buffer must sit at offset 1 so that a later 1-byte buffer fits under it. On random small instances such
cases are rare: the game's optimum equals the unrestricted CP-SAT optimum on 4,999 of 5,000 random
contended instances (``scripts/check_malloc_moves.py``, ``results/malloc/malloc_moves.json``) and on all 500 of the
test's. A complete game would have to fix offsets lazily (choose each buffer's
place in the vertical order of the live buffers and compute offsets as longest paths at the end) or
enumerate offsets on a grid, at O(N^2) state or O(capacity) moves per step.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rl.malloc.instance import Instance

SLOW, ZERO, CEILING = 0, 1, 2
FIXED_MOVES = 3  # slow, floor, ceiling; then N on-top moves, then N under moves
OCCUPANCY_BINS = 16
_MAX_UNITS = 2 ** 30  # int32 arithmetic on offset + size (in address units) stays exact below this


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
    unit: jax.Array          # int32 []: bytes per game address unit (sizes, capacity, offsets are in units)


class State(NamedTuple):
    offset: jax.Array        # int32 [N]: fast-memory offset of each decided slot, -1 for slow/undecided
    t: jax.Array             # int32 []: slots decided so far (the current buffer is slot t)
    ret: jax.Array           # float32 []: normalised benefit collected so far


def num_actions(max_buffers: int) -> int:
    return 2 * max_buffers + FIXED_MOVES


def on_top(j, max_buffers: int):
    """The move that puts the current buffer on top of slot ``j``."""
    del max_buffers  # (the on-top block starts right after the fixed moves, whatever N)
    return FIXED_MOVES + j


def existing_actions(valid: jax.Array) -> jax.Array:
    """bool [..., 2 N + 3]: the moves that exist (the fixed ones and both moves of every real slot), from
    ``Padded.valid`` [..., N]."""
    fixed = jnp.ones(valid.shape[:-1] + (FIXED_MOVES,), bool)
    return jnp.concatenate([fixed, valid, valid], axis=-1)


def under(j, max_buffers: int):
    """The move that ends the current buffer exactly at the bottom of slot ``j``."""
    return FIXED_MOVES + max_buffers + j


def address_unit(inst: Instance) -> int:
    """The largest number of bytes dividing every size and the capacity: the game counts addresses in these
    units, which loses no placement (every face and the ceiling stay multiples of it) and keeps programs
    whose capacity exceeds 2^30 bytes (the GPT-2-small step: sizes are multiples of 4 bytes) in int32."""
    return int(np.gcd.reduce(np.append(inst.sizes, inst.capacity).astype(np.int64)))


def check_fits(inst: Instance) -> None:
    """ValueError naming the instance (its file, if read from one) unless the game's int32 arithmetic holds it
    (the capacity and every size in address units, :func:`address_unit`, below 2^30)."""
    unit = address_unit(inst) if inst.num_buffers else 1
    if inst.capacity // unit >= _MAX_UNITS or (inst.num_buffers and inst.sizes.max() // unit >= _MAX_UNITS):
        raise ValueError(f"{inst.where}: capacity={inst.capacity} and every size (largest "
                         f"{int(inst.sizes.max(initial=0))}) must be < 2**30 units of {unit} bytes (their "
                         f"greatest common divisor) for the JAX game")


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
        unit = address_unit(inst) if k else 1
        order = inst.schedule_order()
        fill = lambda x, v, dt: np.concatenate([np.asarray(x)[order], np.full(max_buffers - k, v)]).astype(dt)
        total = inst.total_benefit
        cols["size"].append(fill(inst.sizes // unit, 1, np.int32))
        cols["start"].append(fill(inst.starts, 0, np.int32))
        cols["end"].append(fill(inst.ends, -1, np.int32))  # padding never overlaps anything in time
        cols["benefit"].append(fill(inst.benefits, 0.0, np.float32))
        cols["valid"].append(np.arange(max_buffers) < k)
        cols["order"].append(np.concatenate([order, np.full(max_buffers - k, -1)]).astype(np.int32))
        cols["capacity"].append(np.int32(inst.capacity // unit))
        cols["unit"].append(np.int32(unit))
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


def _time_overlapping_fast(inst: Padded, offset: jax.Array, cur) -> jax.Array:
    """bool [N]: slots in fast memory (``offset`` >= 0) whose live interval overlaps slot ``cur``'s."""
    return ((offset >= 0) & (inst.start <= inst.end[cur]) & (inst.start[cur] <= inst.end)
            & (jnp.arange(inst.size.shape[-1]) != cur))


def _clashes(inst: Padded, offset: jax.Array, over: jax.Array, cand: jax.Array, size) -> jax.Array:
    """bool [C]: whether a buffer of ``size`` at each candidate offset overlaps, in addresses, a slot of
    ``over`` (placed at ``offset``)."""
    lo, hi = offset, offset + inst.size
    return ((cand[:, None] < hi[None, :]) & (lo[None, :] < cand[:, None] + size) & over[None, :]).any(axis=1)


def candidate_offsets(inst: Padded, state: State) -> jax.Array:
    """int32 [2 N + 3]: the offset each action proposes (action 0, slow, shows 0; may be negative or past
    the capacity, then the move is illegal)."""
    size = inst.size[_current(inst, state)]
    placed = state.offset >= 0
    tops = jnp.where(placed, state.offset + inst.size, 0)
    unders = jnp.where(placed, state.offset - size, -1)
    fixed = jnp.stack([jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), inst.capacity - size])
    return jnp.concatenate([fixed, tops, unders]).astype(jnp.int32)


def legal_actions(inst: Padded, state: State) -> jax.Array:
    """bool [2 N + 3]: which moves are legal for the current buffer (see the module docstring)."""
    cur = _current(inst, state)
    over = _time_overlapping_fast(inst, state.offset, cur)
    offs = candidate_offsets(inst, state)
    is_candidate = jnp.concatenate([jnp.array([False, True, True]), over, over])
    size = inst.size[cur]
    fits = (offs >= 0) & (offs + size <= inst.capacity)
    if inst.size.shape[-1] >= SORTED_GAPS_FROM:  # static: whole programs
        clash = _free_gaps_sorted(inst, state.offset, over, offs, size)[0]
    else:
        clash = _clashes(inst, state.offset, over, offs, size)
    ok = is_candidate & fits & ~clash
    ok = _first_of_each_offset(offs, ok) & ~done(inst, state)
    return ok.at[SLOW].set(True)


def _first_of_each_offset(offs: jax.Array, ok: jax.Array) -> jax.Array:
    """bool [C]: ``ok`` where no lower-numbered ``ok`` candidate proposes the same offset (so that every legal
    move is a distinct placement). All pairs, O(C^2), on windows; from ``SORTED_GAPS_FROM`` slots a stable
    sort by offset, O(C log C): the first of each run of equal offsets is the lowest-numbered one."""
    c = offs.shape[0]
    if c < num_actions(SORTED_GAPS_FROM):
        a = jnp.arange(c)
        earlier_same = (offs[:, None] == offs[None, :]) & (a[None, :] < a[:, None]) & ok[None, :]
        return ok & ~earlier_same.any(axis=1)
    key = jnp.where(ok, offs, jnp.iinfo(jnp.int32).max)
    by_offset = jnp.argsort(key, stable=True)
    ordered = key[by_offset]
    first = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
    return ok & jnp.zeros((c,), bool).at[by_offset].set(first)


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
    over = _time_overlapping_fast(inst, state.offset, cur)
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


SORTED_GAPS_FROM = 128  # padded N from which the sorted gap search beats the all-pairs one (CPU, measured)
_BIG = np.iinfo(np.int32).max


def _free_gaps_dense(inst: Padded, offset, live, cand, size):
    """(clash [C], gap_lo [C], gap_hi [C]) of a buffer of ``size`` at each candidate offset against the slots
    of ``live`` (placed at ``offset``): whether it overlaps one in addresses, and, where it does not, the
    free gap around it (the highest top at or below it, else 0; the lowest bottom at or above its end, else
    the capacity). All pairs: O(C N)."""
    lo, hi = offset, offset + inst.size
    gap_lo = jnp.where(live[None] & (hi[None] <= cand[:, None]), hi[None], 0).max(axis=1)
    gap_hi = jnp.where(live[None] & (lo[None] >= cand[:, None] + size), lo[None], inst.capacity).min(axis=1)
    return _clashes(inst, offset, live, cand, size), gap_lo, gap_hi


class AddressOrder(NamedTuple):
    """The placed slots sorted by bottom address: the index of the sorted free-gap search, kept up to date
    across a heuristic completion by insertion (O(N)) instead of a sort per placed buffer."""
    bottom: jax.Array   # int32 [N] ascending; entries past the placed slots hold _BIG
    slot: jax.Array     # int32 [N]: the slot at each rank (meaningless where bottom is _BIG)


def address_order(offset: jax.Array) -> AddressOrder:
    """The :class:`AddressOrder` of the slots placed at ``offset`` (>= 0): one sort."""
    lo = jnp.where(offset >= 0, offset, _BIG)
    by_bottom = jnp.argsort(lo)
    return AddressOrder(lo[by_bottom], by_bottom.astype(jnp.int32))


def _insert(order: AddressOrder, slot, bottom) -> AddressOrder:
    """``order`` with the unplaced ``slot`` placed at ``bottom``: every rank from its place on moves up one
    and the last entry, a _BIG one (some slot is still unplaced), drops out."""
    rank = jnp.searchsorted(order.bottom, bottom, side="right")
    k = jnp.arange(order.bottom.shape[0])
    shift = lambda x, v: jnp.where(k < rank, x, jnp.where(k == rank, v, jnp.roll(x, 1)))
    return AddressOrder(shift(order.bottom, bottom), shift(order.slot, slot))


def _free_gaps_ordered(order: AddressOrder, top: jax.Array, live, cand, size, capacity):
    """:func:`_free_gaps_dense` from an :class:`AddressOrder` (``top`` [N]: each slot's offset + size) in
    O(N + C log N). Live slots may overlap each other in addresses (when their times do not meet), so:
    the slots starting below a candidate's end are a prefix of the order, and the candidate clashes iff the
    highest live top in that prefix (a running maximum) is above it; where it does not clash, that maximum
    is the gap's floor, and the lowest live bottom after the prefix (a running minimum from the end) its
    ceiling."""
    n = order.bottom.shape[0]
    in_use = live[order.slot] & (order.bottom < _BIG)
    top_so_far = jax.lax.cummax(jnp.where(in_use, top[order.slot], -_BIG))
    low_from = jax.lax.cummin(jnp.where(in_use, order.bottom, _BIG), reverse=True)
    below_end = jnp.searchsorted(order.bottom, cand + size, side="left")   # slots with bottom < cand + size
    floor = jnp.where(below_end > 0, top_so_far[jnp.maximum(below_end - 1, 0)], -_BIG)  # -_BIG: no live slot
    gap_hi = jnp.where(below_end < n, low_from[jnp.minimum(below_end, n - 1)], _BIG)
    return floor > cand, jnp.maximum(floor, 0), jnp.minimum(gap_hi, capacity)


def _best_fit_ordered(order: AddressOrder, top: jax.Array, live, face, size, capacity, game_moves: bool):
    """(placeable, offset) of XLA's best fit from an :class:`AddressOrder` in O(N), without a search per
    candidate: the free gaps over the live slots are, in address order, [highest live top below, bottom) in
    front of each live slot (where positive) and [highest live top, capacity) at the end; every candidate that
    fits lies at an end of one (a face inside the busy range clashes), so best fit is the lowest candidate end
    of the smallest gap that holds ``size``. ``game_moves``: a gap's floor is a move if it is 0 or the top of
    a ``face`` slot (the highest live top below is a face's), its ceiling if it is the capacity or the bottom
    of a face slot; otherwise both ends are. The same offset as the candidates of :func:`heuristic_completion`
    searched one by one (``_free_gaps_ordered`` / ``_free_gaps_dense``)."""
    n = order.bottom.shape[0]
    real = order.bottom < _BIG
    in_use, is_face = live[order.slot] & real, face[order.slot] & real
    tops = top[order.slot]
    shift = lambda x, fill: jnp.concatenate([jnp.full((1,), fill, x.dtype), x[:-1]])
    below = shift(jax.lax.cummax(jnp.where(in_use, tops, -_BIG)), -_BIG)           # highest live top before p
    face_below = shift(jax.lax.cummax(jnp.where(is_face, tops, -_BIG)), -_BIG)
    face_from = jax.lax.cummin(jnp.where(is_face, order.bottom, _BIG), reverse=True)  # lowest face bottom from p
    floors = jnp.append(jnp.maximum(below, 0), jnp.maximum(jnp.max(jnp.where(in_use, tops, -_BIG)), 0))
    ceilings = jnp.append(jnp.where(in_use, order.bottom, 0), capacity)           # the last gap: to the capacity
    length = jnp.where(jnp.append(in_use, True), ceilings - floors, -1)          # (no gap in front of a free rank)
    if game_moves:
        all_below = jnp.append(below, jnp.max(jnp.where(in_use, tops, -_BIG)))
        all_face_below = jnp.append(face_below, jnp.max(jnp.where(is_face, tops, -_BIG)))
        floor_ok = (all_below < 0) | (all_face_below == all_below)
        ceiling_ok = jnp.append(face_from == order.bottom, True)
    else:
        floor_ok = ceiling_ok = jnp.ones((n + 1,), bool)
    holds = length >= size
    fits = jnp.concatenate([holds & floor_ok, holds & ceiling_ok])
    cand = jnp.concatenate([floors, ceilings - size])
    gap = jnp.where(fits, jnp.concatenate([length, length]), _BIG)
    best = jnp.where(fits & (gap == gap.min()), cand, _BIG).min()
    return fits.any(), best


def _free_gaps_sorted(inst: Padded, offset, live, cand, size):
    """:func:`_free_gaps_dense` in O((C + N) log N), for whole programs (:func:`_free_gaps_ordered` on a
    fresh sort). (On windows, N = 32, the dense form is 4x faster on CPU; at 937 buffers this is 15x.)"""
    return _free_gaps_ordered(address_order(offset), offset + inst.size, live, cand, size, inst.capacity)


def heuristic_completion(inst: Padded, state: State, game_moves: bool = False, window: int = 0) -> jax.Array:
    """int32 [N]: ``state.offset`` with the undecided buffers placed by XLA's memory-space-assignment rule
    (``baselines.xla_heuristic``): those of positive benefit by decreasing benefit / sqrt(size) (ties:
    instance index), each at the best fit over its live interval (the candidate in the smallest free gap,
    lowest address first) given the decided buffers and those placed before it, else -1 (slow).

    ``game_moves=False``: the candidates are both ends of every free gap, as in XLA; the offsets need not be
    game moves (a gap's floor may be the top of a buffer that starts later). ``game_moves=True``: only the
    game's own moves are candidates (the floor, the ceiling and the faces of placed live buffers EARLIER in
    schedule order), so every buffer's offset is a legal move when its turn comes and the completion is a
    game trajectory: its return is reachable from ``state``.

    ``window`` (static; 0: all): complete only the next ``window`` buffers in schedule order (slots
    ``t .. t + window - 1``), the later ones left undecided (-1): a rolling-horizon rollout that costs
    ``window`` placements instead of one per remaining buffer. It is still a game trajectory's prefix (its
    return is reachable), checked against every placed buffer; it only stops looking ahead.

    From ``SORTED_GAPS_FROM`` slots the free gaps come from an :class:`AddressOrder` kept by insertion (one
    sort per completion, O(N) per buffer: :func:`_best_fit_ordered`), and the loop runs over the buffers
    still to place only (a completion late in the episode costs little); below, from all pairs (O(N^2) per
    buffer, faster there), over every slot."""
    n = inst.size.shape[-1]
    k = jnp.arange(n)
    todo = inst.valid & (k >= state.t) & (inst.benefit > 0)
    if window:
        todo = todo & (k < state.t + window)
    priority = inst.benefit / jnp.sqrt(inst.size.astype(jnp.float32))
    visit = jnp.lexsort((inst.order, -jnp.where(todo, priority, -1.0)))  # decided / zero-benefit last (skipped)
    visit = visit[:min(window, n)] if window else visit                   # the todo ones come first
    sorted_gaps = n >= SORTED_GAPS_FROM

    def place(carry, i):
        offset, order = carry
        size = inst.size[i]
        live = _time_overlapping_fast(inst, offset, i)
        face = live & (k < i) if game_moves else live
        lo, hi = offset, offset + inst.size
        cand = jnp.concatenate([jnp.stack([jnp.zeros((), jnp.int32), inst.capacity - size]),
                                jnp.where(face, hi, -1), jnp.where(face, lo - size, -1)])
        if sorted_gaps:
            placeable, best = _best_fit_ordered(order, hi, live, face, size, inst.capacity, game_moves)
        else:
            clash, gap_lo, gap_hi = _free_gaps_dense(inst, offset, live, cand, size)
            fits = (cand >= 0) & (cand + size <= inst.capacity) & ~clash
            gap = jnp.where(fits, gap_hi - gap_lo, _BIG)
            best = jnp.where(fits & (gap == gap.min()), cand, _BIG).min()
            placeable = fits.any()
        put = todo[i] & placeable
        if sorted_gaps:
            order = jax.tree.map(lambda new, old: jnp.where(put, new, old), _insert(order, i, best), order)
        return (offset.at[i].set(jnp.where(put, best, offset[i])), order), None

    if sorted_gaps:  # only the todo buffers (they come first in ``visit``): the rest would be skipped anyway
        carry = (state.offset, address_order(state.offset))
        offset, _ = jax.lax.fori_loop(0, todo.sum(), lambda j, c: place(c, visit[j])[0], carry)
        return offset
    (offset, _), _ = jax.lax.scan(place, (state.offset, None), visit)
    return offset


def heuristic_return(inst: Padded, state: State, game_moves: bool = False, window: int = 0) -> jax.Array:
    """float32 []: the return-to-go of :func:`heuristic_completion`, a leaf value of the ``rollout`` search
    (rl/malloc/muzero/mcts.py) that sees what first fit in schedule order cannot: which LATER buffers
    deserve the room. With ``game_moves=False`` it may promise a return no game trajectory reaches; with a
    ``window``, it is the return of the next ``window`` buffers only."""
    return _gain(inst, state, heuristic_completion(inst, state, game_moves, window))


def _gain(inst: Padded, state: State, offset: jax.Array) -> jax.Array:
    """float32 []: the normalised benefit that ``offset`` places beyond what ``state`` already has."""
    added = (offset >= 0) & (state.offset < 0)
    return (jnp.where(added, inst.benefit, 0.0).sum() / inst.total_benefit).astype(jnp.float32)


def heuristic_finish(inst: Padded, state: State) -> State:
    """The terminal state that finishing ``state`` with XLA's heuristic in game moves reaches (the trajectory
    behind :func:`heuristic_return` with ``game_moves=True``)."""
    offset = heuristic_completion(inst, state, game_moves=True)
    return State(offset=offset, t=jnp.maximum(state.t, inst.num), ret=state.ret + _gain(inst, state, offset))


def random_policy(inst, state, legal, key):
    """Uniform over legal moves."""
    return jax.random.categorical(key, jnp.where(legal, 0.0, -jnp.inf))


@jax.jit
def random_rollout(inst: Padded, key: jax.Array) -> tuple[State, jax.Array]:
    return rollout(inst, random_policy, key)


def offsets_in_instance_order(inst: Padded, state: State) -> np.ndarray:
    """int64 [num] offsets in bytes (-1 slow) indexed like the original Instance's buffers (one padded
    instance)."""
    order = np.asarray(inst.order)
    offset = np.asarray(state.offset).astype(np.int64)
    offset = np.where(offset >= 0, offset * int(inst.unit), -1)
    out = np.full(int(inst.num), -1, np.int64)
    keep = order >= 0
    out[order[keep]] = offset[keep]
    return out
