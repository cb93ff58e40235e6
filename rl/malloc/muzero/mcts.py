"""One move's search on mctx for a batch of positions: the network's observation, the learned-model
(MuZero) and true-game (AlphaZero ablation) recurrent functions, and the Gumbel MuZero root search."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mctx

from models.malloc_muzero import NEG, Latent, MallocMuZeroNet
from rl.malloc import game

SEARCHES = ("muzero", "alphazero", "rollout", "policy")
SLOT_FEATURES = 12
GLOBAL_FEATURES = 10 + game.OCCUPANCY_BINS + 2


# --------------------------------------------------------------------------- observation and network

def observation(inst: game.Padded, state: game.State):
    """(slots [N, 12], glob [28], slot_valid [N]) for ONE padded instance: ``game.buffer_features`` plus
    the root legality of the slot's two moves (on top, under) and its time overlap with the current buffer;
    ``game.observe`` plus the legality of the floor and the ceiling."""
    n = inst.size.shape[-1]
    legal = game.legal_actions(inst, state).astype(jnp.float32)
    cur = jnp.minimum(state.t, n - 1)
    overlap = (inst.start <= inst.end[cur]) & (inst.start[cur] <= inst.end) & inst.valid
    slot_legal = legal[game.FIXED_MOVES:].reshape(2, n).T
    slots = jnp.concatenate([game.buffer_features(inst, state), slot_legal,
                             overlap[:, None].astype(jnp.float32)], axis=-1)
    glob = jnp.concatenate([game.observe(inst, state), legal[game.ZERO:game.FIXED_MOVES]])
    return slots, glob, inst.valid


def _represent(model, params, inst, state) -> Latent:
    slots, glob, valid = jax.vmap(observation)(inst, state)
    return model.apply(params, slots, glob, valid, method=model.represent)


def _predict(model, params, latent):
    return model.apply(params, latent, method=model.predict)


# --------------------------------------------------------------------------- search

def make_muzero_recurrent_fn(model: MallocMuZeroNet):
    """mctx recurrent function over the learned model: (latent, a) -> g -> f. Discount 1 (absorbing
    states are learned); slot padding and moves the legality head calls illegal get NEG logits."""
    def recurrent_fn(params, key, action, latent):
        del key
        nxt, reward = model.apply(params, latent, action, method=model.dynamics)
        pred = _predict(model, params, nxt)
        believed_legal = (pred.legal_logits >= 0.0).at[..., game.SLOW].set(True)
        logits = jnp.where(believed_legal, pred.logits, NEG)
        out = mctx.RecurrentFnOutput(reward=reward, discount=jnp.ones_like(reward), prior_logits=logits,
                                     value=pred.value)
        return out, nxt
    return recurrent_fn


def _true_game_recurrent_fn(model: MallocMuZeroNet, leaf_value):
    """mctx recurrent function over the true game; embedding = (Padded batch, State batch). The prior comes
    from representation + prediction on the true next observation (illegal moves masked), the value from
    ``leaf_value(inst, next state, prediction)``; terminal states have value and discount 0."""
    def recurrent_fn(params, key, action, embedding):
        del key
        inst, state = embedding
        nxt, reward, done = jax.vmap(game.step)(inst, state, action)
        pred = _predict(model, params, _represent(model, params, inst, nxt))
        legal = jax.vmap(game.legal_actions)(inst, nxt)
        out = mctx.RecurrentFnOutput(reward=reward, discount=jnp.where(done, 0.0, 1.0),
                                     prior_logits=jnp.where(legal, pred.logits, NEG),
                                     value=jnp.where(done, 0.0, leaf_value(inst, nxt, pred)))
        return out, (inst, nxt)
    return recurrent_fn


def make_alphazero_recurrent_fn(model: MallocMuZeroNet):
    """The ablation: the true game as recurrent function, the value head's value at the leaves."""
    return _true_game_recurrent_fn(model, lambda inst, state, pred: pred.value)


def rollout_value(inst: game.Padded, state: game.State) -> jax.Array:
    """float32 [B]: the rollout search's leaf value, the return of finishing the episode with XLA's heuristic
    in game moves (``game.heuristic_return(..., game_moves=True)``): a return some game trajectory reaches,
    so the search never chases a value it cannot play. On the training windows it beat the previous leaf
    value, a first-fit rollout in schedule order (``game.first_fit_return`` up to commit c2f8bc8; mean benefit
    0.380 vs 0.365 at 32 simulations, each at its best q_scale): first fit fills memory with whatever comes
    first, the heuristic keeps room for the buffers that deserve it."""
    return jax.vmap(functools.partial(game.heuristic_return, game_moves=True))(inst, state)


