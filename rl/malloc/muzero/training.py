"""Learning: the hyper-parameters, network construction, self-play of whole episodes, the MuZero loss and
the jit-able training iteration (self-play, replay, optax updates; optional demonstrations)."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from models.malloc_muzero import Latent, MallocMuZeroNet, MuZeroNetConfig
from rl.malloc import game
from rl.malloc.muzero import mcts
from rl.malloc.muzero.mcts import GLOBAL_FEATURES, SLOT_FEATURES, _predict, _represent, search
from rl.malloc.muzero.replay import Batch, Episodes, Replay, replay_add, replay_init, replay_sample

SELF_PLAY_SEARCHES = ("muzero", "alphazero", "rollout")


# --------------------------------------------------------------------------- configuration and network

@dataclasses.dataclass(frozen=True)
class MuZeroConfig:
    """Self-play, search and learning hyper-parameters (the network has ``MuZeroNetConfig``).

    max_buffers: Padded buffer count N of every training batch (actions: 2 N + 3).
    batch: Self-play episodes (instances) per iteration.
    num_simulations: Search simulations per move in self-play.
    max_considered: Gumbel-top-k actions considered at the root.
    q_scale: Scale of the completed Q-values in the improved policy (value_scale of
      mctx.qtransform_completed_by_mix_value; 1: no rescaling).
    search: The search of self-play: over the learned model (muzero), the true game (alphazero), or the true
      game with heuristic rollouts as leaf values (rollout: its improved policy becomes the prior's target,
      the search as improvement operator).
    unroll: K, the unroll steps of the MuZero loss.
    n_step: n of the value targets (>= max_buffers: Monte-Carlo return).
    replay_episodes: Replay capacity in episodes (FIFO).
    train_batch: Positions per gradient step.
    updates_per_iter: Gradient steps per self-play iteration.
    lr: Peak AdamW learning rate (warm-up, cosine decay to 10 %).
    weight_decay: AdamW weight decay.
    grad_clip: Global gradient-norm clip.
    value_coef, reward_coef: Weights of the value and reward losses.
    legal_coef: Weight of the auxiliary legal-move loss.
    demo_fraction: Share of each batch drawn from the demonstrations after pre-training.
    pretrain_iters: First iterations that learn from the demonstrations only (no self-play).
    """
    max_buffers: int = 32
    batch: int = 32
    num_simulations: int = 32
    max_considered: int = 16
    q_scale: float = 1.0
    search: str = "muzero"
    unroll: int = 5
    n_step: int = 32
    replay_episodes: int = 2048
    train_batch: int = 128
    updates_per_iter: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    value_coef: float = 1.0
    reward_coef: float = 1.0
    legal_coef: float = 0.5
    demo_fraction: float = 0.0
    pretrain_iters: int = 0

    def __post_init__(self):
        for name in ("max_buffers", "batch", "num_simulations", "max_considered", "unroll", "n_step",
                     "replay_episodes", "train_batch", "updates_per_iter"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if self.search not in SELF_PLAY_SEARCHES:
            raise ValueError(f"search={self.search!r}; allowed: {', '.join(SELF_PLAY_SEARCHES)}")
        if self.replay_episodes < self.batch:
            raise ValueError(f"replay_episodes={self.replay_episodes} must be >= batch={self.batch}")
        for name in ("lr", "grad_clip", "q_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        if not 0.0 <= self.demo_fraction < 1.0:
            raise ValueError(f"demo_fraction={self.demo_fraction!r} must be in [0, 1)")
        if not isinstance(self.pretrain_iters, int) or self.pretrain_iters < 0:
            raise ValueError(f"pretrain_iters={self.pretrain_iters!r} must be an integer >= 0")
        for name in ("weight_decay", "value_coef", "reward_coef", "legal_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")


def make_model(net_cfg: MuZeroNetConfig) -> MallocMuZeroNet:
    return MallocMuZeroNet(net_cfg)


def init_params(model: MallocMuZeroNet, key: jax.Array, max_buffers: int = 8):
    slots = jnp.zeros((1, max_buffers, SLOT_FEATURES))
    glob = jnp.zeros((1, GLOBAL_FEATURES))
    return jax.jit(model.init)(key, slots, glob, jnp.ones((1, max_buffers), bool), jnp.zeros((1,), jnp.int32))


# --------------------------------------------------------------------------- self-play

def play(model, params, key, inst: game.Padded, kind: str, num_simulations: int, max_considered: int = 16,
         gumbel_scale: float = 1.0, q_scale: float = 1.0, keep_best: bool = False, window: int = 0,
         view: int = 0) -> tuple[game.State, Episodes]:
    """Plays a batch of whole episodes with search at every move (vmap over instances, lax.scan over N
    moves). Returns (final states, the recorded episodes). ``window`` and ``view`` (true-game searches):
    rollouts over ``window`` buffers and the network on a view of ``view`` slots (``mcts.search``).

    ``keep_best`` (rollout search only): the final state is the best whole trajectory evaluated on the way,
    where it beats the episode played; the episode itself, and so every recovery the search makes after a
    worse-looking move, is unchanged. With whole rollouts (``mcts.rollouts_are_whole``) those are every
    searched node's moves then the heuristic (``mcts.best_rollout_node`` finished by
    ``game.heuristic_finish``); with windowed rollouts no node's value is a whole return, so every ``window``
    moves (the first included) the position reached is finished by the heuristic once, to the end.

    Rollout search: each position's rollout value is computed once, as the previous search's chosen child
    (``mcts.SearchOut.chosen_value``), not again as the next root; a move where no position of the batch has a
    legal place runs no simulation (``mcts.forced_move``): the episode is the same, only the extra
    trajectories ``keep_best`` could have seen below such a move are not evaluated."""
    if keep_best and kind != "rollout":
        raise ValueError(f"keep_best needs the rollout search; search kind={kind!r}")
    b, n = inst.size.shape
    checkpoints = keep_best and not mcts.rollouts_are_whole(window, n)

    def body(carry, xs):
        state, best_ret, best_state, root_value = carry
        k, move = xs

        def searched(_):
            return search(model, params, k, inst, state, kind, num_simulations, max_considered, gumbel_scale,
                          q_scale, window, view, root_value if kind == "rollout" else None)

        if kind == "rollout":  # where no position of the batch has a choice, no simulation is run
            legal = jax.vmap(game.legal_actions)(inst, state)
            out = jax.lax.cond(jnp.all(legal.sum(-1) == 1), lambda _: mcts.forced_move(
                inst, state, legal, root_value, window), searched, None)
        else:
            out = searched(None)
        active = ~jax.vmap(game.done)(inst, state)
        nxt, reward, _ = jax.vmap(game.step)(inst, state, out.action)
        if checkpoints:  # static; the condition is the move number, the same for the whole batch
            out_ret, out_state = jax.lax.cond(
                move % window == 0, lambda s: _finished(inst, s), lambda s: (jnp.full((b,), -jnp.inf), s), state)
            out = out._replace(best_return=out_ret, best_state=out_state)
        if keep_best:  # static: self-play and the plain searches carry the initial values untouched
            better = active & (out.best_return > best_ret)
            best_ret = jnp.where(better, out.best_return, best_ret)
            best_state = jax.tree.map(lambda new, old: jnp.where(_rows(better, new), new, old), out.best_state,
                                      best_state)
        rec = (state.offset, state.ret, out.action, out.policy, jnp.where(active, out.value, 0.0), reward,
               out.legal, active)
        return (nxt, best_ret, best_state, out.chosen_value), rec

    state0 = jax.vmap(game.init)(inst)
    value0 = mcts.rollout_value(inst, state0, window) if kind == "rollout" else jnp.zeros((b,), jnp.float32)
    carry0 = (state0, jnp.full((b,), -jnp.inf, jnp.float32), state0, value0)
    (final, best_ret, best_state, _), recs = jax.lax.scan(body, carry0, (jax.random.split(key, n), jnp.arange(n)))
    if keep_best:
        finished = best_state if checkpoints else jax.vmap(game.heuristic_finish)(inst, best_state)
        take = finished.ret > final.ret
        final = jax.tree.map(lambda f, p: jnp.where(_rows(take, f), f, p), finished, final)
    recs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), recs)
    return final, Episodes(inst, *recs)


def _finished(inst: game.Padded, state: game.State) -> tuple[jax.Array, game.State]:
    """([B] return, [B] terminal state) of finishing each position with the heuristic in game moves."""
    done = jax.vmap(game.heuristic_finish)(inst, state)
    return done.ret, done


def _rows(mask: jax.Array, like: jax.Array) -> jax.Array:
    """``mask`` [B] broadcast against ``like`` [B, ...]."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


