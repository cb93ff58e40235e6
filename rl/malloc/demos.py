r"""Exact demonstrations for mallocMuZero: CP-SAT solutions of the mallocGame replayed as game moves.

Not in the mallocMuZero paper, which trains from self-play alone with far more compute than a CI machine
has. Here, optionally (``scripts/train_malloc.py --demos``), the network is first trained on expert
episodes and self-play then mixes them into its batches, as AlphaGo's supervised start and "MuZero
Unplugged"-style learning from fixed data do. The expert is ``cpsat.solve(..., game_moves=True)``: the best
placement reachable with the game's own moves (offset 0 or on top of an earlier-visited buffer), so every
demonstration replays exactly, move by move, and its Monte-Carlo return is the game optimum (or, where the
time limit stops CP-SAT, the best it found).

A demonstration episode has the fields of a self-play ``muzero.Episodes``: the policy target is the expert
move (one-hot), the value target the expert's return-to-go (``root_value`` 0 with an n-step horizon of the
whole episode), the legal masks and rewards those of the true game.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rl.malloc import cpsat, game
from rl.malloc.instance import Instance


def expert_offsets(instances: list[Instance], time_limit_s: float = 1.0, workers: int = 1) -> list[np.ndarray]:
    """CP-SAT under the game's move set, one solution per instance (int64 offsets, -1 slow, instance order)."""
    return [cpsat.solve(inst, time_limit_s, workers, game_moves=True).offsets for inst in instances]


def slot_offsets(batch: game.Padded, offsets: list[np.ndarray]) -> jax.Array:
    """int32 [B, N]: each padded slot's target offset in game address units (-1 slow or padding), from
    instance-order offsets in bytes."""
    order = np.asarray(batch.order)
    unit = np.asarray(batch.unit)
    out = np.full(order.shape, -1, np.int32)
    for b, off in enumerate(offsets):
        keep = order[b] >= 0
        target = np.asarray(off)[order[b, keep]]
        out[b, keep] = np.where(target >= 0, target // unit[b], -1)
    return jnp.asarray(out)


def move_for_offset(inst: game.Padded, state: game.State, target) -> jax.Array:
    """The legal move that puts the current buffer at ``target`` (the lowest-numbered one, as the game's
    duplicate masking keeps), or slow when ``target`` is -1 or no legal move reaches it."""
    legal = game.legal_actions(inst, state)
    hits = legal & (game.candidate_offsets(inst, state) == target) & (jnp.arange(legal.shape[0]) != game.SLOW)
    return jnp.where((target >= 0) & hits.any(), jnp.argmax(hits), game.SLOW).astype(jnp.int32)


@jax.jit
def replay_offsets(batch: game.Padded, targets: jax.Array):
    """Plays each instance of ``batch`` by moving to its slot targets [B, N]. Returns (final states, and the
    per-move records (offset, ret, action, reward, legal, active), each [B, N, ...])."""
    def body(state, t):
        active = ~jax.vmap(game.done)(batch, state)
        cur = jnp.minimum(state.t, targets.shape[1] - 1)
        target = jnp.take_along_axis(targets, cur[:, None], axis=1)[:, 0]
        action = jax.vmap(move_for_offset)(batch, state, target)
        legal = jax.vmap(game.legal_actions)(batch, state)
        nxt, reward, _ = jax.vmap(game.step)(batch, state, action)
        return nxt, (state.offset, state.ret, action, reward, legal, active)

    final, recs = jax.lax.scan(body, jax.vmap(game.init)(batch), jnp.arange(targets.shape[1]))
    return final, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), recs)


def demonstration_episodes(instances: list[Instance], max_buffers: int, time_limit_s: float = 1.0,
                           workers: int = 1):
    """(``muzero.Episodes`` of the expert on ``instances`` padded to ``max_buffers``, expert returns [B]).

    Raises if a replay does not reproduce its CP-SAT placement (the game and the CP-SAT move model would
    disagree)."""
    from rl.malloc import muzero  # local import: muzero imports Flax and mctx

    offsets = expert_offsets(instances, time_limit_s, workers)
    batch = game.pad(instances, max_buffers)
    final, (offset, ret, action, reward, legal, active) = replay_offsets(batch, slot_offsets(batch, offsets))
    for b, inst in enumerate(instances):
        got = game.offsets_in_instance_order(jax.tree.map(lambda x: x[b], batch), jax.tree.map(lambda x: x[b], final))
        if not np.array_equal(got, offsets[b]):
            raise AssertionError(f"instance {inst.name!r}: the CP-SAT game-move solution does not replay in the "
                                 f"game (wanted {offsets[b].tolist()}, got {got.tolist()})")
    policy = jax.nn.one_hot(action, game.num_actions(max_buffers), dtype=jnp.float32)
    episodes = muzero.Episodes(inst=batch, offset=offset, ret=ret, action=action, policy=policy,
                               root_value=jnp.zeros_like(reward), reward=reward, legal=legal, active=active)
    return episodes, final.ret