def make_rollout_recurrent_fn(model: MallocMuZeroNet):
    """The true game as recurrent function, like :func:`make_alphazero_recurrent_fn`, with the network's prior
    but the leaf value of a heuristic rollout to the end of the episode (:func:`rollout_value`) instead of
    the value head: AlphaGo's fast-rollout evaluation (Silver et al. 2016, mixing weight lambda = 1)."""
    return _true_game_recurrent_fn(model, lambda inst, state, pred: rollout_value(inst, state))


class SearchOut(NamedTuple):
    action: jax.Array        # int32 [B]
    policy: jax.Array        # float32 [B, A]: improved policy (training target)
    value: jax.Array         # float32 [B]: root search value
    legal: jax.Array         # bool [B, A]
    best_return: jax.Array   # float32 [B]: rollout search: the best whole-episode return it saw (else -inf)
    best_state: game.State   # [B]: the node whose heuristic completion reaches it (else the root)


def best_rollout_node(tree: mctx.Tree) -> tuple[jax.Array, game.State]:
    """([B] return, [B] state) of the expanded node of a rollout search's tree whose path from the episode's
    start plus its heuristic rollout (the node's raw value; 0 at terminal nodes) is the best whole-episode
    return the search evaluated: single-player MCTS keeps the best sequence it has seen (Schadd et al.,
    SP-MCTS, 2008), since a rollout here is a game trajectory it can play again. The root counts: its rollout
    is the heuristic's completion (in game moves) of the episode so far."""
    _, states = tree.embeddings
    total = jnp.where(tree.node_visits > 0, states.ret + tree.raw_values, -jnp.inf)
    best = jnp.argmax(total, axis=-1)
    rows = jnp.arange(total.shape[0])
    return total[rows, best], jax.tree.map(lambda x: x[rows, best], states)


def search(model, params, key, inst: game.Padded, state: game.State, kind: str, num_simulations: int,
           max_considered: int = 16, gumbel_scale: float = 1.0, q_scale: float = 1.0) -> SearchOut:
    """One move's search for a batch of positions; illegal moves are masked at the root (``invalid_actions``
    of ``mctx.gumbel_muzero_policy`` and NEG prior logits), so the returned action is always legal.

    Q-values are NOT min-max rescaled (``rescale_values=False``): returns are already normalised benefits in
    [0, 1], and rescaling would blow value-net noise of 1e-3 up to full-scale preferences. The completed Q
    enters the improved policy as σ(q) = (50 + max visits) · ``q_scale`` · q (Danihelka et al., Eq. 8)."""
    if kind not in SEARCHES:
        raise ValueError(f"search kind={kind!r}; allowed: {', '.join(SEARCHES)}")
    legal = jax.vmap(game.legal_actions)(inst, state)
    latent = _represent(model, params, inst, state)
    pred = _predict(model, params, latent)
    logits = jnp.where(legal, pred.logits, NEG)
    no_best = jnp.full(pred.value.shape, -jnp.inf, jnp.float32), state
    if kind == "policy":
        return SearchOut(jnp.argmax(logits, -1).astype(jnp.int32), jax.nn.softmax(logits), pred.value, legal,
                         *no_best)
    root_value = pred.value
    if kind == "muzero":
        recurrent_fn, embedding = make_muzero_recurrent_fn(model), latent
    elif kind == "alphazero":
        recurrent_fn, embedding = make_alphazero_recurrent_fn(model), (inst, state)
    else:
        recurrent_fn, embedding = make_rollout_recurrent_fn(model), (inst, state)
        root_value = rollout_value(inst, state)
    root = mctx.RootFnOutput(prior_logits=logits, value=root_value, embedding=embedding)
    out = mctx.gumbel_muzero_policy(params, key, root, recurrent_fn, num_simulations, invalid_actions=~legal,
                                    max_depth=inst.size.shape[-1], max_num_considered_actions=max_considered,
                                    gumbel_scale=gumbel_scale, qtransform=functools.partial(
                                        mctx.qtransform_completed_by_mix_value, value_scale=q_scale,
                                        rescale_values=False))
    best = best_rollout_node(out.search_tree) if kind == "rollout" else no_best
    return SearchOut(out.action.astype(jnp.int32), out.action_weights, out.search_tree.summary().value, legal,
                     *best)


def check_search_args(num_simulations, samples) -> None:
    """ValueError (named after eval_malloc's flags) unless both are integers >= 1."""
    for name, value in (("simulations", num_simulations), ("samples", samples)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