# --------------------------------------------------------------------------- learning

def make_optimizer(cfg: MuZeroConfig, total_updates: int | None = None) -> optax.GradientTransformation:
    lr = cfg.lr
    if total_updates:
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(200, max(1, total_updates // 10)),
                                                max(total_updates, 2), end_value=cfg.lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(lr, weight_decay=cfg.weight_decay))


class StepLosses(NamedTuple):
    """The loss terms of one unroll step k (batch means)."""
    policy: jax.Array   # l^p: cross-entropy of the predicted policy to the search policy (real positions only)
    value: jax.Array    # l^v: squared error of the predicted value
    legal: jax.Array    # auxiliary legality BCE, averaged over each position's possible actions
    reward: jax.Array   # l^r: squared error of the predicted reward (0 when no reward is given)


def step_losses(logits: jax.Array, value: jax.Array, legal_logits: jax.Array, policy_target: jax.Array,
                value_target: jax.Array, legal_target: jax.Array, mask: jax.Array, action_ok: jax.Array,
                reward: jax.Array | None = None, reward_target: jax.Array | None = None) -> StepLosses:
    """The per-step terms of the MuZero loss (Schrittwieser et al. 2020, Eq. 1) from the prediction
    ``p^k, v^k`` (and the dynamics' reward ``r^{k+1}``) against the targets ``pi_{t+k}, z_{t+k}, u_{t+k+1}``.

    Shapes: ``logits``, ``legal_logits``, ``policy_target``, ``legal_target`` (bool), ``action_ok`` (bool:
    the actions that exist, not padding) [B, A]; ``value``, ``value_target``, ``mask`` (bool: a real,
    pre-terminal position), ``reward``, ``reward_target`` [B].

    * ``policy``: ``l^p = -sum_a pi_a log softmax(logits)_a``, averaged over the real positions;
    * ``value``: ``l^v = (v - z)^2`` and ``reward``: ``l^r = (r - u)^2``, averaged over all positions
      (past the end the targets are those of the absorbing state, 0);
    * ``legal``: binary cross-entropy of ``sigmoid(legal_logits)`` to the legal-move mask, averaged over each
      position's ``action_ok`` actions, then over the batch.
    """
    m = mask.astype(jnp.float32)
    ce = -(policy_target * jax.nn.log_softmax(logits)).sum(-1)
    pol = (ce * m).sum() / jnp.maximum(m.sum(), 1.0)
    val = jnp.mean((value - value_target) ** 2)
    bce = optax.sigmoid_binary_cross_entropy(legal_logits, legal_target.astype(jnp.float32))
    leg = jnp.mean((bce * action_ok).sum(-1) / action_ok.sum(-1))
    rew = jnp.zeros((), jnp.float32) if reward is None else jnp.mean((reward - reward_target) ** 2)
    return StepLosses(pol, val, leg, rew)


def loss_fn(model, params, batch: Batch, cfg: MuZeroConfig):
    """MuZero loss (Schrittwieser et al. 2020, Eq. 1) over K unroll steps; returns (loss, metrics).

    The terms of each step come from :func:`step_losses`; the loss is
    ``(sum_k l^p + value_coef l^v + legal_coef l^legal) / (K + 1) + reward_coef sum_k l^r / max(K, 1)`` and the
    metrics carry each term already scaled (``loss = policy_loss + value_coef * value_loss + legal_coef *
    legal_loss + reward_coef * reward_loss``).
    """
    latent = _represent(model, params, batch.inst, batch.state)
    k_steps = batch.actions.shape[1]
    action_ok = game.existing_actions(batch.inst.valid)
    pol = val = rew = leg = 0.0
    for k in range(k_steps + 1):
        pred = _predict(model, params, latent)
        r = r_target = None
        if k < k_steps:
            latent, r = model.apply(params, latent, batch.actions[:, k], method=model.dynamics)
            r_target = batch.reward[:, k]
            latent = Latent(0.5 * latent.tokens + 0.5 * jax.lax.stop_gradient(latent.tokens), latent.mask)
        terms = step_losses(pred.logits, pred.value, pred.legal_logits, batch.policy[:, k], batch.value[:, k],
                            batch.legal[:, k], batch.mask[:, k], action_ok, r, r_target)
        pol += terms.policy
        val += terms.value
        leg += terms.legal
        if k < k_steps:
            rew += terms.reward
    scale = 1.0 / (k_steps + 1)
    loss = scale * (pol + cfg.value_coef * val + cfg.legal_coef * leg) + cfg.reward_coef * rew / max(k_steps, 1)
    return loss, {"loss": loss, "policy_loss": pol * scale, "value_loss": val * scale,
                  "reward_loss": rew / max(k_steps, 1), "legal_loss": leg * scale}


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    replay: Replay
    key: jax.Array
    step: jax.Array
    demos: Replay            # fixed expert episodes (capacity 1 and empty without demonstrations)


def uses_demos(cfg: MuZeroConfig) -> bool:
    return cfg.pretrain_iters > 0 or cfg.demo_fraction > 0


def init_train_state(model, optimizer, cfg: MuZeroConfig, seed: int, demos: Replay | None = None,
                     num_demos: int | None = None) -> TrainState:
    """A fresh state; ``demos`` (a :func:`demo_replay`) or, for a restore template, ``num_demos`` empty slots."""
    k_init, k_run = jax.random.split(jax.random.PRNGKey(seed))
    params = init_params(model, k_init, cfg.max_buffers)
    if demos is None:
        demos = replay_init(num_demos or 1, cfg.max_buffers)
    if uses_demos(cfg) and demos.action.shape[1] != cfg.max_buffers:
        raise ValueError(f"demonstrations are padded to {demos.action.shape[1]} buffers, not {cfg.max_buffers}")
    return TrainState(params, optimizer.init(params), replay_init(cfg.replay_episodes, cfg.max_buffers),
                      k_run, jnp.zeros((), jnp.int32), demos)


def make_update(model, optimizer, cfg: MuZeroConfig):
    """``update(params, opt_state, batch) -> (params, opt_state, metrics)``: one optax step on the loss."""
    def update(params, opt_state, batch):
        (_, metrics), grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch, cfg), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics
    return update


