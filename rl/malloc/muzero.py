r"""mallocMuZero: Gumbel MuZero self-play, replay and training for the mallocGame (plus an AlphaZero ablation).

References
- Wang et al. (DeepMind 2023), "Optimizing Memory Mapping Using Deep Reinforcement Learning": the
  mallocGame and the mallocMuZero agent (MuZero with attention over buffers).
- Schrittwieser et al. (2020), "Mastering Atari, Go, Chess and Shogi by Planning with a Learned Model"
  (MuZero). The loss (their Eq. 1), unrolled for K steps from a replayed position t::

      l_t(θ) = Σ_{k=0..K} l^p(π_{t+k}, p^k_t) + Σ_{k=0..K} l^v(z_{t+k}, v^k_t) + Σ_{k=1..K} l^r(u_{t+k}, r^k_t)

  with the n-step value target (their Eq. 2, discount γ = 1 here: the game is finite, N moves)::

      z_t = u_{t+1} + ... + u_{t+n} + ν_{t+n}

  where ν is the search value of the root at t + n (0 past the episode's end). With ``n_step >= N``
  the target is the full Monte-Carlo return (the episodes are short). The gradient entering the
  dynamics is scaled by 1/2 and the loss averaged over the K + 1 unroll steps (their Appendix G).
  Past the end of an episode the model is trained on absorbing states (value 0, reward 0); their
  policy terms are masked.
- Danihelka et al. (ICLR 2022), "Policy improvement by planning with Gumbel": the search is
  ``mctx.gumbel_muzero_policy`` (sequential halving with Gumbel-top-k at the root) and the policy target
  is its improved policy π' = softmax(logits + σ(completedQ)) (their Eq. 11), so that few simulations
  (16-64) suffice.

Heads and losses here: l^p is the cross-entropy to π', l^v and l^r are squared errors (returns are
normalised benefits in [0, 1]), plus an auxiliary binary cross-entropy on the legal-move mask (weight
``legal_coef``), used inside the learned-model search to push down the prior logits of moves the model
believes illegal (the root is masked with the game's exact ``legal_actions``).

Two searches share one network (``models/malloc_muzero.py``):
- ``"muzero"``: the recurrent function is the learned dynamics (``make_muzero_recurrent_fn``);
- ``"alphazero"`` (the ablation): the recurrent function is the true ``game.step``; the prior and value
  come from representation + prediction on the true next observation, illegal moves are masked at every
  node, terminal states have discount 0 (``make_alphazero_recurrent_fn``).
- ``"policy"`` (no search): the arg-max of the masked prior, for reference.

By default training is pure RL from self-play. Optionally (not in the paper; ``rl/malloc/demos.py``) a fixed
set of expert episodes (CP-SAT under the game's moves) is kept beside the replay: the first
``pretrain_iters`` iterations learn from it alone (no self-play), later ones draw ``demo_fraction`` of every
batch from it. Reanalysis is not implemented: the replay keeps the search policies and values of the
self-play that produced them.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mctx
import numpy as np
import optax

from models.malloc_muzero import NEG, Latent, MallocMuZeroNet, MuZeroNetConfig
from rl import export
from rl.malloc import game
from rl.malloc.instance import Instance

SEARCHES = ("muzero", "alphazero", "policy")
SLOT_FEATURES = 11
GLOBAL_FEATURES = 10 + game.OCCUPANCY_BINS + 1
TRAINED_DIR = pathlib.Path(__file__).resolve().parent / "trained"


@dataclasses.dataclass(frozen=True)
class MuZeroConfig:
    """Self-play, search and learning hyper-parameters (the network has ``MuZeroNetConfig``)."""
    max_buffers: int = 32          # padded N of the training batches (actions: N + 2)
    batch: int = 32                # self-play episodes per iteration
    num_simulations: int = 32      # search simulations per move in self-play
    max_considered: int = 16       # Gumbel-top-k actions considered at the root
    q_scale: float = 1.0           # value_scale of mctx.qtransform_completed_by_mix_value (no rescaling)
    search: str = "muzero"         # recurrent function of self-play: muzero | alphazero
    unroll: int = 5                # K
    n_step: int = 32               # n of the value target (>= max_buffers: Monte-Carlo return)
    replay_episodes: int = 2048    # FIFO capacity, in episodes
    train_batch: int = 128         # positions per gradient step
    updates_per_iter: int = 4      # gradient steps per self-play iteration
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    value_coef: float = 1.0
    reward_coef: float = 1.0
    legal_coef: float = 0.5
    demo_fraction: float = 0.0     # share of each batch drawn from the demonstrations (after pre-training)
    pretrain_iters: int = 0        # first iterations: demonstrations only, no self-play

    def __post_init__(self):
        for name in ("max_buffers", "batch", "num_simulations", "max_considered", "unroll", "n_step",
                     "replay_episodes", "train_batch", "updates_per_iter"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"--{name}={v!r} must be an integer >= 1")
        if self.search not in ("muzero", "alphazero"):
            raise ValueError(f"--search={self.search!r}; allowed: muzero, alphazero")
        if self.replay_episodes < self.batch:
            raise ValueError(f"--replay_episodes={self.replay_episodes} must be >= --batch={self.batch}")
        for name in ("lr", "grad_clip", "q_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name}={getattr(self, name)!r} must be > 0")
        if not 0.0 <= self.demo_fraction < 1.0:
            raise ValueError(f"--demo_fraction={self.demo_fraction!r} must be in [0, 1)")
        if not isinstance(self.pretrain_iters, int) or self.pretrain_iters < 0:
            raise ValueError(f"--pretrain_iters={self.pretrain_iters!r} must be an integer >= 0")
        for name in ("weight_decay", "value_coef", "reward_coef", "legal_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name}={getattr(self, name)!r} must be >= 0")


# --------------------------------------------------------------------------- observation and network

def observation(inst: game.Padded, state: game.State):
    """(slots [N, 11], glob [27], slot_valid [N]) for ONE padded instance: ``game.buffer_features`` plus
    the slot's root legality and time overlap with the current buffer; ``game.observe`` plus the
    legality of offset 0."""
    n = inst.size.shape[-1]
    legal = game.legal_actions(inst, state)
    cur = jnp.minimum(state.t, n - 1)
    overlap = (inst.start <= inst.end[cur]) & (inst.start[cur] <= inst.end) & inst.valid
    slots = jnp.concatenate([game.buffer_features(inst, state), legal[2:, None].astype(jnp.float32),
                             overlap[:, None].astype(jnp.float32)], axis=-1)
    glob = jnp.concatenate([game.observe(inst, state), legal[1:2].astype(jnp.float32)])
    return slots, glob, inst.valid


def make_model(net_cfg: MuZeroNetConfig) -> MallocMuZeroNet:
    return MallocMuZeroNet(net_cfg)


def init_params(model: MallocMuZeroNet, key: jax.Array, max_buffers: int = 8):
    slots = jnp.zeros((1, max_buffers, SLOT_FEATURES))
    glob = jnp.zeros((1, GLOBAL_FEATURES))
    return jax.jit(model.init)(key, slots, glob, jnp.ones((1, max_buffers), bool), jnp.zeros((1,), jnp.int32))


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


def make_alphazero_recurrent_fn(model: MallocMuZeroNet):
    """The ablation: the true game as recurrent function; embedding = (Padded batch, State batch)."""
    def recurrent_fn(params, key, action, embedding):
        del key
        inst, state = embedding
        nxt, reward, done = jax.vmap(game.step)(inst, state, action)
        pred = _predict(model, params, _represent(model, params, inst, nxt))
        legal = jax.vmap(game.legal_actions)(inst, nxt)
        out = mctx.RecurrentFnOutput(reward=reward, discount=jnp.where(done, 0.0, 1.0),
                                     prior_logits=jnp.where(legal, pred.logits, NEG),
                                     value=jnp.where(done, 0.0, pred.value))
        return out, (inst, nxt)
    return recurrent_fn


class SearchOut(NamedTuple):
    action: jax.Array        # int32 [B]
    policy: jax.Array        # float32 [B, A]: improved policy (training target)
    value: jax.Array         # float32 [B]: root search value
    legal: jax.Array         # bool [B, A]


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
    if kind == "policy":
        return SearchOut(jnp.argmax(logits, -1).astype(jnp.int32), jax.nn.softmax(logits), pred.value, legal)
    if kind == "muzero":
        recurrent_fn, embedding = make_muzero_recurrent_fn(model), latent
    else:
        recurrent_fn, embedding = make_alphazero_recurrent_fn(model), (inst, state)
    root = mctx.RootFnOutput(prior_logits=logits, value=pred.value, embedding=embedding)
    out = mctx.gumbel_muzero_policy(params, key, root, recurrent_fn, num_simulations, invalid_actions=~legal,
                                    max_depth=inst.size.shape[-1], max_num_considered_actions=max_considered,
                                    gumbel_scale=gumbel_scale, qtransform=functools.partial(
                                        mctx.qtransform_completed_by_mix_value, value_scale=q_scale,
                                        rescale_values=False))
    return SearchOut(out.action.astype(jnp.int32), out.action_weights, out.search_tree.summary().value, legal)


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


def play(model, params, key, inst: game.Padded, kind: str, num_simulations: int, max_considered: int = 16,
         gumbel_scale: float = 1.0, q_scale: float = 1.0) -> tuple[game.State, Episodes]:
    """Plays a batch of whole episodes with search at every move (vmap over instances, lax.scan over N
    moves). Returns (final states, the recorded episodes)."""
    b, n = inst.size.shape

    def body(state, k):
        out = search(model, params, k, inst, state, kind, num_simulations, max_considered, gumbel_scale, q_scale)
        active = ~jax.vmap(game.done)(inst, state)
        nxt, reward, _ = jax.vmap(game.step)(inst, state, out.action)
        rec = (state.offset, state.ret, out.action, out.policy, jnp.where(active, out.value, 0.0), reward,
               out.legal, active)
        return nxt, rec

    state0 = jax.vmap(game.init)(inst)
    final, recs = jax.lax.scan(body, state0, jax.random.split(key, n))
    recs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), recs)
    return final, Episodes(inst, *recs)


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
                       horizon=z((), jnp.int32) + 1)
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


# --------------------------------------------------------------------------- learning

def make_optimizer(cfg: MuZeroConfig, total_updates: int | None = None) -> optax.GradientTransformation:
    lr = cfg.lr
    if total_updates:
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(200, max(1, total_updates // 10)),
                                                max(total_updates, 2), end_value=cfg.lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(lr, weight_decay=cfg.weight_decay))


def loss_fn(model, params, batch: Batch, cfg: MuZeroConfig):
    """MuZero loss (Schrittwieser et al. 2020, Eq. 1) over K unroll steps; returns (loss, metrics)."""
    latent = _represent(model, params, batch.inst, batch.state)
    k_steps = batch.actions.shape[1]
    action_ok = jnp.concatenate([jnp.ones((batch.mask.shape[0], 2), bool), batch.inst.valid], -1)
    pol = val = rew = leg = 0.0
    for k in range(k_steps + 1):
        pred = _predict(model, params, latent)
        m = batch.mask[:, k].astype(jnp.float32)
        ce = -(batch.policy[:, k] * jax.nn.log_softmax(pred.logits)).sum(-1)
        pol += (ce * m).sum() / jnp.maximum(m.sum(), 1.0)
        val += jnp.mean((pred.value - batch.value[:, k]) ** 2)
        bce = optax.sigmoid_binary_cross_entropy(pred.legal_logits, batch.legal[:, k].astype(jnp.float32))
        leg += jnp.mean((bce * action_ok).sum(-1) / action_ok.sum(-1))
        if k < k_steps:
            latent, r = model.apply(params, latent, batch.actions[:, k], method=model.dynamics)
            rew += jnp.mean((r - batch.reward[:, k]) ** 2)
            latent = Latent(0.5 * latent.tokens + 0.5 * jax.lax.stop_gradient(latent.tokens), latent.mask)
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


def demo_replay(episodes: Episodes) -> Replay:
    """A full Replay holding ``episodes``, value targets = the Monte-Carlo returns of the episodes."""
    b, n = episodes.action.shape
    return replay_add(replay_init(b, n), episodes, n_step=n)


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


# --------------------------------------------------------------------------- solving

@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _play_final(model, params, key, inst, kind, num_simulations, max_considered, q_scale, samples=1):
    """Final states of the deterministic search (Gumbel noise 0); with ``samples`` > 1, of the best (by the
    true game's return) of that episode and ``samples - 1`` episodes whose root choices carry Gumbel noise
    (Danihelka et al. 2022: sampling without replacement through Gumbel-top-k)."""
    final, _ = play(model, params, key, inst, kind, num_simulations, max_considered, 0.0, q_scale)
    if samples == 1:
        return final
    b = inst.size.shape[0]
    tiled = jax.tree.map(lambda x: jnp.repeat(x, samples - 1, axis=0), inst)
    noisy, _ = play(model, params, jax.random.fold_in(key, 1), tiled, kind, num_simulations, max_considered,
                    1.0, q_scale)
    every = jax.tree.map(lambda d, r: jnp.concatenate([d[:, None], r.reshape(b, samples - 1, *r.shape[1:])], 1),
                         final, noisy)                                  # [B, samples, ...], deterministic first
    best = jnp.argmax(every.ret, axis=1)                                # ties: the deterministic episode
    return jax.tree.map(lambda x: x[jnp.arange(b), best], every)


def padded_size(num_buffers: int, multiple: int = 32) -> int:
    return multiple * max(1, -(-num_buffers // multiple))


def check_search_args(num_simulations, samples) -> None:
    """ValueError (named after eval_malloc's flags) unless both are integers >= 1."""
    for name, value in (("simulations", num_simulations), ("samples", samples)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name}={value!r} must be an integer >= 1")


def solve_batch(instances: list[Instance], model, params, kind: str = "muzero", num_simulations: int = 64,
                max_considered: int = 16, seed: int = 0, max_buffers: int | None = None,
                q_scale: float = 1.0, samples: int = 1) -> list[np.ndarray]:
    """Plays every instance (one batch per padded size) with deterministic search (Gumbel noise 0), or
    keeps the best of that and ``samples - 1`` Gumbel-noised episodes (:func:`_play_final`). Returns int64
    offsets in each instance's buffer order (-1 slow)."""
    if kind not in SEARCHES:
        raise ValueError(f"solver kind={kind!r}; allowed: {', '.join(SEARCHES)}")
    check_search_args(num_simulations, samples)
    groups: dict[int, list[int]] = {}
    for i, inst in enumerate(instances):
        groups.setdefault(max_buffers or padded_size(inst.num_buffers), []).append(i)
    out: list[np.ndarray | None] = [None] * len(instances)
    for n, idx in groups.items():
        batch = game.pad([instances[i] for i in idx], max_buffers=n)
        final = _play_final(model, params, jax.random.PRNGKey(seed), batch, kind, num_simulations,
                            min(max_considered, game.num_actions(n)), float(q_scale), samples)
        final = jax.device_get(final)
        for j, i in enumerate(idx):
            one = jax.tree.map(lambda x: x[j], batch)
            out[i] = game.offsets_in_instance_order(one, jax.tree.map(lambda x: x[j], final))
    return out


Q_SCALES = (0.01, 0.03, 0.1, 0.3, 1.0)


def select_q_scale(instances: list[Instance], model, params, num_simulations: int = 32, max_considered: int = 16,
                   candidates=Q_SCALES) -> tuple[float, dict]:
    """The ``q_scale`` (weight of the search's Q-values against the prior, see :func:`search`) of highest mean
    normalised benefit of the deterministic MuZero search on ``instances`` (training ones: the held-out set
    stays unseen; ties: the smaller scale), and that mean for each candidate."""
    from rl.malloc import validate  # local import: validate is NumPy-only and not needed for training

    means = {}
    for q in candidates:
        offsets = solve_batch(instances, model, params, "muzero", num_simulations, max_considered, q_scale=q)
        means[q] = float(np.mean([validate.normalised_benefit(i, o) for i, o in zip(instances, offsets)]))
    best = max(candidates, key=lambda q: (means[q], -q))
    return best, {str(q): v for q, v in means.items()}


def solve(instance: Instance, params=None, model=None, kind: str = "muzero", num_simulations: int = 64,
          max_considered: int = 16, seed: int = 0) -> np.ndarray:
    """Offsets (int64 [n], -1 slow, in the instance's buffer order) chosen by the search; defaults to the
    shipped network (``rl/malloc/trained``)."""
    if params is None or model is None:
        model, params, _ = load_network()
    return solve_batch([instance], model, params, kind, num_simulations, max_considered, seed)[0]


# --------------------------------------------------------------------------- shipped network

def save_network(directory, params, net_cfg: MuZeroNetConfig, info: dict) -> None:
    """Writes ``muzero.msgpack`` (flax.serialization) and ``muzero.json`` (net config + provenance)."""
    export.save(directory, "muzero", params, "net_config", net_cfg, info)


def load_network(directory=None):
    """(model, params, info) from a directory written by :func:`save_network` (default: the shipped one)."""
    def build(config: dict):
        model = make_model(MuZeroNetConfig(**config))
        return model, init_params(model, jax.random.PRNGKey(0))
    return export.load(pathlib.Path(directory or TRAINED_DIR), "muzero", "net_config", build,
                       "scripts/train_malloc.py")
