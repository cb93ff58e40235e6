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


class View(NamedTuple):
    """A window of one padded instance around its current buffer (:func:`local_view`)."""
    inst: game.Padded     # W slots, times shifted to start at 0, benefits normalised by the view's total
    state: game.State     # the same decisions; t = the current buffer's place in the view
    slots: jax.Array      # int32 [W]: the slot of ``inst`` behind each view slot (-1: padding)


def local_view(inst: game.Padded, state: game.State, width: int) -> View:
    """The ``width`` slots of ONE padded instance that matter for the current move, as a window instance of its
    own: what the network sees on a whole program (it was trained on windows of 32 buffers; attention over
    all N slots costs O(N^2) per node, 0.19 s CPU at the GPT-2-small step's 1,792).

    Slots by rank: the current buffer; a quarter of the width for the next buffers in schedule order; the
    buffers in fast memory that are live with the current one (the targets of its on-top / under moves),
    latest first; more upcoming buffers; then the latest decided ones in slow memory. The chosen slots keep
    their schedule order (so the decided ones come first, then the current one), start times are shifted
    to start at 0 and benefits are normalised by the view's own total, as in a window of
    ``extract.windows``; the capacity is the program's. Moves onto slots outside the view get no prior
    (:func:`view_logits`)."""
    n = inst.size.shape[-1]
    k = jnp.arange(n)
    cur = jnp.minimum(state.t, n - 1)
    decided, ahead = inst.valid & (k < state.t), inst.valid & (k > state.t)
    targets = decided & (state.offset >= 0) & (inst.end >= inst.start[cur])
    near = (k - state.t) / n                                   # in (0, 1] ahead, in [-1, 0) decided
    score = jnp.where(k == cur, 5.0, -jnp.inf)
    score = jnp.where(ahead & (k - state.t <= width // 4), 4.0 - near, score)
    score = jnp.where(targets, 3.0 + near, score)
    score = jnp.where(ahead & (k - state.t > width // 4), 2.0 - near, score)
    score = jnp.where(decided & ~targets, 1.0 + near, score)
    top, chosen = jax.lax.top_k(score, width)
    slots = jnp.sort(jnp.where(top > -jnp.inf, chosen, n))     # schedule order; padding (n) last
    real = slots < n
    at = jnp.minimum(slots, n - 1)
    pick = lambda x, fill: jnp.where(real, x[at], fill).astype(x.dtype)
    start, end, benefit = pick(inst.start, 0), pick(inst.end, -1), pick(inst.benefit, 0.0)
    t0 = jnp.where(real, start, jnp.iinfo(jnp.int32).max).min()
    total = benefit.sum()
    view_inst = game.Padded(
        size=pick(inst.size, 1), start=jnp.where(real, start - t0, 0), end=jnp.where(real, end - t0, -1),
        benefit=benefit, valid=real, order=pick(inst.order, -1), capacity=inst.capacity,
        num=real.sum().astype(jnp.int32), total_benefit=jnp.where(total > 0, total, 1.0), unit=inst.unit,
        horizon=jnp.maximum(jnp.where(real, end - t0, 0).max() + 1, 1).astype(jnp.int32))
    offset = pick(state.offset, -1)
    t_view = (real & (slots < state.t)).sum().astype(jnp.int32)
    ret = jnp.where(real & (slots < state.t) & (offset >= 0), benefit, 0.0).sum() / view_inst.total_benefit
    return View(view_inst, game.State(offset, t_view, ret.astype(jnp.float32)), jnp.where(real, slots, -1))


def view_logits(logits: jax.Array, slots: jax.Array, n: int) -> jax.Array:
    """float32 [2 n + 3]: a view's move logits [2 W + 3] as the whole instance's moves: the fixed moves as
    they are, view slot v's on-top / under moves as those of slot ``slots[v]``, every other move NEG."""
    w = slots.shape[-1]
    out = jnp.full((game.num_actions(n),), NEG, logits.dtype).at[:game.FIXED_MOVES].set(logits[:game.FIXED_MOVES])
    target = jnp.where(slots >= 0, slots, game.num_actions(n))   # padding: out of bounds, dropped
    out = out.at[game.on_top(target, n)].set(logits[game.FIXED_MOVES:game.FIXED_MOVES + w], mode="drop")
    return out.at[game.under(target, n)].set(logits[game.FIXED_MOVES + w:], mode="drop")


def network(model, params, inst: game.Padded, state: game.State, view: int = 0) -> tuple[jax.Array, jax.Array]:
    """(prior logits [B, 2 N + 3] with the illegal moves at NEG, value [B]) of the network (representation +
    prediction) for a batch of true-game positions; with ``view`` (static) below N, on each position's
    :func:`local_view` of ``view`` slots (the value is then the view's)."""
    legal = jax.vmap(game.legal_actions)(inst, state)
    n = inst.size.shape[-1]
    if view and view < n:
        v = jax.vmap(functools.partial(local_view, width=view))(inst, state)
        pred = _predict(model, params, _represent(model, params, v.inst, v.state))
        logits = jax.vmap(functools.partial(view_logits, n=n))(pred.logits, v.slots)
    else:
        pred = _predict(model, params, _represent(model, params, inst, state))
        logits = pred.logits
    return jnp.where(legal, logits, NEG), pred.value


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


def _true_game_recurrent_fn(model: MallocMuZeroNet, leaf_value, view: int = 0, needs_prior=None):
    """mctx recurrent function over the true game; embedding = (Padded batch, State batch). The prior comes
    from representation + prediction on the true next observation (illegal moves masked; :func:`network`,
    on a :func:`local_view` of ``view`` slots if given), the value from ``leaf_value(inst, next state,
    network value)``; terminal states have value and discount 0.

    ``needs_prior`` (a traced bool, or None: always): whether the network runs at all; where it is False the
    node gets zero logits and value, for a search that never reads them (:func:`descends_below_root`)."""
    def recurrent_fn(params, key, action, embedding):
        del key
        inst, state = embedding
        nxt, reward, done = jax.vmap(game.step)(inst, state, action)
        if needs_prior is None:
            logits, value = network(model, params, inst, nxt, view)
        else:
            skipped = lambda: (jnp.zeros((action.shape[0], game.num_actions(inst.size.shape[-1])), jnp.float32),
                               jnp.zeros(action.shape, jnp.float32))
            logits, value = jax.lax.cond(needs_prior, lambda: network(model, params, inst, nxt, view), skipped)
        out = mctx.RecurrentFnOutput(reward=reward, discount=jnp.where(done, 0.0, 1.0), prior_logits=logits,
                                     value=jnp.where(done, 0.0, leaf_value(inst, nxt, value)))
        return out, (inst, nxt)
    return recurrent_fn


def make_alphazero_recurrent_fn(model: MallocMuZeroNet, view: int = 0):
    """The ablation: the true game as recurrent function, the value head's value at the leaves."""
    return _true_game_recurrent_fn(model, lambda inst, state, value: value, view)


def rollout_value(inst: game.Padded, state: game.State, window: int = 0) -> jax.Array:
    """float32 [B]: the rollout search's leaf value, the return of finishing the episode with XLA's heuristic
    in game moves (``game.heuristic_return(..., game_moves=True)``): a return some game trajectory reaches,
    so the search never chases a value it cannot play. On the training windows it beat the previous leaf
    value, a first-fit rollout in schedule order (``game.first_fit_return`` up to commit c2f8bc8; mean benefit
    0.380 vs 0.365 at 32 simulations, each at its best q_scale): first fit fills memory with whatever comes
    first, the heuristic keeps room for the buffers that deserve it.

    ``window`` (static, 0: the whole rest of the episode): the return of the next ``window`` buffers only (a
    rolling horizon, ``game.heuristic_completion``): on a whole program the full rollout costs one placement
    per remaining buffer at every leaf (75 % of the search's time at the GPT-2-small step's 1,781 buffers)."""
    return jax.vmap(functools.partial(game.heuristic_return, game_moves=True, window=window))(inst, state)


def make_rollout_recurrent_fn(model: MallocMuZeroNet, window: int = 0, view: int = 0, needs_prior=None):
    """The true game as recurrent function, like :func:`make_alphazero_recurrent_fn`, with the network's prior
    but the leaf value of a heuristic rollout to the end of the episode (or over ``window`` buffers,
    :func:`rollout_value`) instead of the value head: AlphaGo's fast-rollout evaluation (Silver et al. 2016,
    mixing weight lambda = 1). The value head is unused, so the network runs only where ``needs_prior``
    (:func:`_true_game_recurrent_fn`)."""
    return _true_game_recurrent_fn(model, lambda inst, state, value: rollout_value(inst, state, window), view,
                                   needs_prior)


def descends_below_root(legal: jax.Array, num_simulations: int, max_considered: int) -> jax.Array:
    """bool []: whether some simulation of a Gumbel MuZero search (``mctx.gumbel_muzero_policy``, no noise or
    any) may go below the root's children for any row of the batch. Sequential Halving (Danihelka et al. 2022,
    Sec. 3; ``mctx``'s table of considered visits) first visits each of the min(``max_considered``, legal moves)
    considered root moves once, so with at least as many considered moves as simulations every simulation
    expands a distinct child of the root and no child's prior is ever read: a rollout search then needs the
    network at the root only (at 2 simulations, on every position with a choice: 1 network call a move, not
    3)."""
    considered = jnp.minimum(max_considered, legal.sum(-1))
    return jnp.any(considered < num_simulations)


def rollouts_are_whole(window: int, max_buffers: int) -> bool:
    """Whether a rollout of ``window`` buffers (0: all) reaches the end of every episode of ``max_buffers``
    slots: then a node's value plus its return so far is a whole trajectory's return."""
    return not window or window >= max_buffers


class SearchOut(NamedTuple):
    action: jax.Array        # int32 [B]
    policy: jax.Array        # float32 [B, A]: improved policy (training target)
    value: jax.Array         # float32 [B]: root search value
    legal: jax.Array         # bool [B, A]
    best_return: jax.Array   # float32 [B]: rollout search: the best whole-episode return it saw (else -inf)
    best_state: game.State   # [B]: the node whose heuristic completion reaches it (else the root)
    chosen_value: jax.Array  # float32 [B]: rollout search: the leaf value of the chosen move's child (else 0),
    #                          the next position's rollout value (the next search's root value)


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
           max_considered: int = 16, gumbel_scale: float = 1.0, q_scale: float = 1.0, window: int = 0,
           view: int = 0, root_value: jax.Array | None = None) -> SearchOut:
    """One move's search for a batch of positions; illegal moves are masked at the root (``invalid_actions``
    of ``mctx.gumbel_muzero_policy`` and NEG prior logits), so the returned action is always legal.

    Q-values are NOT min-max rescaled (``rescale_values=False``): returns are already normalised benefits in
    [0, 1], and rescaling would blow value-net noise of 1e-3 up to full-scale preferences. The completed Q
    enters the improved policy as σ(q) = (50 + max visits) · ``q_scale`` · q (Danihelka et al., Eq. 8).

    Whole programs (static settings, true-game searches only): ``window`` buffers per leaf rollout
    (:func:`rollout_value`; 0: to the end) and the network on a :func:`local_view` of ``view`` slots (0: all).
    Where the rollouts do not reach the end, ``best_return`` is -inf (no node's value is a whole return).
    ``root_value`` (rollout search): the position's rollout value if already known, the previous search's
    ``chosen_value`` (the same rollout from the same position): one rollout per move saved."""
    if kind not in SEARCHES:
        raise ValueError(f"search kind={kind!r}; allowed: {', '.join(SEARCHES)}")
    legal = jax.vmap(game.legal_actions)(inst, state)
    if kind == "muzero":
        latent = _represent(model, params, inst, state)
        pred = _predict(model, params, latent)
        logits, value = jnp.where(legal, pred.logits, NEG), pred.value
    else:
        logits, value = network(model, params, inst, state, view)
    no_best = jnp.full(value.shape, -jnp.inf, jnp.float32), state
    zeros = jnp.zeros(value.shape, jnp.float32)
    if kind == "policy":
        return SearchOut(jnp.argmax(logits, -1).astype(jnp.int32), jax.nn.softmax(logits), value, legal, *no_best,
                         zeros)
    known, root_value = root_value, value
    if kind == "muzero":
        recurrent_fn, embedding = make_muzero_recurrent_fn(model), latent
    elif kind == "alphazero":
        recurrent_fn, embedding = make_alphazero_recurrent_fn(model, view), (inst, state)
    else:
        recurrent_fn = make_rollout_recurrent_fn(model, window, view,
                                                 descends_below_root(legal, num_simulations, max_considered))
        embedding = (inst, state)
        root_value = rollout_value(inst, state, window) if known is None else known
    root = mctx.RootFnOutput(prior_logits=logits, value=root_value, embedding=embedding)
    out = mctx.gumbel_muzero_policy(params, key, root, recurrent_fn, num_simulations, invalid_actions=~legal,
                                    max_depth=inst.size.shape[-1], max_num_considered_actions=max_considered,
                                    gumbel_scale=gumbel_scale, qtransform=functools.partial(
                                        mctx.qtransform_completed_by_mix_value, value_scale=q_scale,
                                        rescale_values=False))
    whole = kind == "rollout" and rollouts_are_whole(window, inst.size.shape[-1])
    best = best_rollout_node(out.search_tree) if whole else no_best
    tree, rows = out.search_tree, jnp.arange(value.shape[0])
    chosen = tree.raw_values[rows, tree.children_index[rows, tree.ROOT_INDEX, out.action]]
    return SearchOut(out.action.astype(jnp.int32), out.action_weights, tree.summary().value, legal, *best,
                     chosen if kind == "rollout" else zeros)


def forced_move(inst: game.Padded, state: game.State, legal: jax.Array, root_value: jax.Array,
                window: int = 0) -> SearchOut:
    """The rollout search's :class:`SearchOut` where slow memory is the only legal move (or the episode is
    over), without its simulations: the move is slow, and with whole rollouts the child's rollout value is the
    root's (with no legal place at the position, the heuristic completion cannot place the buffer either: its
    candidates are the same moves with more buffers in the way), so no rollout is run; a windowed one is run
    once, for the child's own window."""
    slow = jnp.zeros(legal.shape, jnp.float32).at[:, game.SLOW].set(1.0)
    action = jnp.full(root_value.shape, game.SLOW, jnp.int32)
    if rollouts_are_whole(window, inst.size.shape[-1]):
        child = root_value
    else:
        nxt, _, done = jax.vmap(game.step)(inst, state, action)
        child = jnp.where(done, 0.0, rollout_value(inst, nxt, window))
    return SearchOut(action, slow, root_value, legal, jnp.full(root_value.shape, -jnp.inf, jnp.float32), state,
                     child)


def check_search_args(num_simulations, samples) -> None:
    """ValueError (named after eval_malloc's flags) unless both are integers >= 1."""
    for name, value in (("simulations", num_simulations), ("samples", samples)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