def _concat_batches(a: Batch, b: Batch) -> Batch:
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def make_train_iteration(model, optimizer, cfg: MuZeroConfig):
    """``iteration(state, inst_batch) -> (state, metrics)``: one self-play batch (``cfg.search``), added
    to the replay, then ``updates_per_iter`` gradient steps on replayed K-step unrolls (``demo_fraction`` of
    each batch from the demonstrations). During the first ``pretrain_iters`` iterations there is no
    self-play and every batch comes from the demonstrations."""
    update = make_update(model, optimizer, cfg)
    n_demo = int(round(cfg.demo_fraction * cfg.train_batch))

    def learn(params, opt_state, replay, demos, key, pretraining: bool):
        def one(carry, k):
            params, opt_state = carry
            if pretraining:
                batch = replay_sample(demos, k, cfg.train_batch, cfg.unroll)
            elif n_demo:
                k1, k2 = jax.random.split(k)
                batch = _concat_batches(replay_sample(replay, k1, cfg.train_batch - n_demo, cfg.unroll),
                                        replay_sample(demos, k2, n_demo, cfg.unroll))
            else:
                batch = replay_sample(replay, k, cfg.train_batch, cfg.unroll)
            params, opt_state, m = update(params, opt_state, batch)
            return (params, opt_state), m

        (params, opt_state), ms = jax.lax.scan(one, (params, opt_state), jax.random.split(key, cfg.updates_per_iter))
        return params, opt_state, {k: v.mean() for k, v in ms.items()}

    def selfplay_iteration(state: TrainState, inst: game.Padded):
        key, k_play, k_upd = jax.random.split(state.key, 3)
        final, ep = play(model, state.params, k_play, inst, cfg.search, cfg.num_simulations, cfg.max_considered,
                          q_scale=cfg.q_scale)
        replay = replay_add(state.replay, ep, cfg.n_step)
        params, opt_state, metrics = learn(state.params, state.opt_state, replay, state.demos, k_upd, False)
        metrics["selfplay_return"] = final.ret.mean()
        metrics["root_value"] = ep.root_value[:, 0].mean()
        return TrainState(params, opt_state, replay, key, state.step + 1, state.demos), metrics

    def pretrain_iteration(state: TrainState, inst: game.Padded):
        del inst
        key, k_upd = jax.random.split(state.key)
        params, opt_state, metrics = learn(state.params, state.opt_state, state.replay, state.demos, k_upd, True)
        metrics["selfplay_return"] = jnp.zeros((), jnp.float32)
        metrics["root_value"] = jnp.zeros((), jnp.float32)
        return TrainState(params, opt_state, state.replay, key, state.step + 1, state.demos), metrics

    if cfg.pretrain_iters == 0:
        return selfplay_iteration

    def iteration(state: TrainState, inst: game.Padded):
        return jax.lax.cond(state.step < cfg.pretrain_iters, pretrain_iteration, selfplay_iteration, state, inst)
    return iteration
