"""Replay of whole self-play episodes: the recorded ``Episodes``, n-step value targets, the FIFO ``Replay``
with K-step unroll sampling, and a fixed replay of expert demonstrations."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl.malloc import game


class Episodes(NamedTuple):
    """B self-play episodes, [B, N, ...] (step t = the position before move t)."""
    inst: game.Padded
    offset: jax.Array        # int32 [B, N, N]: state.offset before move t
    ret: jax.Array           # float32 [B, N]: state.ret before move t
    action: jax.Array        # int32 [B, N]
    policy: jax.Array        # float32 [B, N, A]
    root_value: jax.Array    # float32 [B, N]
    reward: jax.Array        # float32 [B, N]
    legal: jax.Array         # bool [B, N, A]
    active: jax.Array        # bool [B, N]: t < num (a real move)


def value_targets(reward: jax.Array, root_value: jax.Array, n_step: int) -> jax.Array:
    """z_t = Σ_{i<n} u_{t+i} + ν_{t+n} (γ = 1), [..., N]; u/ν are 0 past the end of the episode."""
    n = reward.shape[-1]
    to_go = jnp.cumsum(reward[..., ::-1], axis=-1)[..., ::-1]                     # R_t = Σ_{i>=t} u_i
    pad = jnp.zeros(reward.shape[:-1] + (n_step,), reward.dtype)
    to_go_n = jnp.concatenate([to_go, pad], -1)[..., n_step:n_step + n]          # R_{t+n}
    boot = jnp.concatenate([root_value, pad], -1)[..., n_step:n_step + n]        # ν_{t+n}
    return to_go - to_go_n + boot


# --------------------------------------------------------------------------- replay

class Replay(NamedTuple):
    """FIFO of whole episodes (leading axis = capacity); ``value_target`` precomputed on insertion."""
    inst: game.Padded
    offset: jax.Array
    ret: jax.Array
    action: jax.Array
    policy: jax.Array
    value_target: jax.Array
    reward: jax.Array
    legal: jax.Array
    active: jax.Array
    ptr: jax.Array           # int32 []
    size: jax.Array          # int32 []


def replay_init(capacity: int, max_buffers: int) -> Replay:
    n, a = max_buffers, game.num_actions(max_buffers)
    z = lambda shape, dt: jnp.zeros((capacity,) + shape, dt)
    inst = game.Padded(size=z((n,), jnp.int32) + 1, start=z((n,), jnp.int32), end=z((n,), jnp.int32) - 1,
                       benefit=z((n,), jnp.float32), valid=z((n,), bool), order=z((n,), jnp.int32) - 1,
                       capacity=z((), jnp.int32) + 1, num=z((), jnp.int32) + 1, total_benefit=z((), jnp.float32) + 1,
                       horizon=z((), jnp.int32) + 1, unit=z((), jnp.int32) + 1)
    return Replay(inst, z((n, n), jnp.int32) - 1, z((n,), jnp.float32), z((n,), jnp.int32), z((n, a), jnp.float32),
                  z((n,), jnp.float32), z((n,), jnp.float32), z((n, a), bool), z((n,), bool),
                  jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def replay_add(replay: Replay, ep: Episodes, n_step: int) -> Replay:
    capacity = replay.action.shape[0]
    b = ep.action.shape[0]
    idx = (replay.ptr + jnp.arange(b)) % capacity
    new = dict(inst=ep.inst, offset=ep.offset, ret=ep.ret, action=ep.action, policy=ep.policy,
               value_target=value_targets(ep.reward, ep.root_value, n_step), reward=ep.reward, legal=ep.legal,
               active=ep.active)
    upd = {k: jax.tree.map(lambda old, x: old.at[idx].set(x), getattr(replay, k), v) for k, v in new.items()}
    return Replay(**upd, ptr=(replay.ptr + b) % capacity, size=jnp.minimum(replay.size + b, capacity))


class Batch(NamedTuple):
    """``train_batch`` positions with K-step unroll targets."""
    inst: game.Padded
    state: game.State        # the position at t
    actions: jax.Array       # int32 [B, K]
    policy: jax.Array        # float32 [B, K + 1, A]
    value: jax.Array         # float32 [B, K + 1]
    reward: jax.Array        # float32 [B, K]: u_{t+k+1} for the move a_{t+k}
    legal: jax.Array         # bool [B, K + 1, A]
    mask: jax.Array          # bool [B, K + 1]: position t+k is a real (pre-terminal) position


def replay_sample(replay: Replay, key, batch: int, unroll: int) -> Batch:
    n = replay.action.shape[1]
    k_ep, k_t = jax.random.split(key)
    ep = jax.random.randint(k_ep, (batch,), 0, jnp.maximum(replay.size, 1))
    num = replay.inst.num[ep]
    t = jax.random.randint(k_t, (batch,), 0, jnp.maximum(num, 1))
    steps = t[:, None] + jnp.arange(unroll + 1)[None, :]            # [B, K+1]
    mask = steps < num[:, None]
    si = jnp.minimum(steps, n - 1)
    take = lambda x: x[ep[:, None], si]
    inst = jax.tree.map(lambda x: x[ep], replay.inst)
    state = game.State(offset=replay.offset[ep, t], t=t.astype(jnp.int32), ret=replay.ret[ep, t])
    legal_end = jnp.zeros(game.num_actions(n), bool).at[game.SLOW].set(True)
    return Batch(inst=inst, state=state,
                 actions=jnp.where(mask, take(replay.action), game.SLOW)[:, :unroll],
                 policy=take(replay.policy),
                 value=jnp.where(mask, take(replay.value_target), 0.0),
                 reward=jnp.where(mask, take(replay.reward), 0.0)[:, :unroll],
                 legal=jnp.where(mask[..., None], take(replay.legal), legal_end),
                 mask=mask)


def demo_replay(episodes: Episodes) -> Replay:
    """A full Replay holding ``episodes``, value targets = the Monte-Carlo returns of the episodes."""
    b, n = episodes.action.shape
    return replay_add(replay_init(b, n), episodes, n_step=n)
