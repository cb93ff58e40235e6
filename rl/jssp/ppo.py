"""PPO training of the dispatching policy in the JAX environment, with CP-SAT-improved demonstrations.

Tassel, Gebser & Schekotihin (ICAPS'23), Sec. 4: a policy over the CP environment's legal jobs (and the
No-Op) trained by policy gradient; the CP solver, hinted with the agent's own schedules, returns better
schedules that serve as an extra learning signal.

* PPO (Schulman et al. 2017): clipped surrogate ``-min(r A, clip(r, 1-eps, 1+eps) A)`` (eq. 7), value
  loss and entropy bonus, generalised advantage estimation (Schulman et al. 2016, eq. 16) on the
  environment's dense reward (decrease of the makespan lower bound).
* CP-SAT signal: every ``cpsat_every`` iterations the greedy agent schedules ``cpsat_instances`` fresh
  random instances, CP-SAT improves them (hint = the agent's schedule, ``cpsat_time_limit`` s), and the
  improved schedules become action sequences (``cpsat.schedule_to_actions``) on which a behaviour-
  cloning cross-entropy (weight ``bc_coef``) is added to the PPO loss; like the rollout's states, the
  demonstrations' states are shuffled into the minibatches, each seen once per epoch. Early in training the policy is
  far from the solver's schedules and imitation is the cheapest signal, so the weight starts at
  ``bc_boost * bc_coef`` and decays linearly to ``bc_coef`` (:func:`bc_weight`).
* Reward normalisation: the environment's reward (decrease of the makespan lower bound / largest
  duration) is rescaled by ``largest duration / LB_0`` (:func:`normalise_rewards`), so an episode's
  return is ``-(C_max - LB_0) / LB_0``, a relative gap whose scale does not grow with the instance.
* The learning rate follows a cosine decay to ``lr_end_frac * lr`` over ``lr_decay_steps`` iterations.

One training iteration (sample instances, roll out, GAE, epochs x minibatches of PPO updates) is a pure
function ``train_step(state, demos) -> (state, metrics)``, jitted once. The training run around it (size
curriculum, validation, model selection, export) is :mod:`rl.jssp.train`.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.jssp_policy import JobShopPolicy
from rl.jssp import cpsat, env, inference, instances, policy_io
from training.run import TrainState


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """One PPO training iteration's settings (one instance size).

    num_jobs: Jobs of the random training instances.
    num_machines: Machines of the random training instances.
    batch: Instances (environments) per iteration (self-labelling too).
    rollout_factor: Rollout length in units of J*M steps, No-Ops included (self-labelling's with label_waits).
    epochs: PPO (or self-labelling) epochs per iteration.
    minibatches: PPO (or self-labelling) minibatches per epoch.
    gamma: Discount factor.
    gae_lambda: GAE lambda.
    clip_eps: PPO clipping range of the probability ratio.
    vf_coef: Weight of the value loss.
    ent_coef: Entropy bonus.
    bc_coef: Weight of the CP-SAT demonstration cross-entropy.
    lr: Adam learning rate (self-labelling too).
    lr_decay_steps: Cosine-decay the learning rate over this many iterations (0: constant).
    lr_end_frac: Final learning rate as a fraction of lr (with a decay).
    max_grad_norm: Global gradient-norm clip.
    cpsat_instances: Demonstrations per refresh (0: no CP-SAT signal).
    normalise_reward: Rescale rewards so that a return is the relative gap (LB_0 - C_max) / LB_0
      (see normalise_rewards).
    """
    num_jobs: int = 10
    num_machines: int = 10
    batch: int = 8
    rollout_factor: float = 1.25
    epochs: int = 2
    minibatches: int = 4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.005
    bc_coef: float = 1.0
    lr: float = 3e-4
    lr_decay_steps: int = 0
    lr_end_frac: float = 0.1
    max_grad_norm: float = 1.0
    cpsat_instances: int = 4
    normalise_reward: bool = False

    def __post_init__(self):
        for name in ("num_jobs", "num_machines", "batch", "epochs", "minibatches"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if not isinstance(self.cpsat_instances, int) or self.cpsat_instances < 0:
            raise ValueError(f"cpsat_instances={self.cpsat_instances!r} must be an integer >= 0")
        if not self.rollout_factor >= 1.0:
            raise ValueError(f"rollout_factor={self.rollout_factor} must be >= 1 (each job needs J*M dispatches)")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps={self.clip_eps} must be in (0, 1)")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if not isinstance(self.lr_decay_steps, int) or self.lr_decay_steps < 0:
            raise ValueError(f"lr_decay_steps={self.lr_decay_steps!r} must be an integer >= 0")
        if not 0 < self.lr_end_frac <= 1:
            raise ValueError(f"lr_end_frac={self.lr_end_frac} must be in (0, 1]")

    @property
    def rollout_len(self) -> int:
        return int(round(self.rollout_factor * self.num_jobs * self.num_machines))


def lr_schedule(cfg: PPOConfig) -> optax.Schedule:
    """Learning rate per optimiser update: cosine from ``lr`` to ``lr_end_frac * lr`` over
    ``lr_decay_steps`` iterations (``epochs * minibatches`` updates each), constant when 0."""
    if not cfg.lr_decay_steps:
        return optax.constant_schedule(cfg.lr)
    return optax.cosine_decay_schedule(cfg.lr, cfg.lr_decay_steps * cfg.epochs * cfg.minibatches,
                                       alpha=cfg.lr_end_frac)


def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr_schedule(cfg)))


def bc_weight(step: int, bc_boost: float, boost_steps: int) -> float:
    """Multiplier of ``bc_coef`` at iteration ``step`` (1-based): ``bc_boost`` at the start, decaying
    linearly to 1 at ``boost_steps`` (1 throughout when ``boost_steps`` is 0)."""
    if boost_steps <= 0:
        return 1.0
    frac = min(max(step - 1, 0) / boost_steps, 1.0)
    return float(bc_boost + (1.0 - bc_boost) * frac)


def init_state(model, optimizer, seed: int) -> TrainState:
    """Step 0 of PPO training: fresh parameters and optimiser state, and the RNG key, from ``seed``."""
    pkey, rng = jax.random.split(jax.random.PRNGKey(seed))
    params = policy_io.init_params(model, pkey)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng)


def empty_demos(cfg: PPOConfig) -> dict:
    """A demonstration batch of weight 0 (the signature of ``train_step`` when CP-SAT is off)."""
    D = max(cfg.cpsat_instances, 1)
    J, M, T = cfg.num_jobs, cfg.num_machines, cfg.rollout_len
    return {"machines": np.tile(np.arange(M, dtype=np.int32), (D, J, 1)),
            "durations": np.ones((D, J, M), np.int32), "actions": np.full((D, T), -1, np.int32),
            "weight": np.zeros((), np.float32)}


def cpsat_demonstrations(solver, params, cfg: PPOConfig, rng: np.random.Generator,
                         time_limit_s: float) -> tuple[dict, float]:
    """Greedy agent schedules on fresh random instances, improved by CP-SAT (hinted), as action sequences
    (a batch like :func:`empty_demos`', of weight 1), and CP-SAT's mean relative gain over the agent."""
    D, J, M, T = cfg.cpsat_instances, cfg.num_jobs, cfg.num_machines, cfg.rollout_len
    out = empty_demos(cfg)
    gains = []
    for i in range(D):
        inst = instances.random_instance(rng, J, M)
        greedy = solver(params, inst.machines, inst.durations, jax.random.PRNGKey(0), 0)
        agent_cmax, start = inference.best_of(greedy)
        res = cpsat.solve(inst.machines, inst.durations, time_limit_s=time_limit_s, hint=start)
        actions = cpsat.schedule_to_actions(inst.machines, inst.durations, res.start_times)[:T]
        out["machines"][i], out["durations"][i] = inst.machines, inst.durations
        out["actions"][i, :len(actions)] = actions
        gains.append((agent_cmax - res.makespan) / res.makespan)
    out["weight"] = np.ones((), np.float32)
    return out, float(np.mean(gains))


def _log_prob(logits, actions):
    logp = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(logp, actions[..., None], -1)[..., 0], logp


class PPOTerms(NamedTuple):
    """The PPO loss terms of a minibatch (weighted means over its alive states)."""
    pg_loss: jax.Array    # -L^CLIP
    v_loss: jax.Array     # (V(s) - V^targ)^2
    entropy: jax.Array    # entropy of the policy over the legal actions
    clip_frac: jax.Array  # share of states whose ratio lies outside [1 - clip_eps, 1 + clip_eps]


def ppo_loss_terms(logits: jax.Array, value: jax.Array, actions: jax.Array, old_logp: jax.Array, adv: jax.Array,
                   ret: jax.Array, legal: jax.Array, weight: jax.Array, clip_eps: float) -> PPOTerms:
    """PPO's loss terms (Schulman et al. 2017) from the policy/value outputs on a minibatch.

    Shapes: ``logits`` [N, A] (illegal actions at ``NEG``), ``legal`` [N, A] bool; ``value``, ``actions``,
    ``old_logp`` (log-probability of ``actions`` under the rollout's policy), ``adv``, ``ret`` (value
    targets) and ``weight`` (1 for a state of a running episode, 0 otherwise) [N].

    * ``pg_loss`` is ``-L^CLIP`` (their Eq. 7): with ``r = pi(a|s) / pi_old(a|s)``,
      ``-E[min(r A, clip(r, 1 - eps, 1 + eps) A)]``;
    * ``v_loss`` is the squared-error value term ``L^VF = (V(s) - V^targ)^2`` and ``entropy`` the entropy
      bonus ``S[pi](s)`` of their Eq. 9 (the caller combines them: ``pg_loss + c1 v_loss - c2 entropy``);
    * ``clip_frac``: share of states with ``|r - 1| > eps`` (a diagnostic).

    Every term is the ``weight``-weighted mean over the minibatch.
    """
    logp, logp_all = _log_prob(logits, actions)
    ratio = jnp.exp(logp - old_logp)
    pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    entropy = -jnp.sum(jnp.where(legal, jnp.exp(logp_all) * logp_all, 0.0), -1)
    w = weight.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    return PPOTerms(pg_loss=(pg * w).sum() / n, v_loss=(jnp.square(value - ret) * w).sum() / n,
                    entropy=(entropy * w).sum() / n, clip_frac=((jnp.abs(ratio - 1) > clip_eps) * w).sum() / n)


def replay_observations(problems: env.Problem, actions: jax.Array, window: int) -> tuple[dict, jax.Array]:
    """Observations along given action sequences ([B, T], -1 = padding); returns (obs [T, B, ...], mask)."""
    def body(states, a):
        obs = env.batch_observe(problems, states, window)
        valid = (a >= 0) & ~env.batch_is_done(problems, states)
        states, _, _ = env.batch_step(problems, states, jnp.where(valid, a, 0))
        return states, (obs, valid)

    _, (obs, mask) = jax.lax.scan(body, env.batch_reset(problems), actions.T)
    return obs, mask


def normalise_rewards(problems: env.Problem, rewards: jax.Array) -> jax.Array:
    """Rewards [T, B] (lower-bound decrease / largest duration) rescaled by largest duration / LB_0, so
    that an episode's return is ``(LB_0 - C_max) / LB_0``, independent of the instance's size."""
    lb0 = env.batch_initial_lower_bound(problems).astype(jnp.float32)
    scale = jnp.max(problems.durations, (1, 2)).astype(jnp.float32)
    return rewards * scale / jnp.maximum(lb0, 1.0)


def make_loss_fn(model: JobShopPolicy, cfg: PPOConfig):
    """``loss_fn(params, mb, demo_obs, demo_actions, demo_mask, demo_weight) -> (loss, metrics)``: the loss of
    one PPO minibatch (``mb``: ``obs``, ``a``, ``logp``, ``adv``, ``ret``, ``alive``), i.e.
    ``pg_loss + vf_coef * v_loss - ent_coef * entropy`` (:func:`ppo_loss_terms`) plus the CP-SAT
    demonstrations' behaviour-cloning cross-entropy weighted by ``bc_coef * demo_weight``."""
    def loss_fn(params, mb, demo_obs, demo_actions, demo_mask, demo_weight):
        logits, value = model.apply({"params": params}, mb["obs"])
        terms = ppo_loss_terms(logits, value, mb["a"], mb["logp"], mb["adv"], mb["ret"], mb["obs"]["legal"],
                               mb["alive"], cfg.clip_eps)
        d_logits, _ = model.apply({"params": params}, demo_obs)
        d_logp, _ = _log_prob(d_logits, jnp.maximum(demo_actions, 0))
        dm = demo_mask.astype(jnp.float32)
        bc = -(d_logp * dm).sum() / jnp.maximum(dm.sum(), 1.0)
        loss = (terms.pg_loss + cfg.vf_coef * terms.v_loss - cfg.ent_coef * terms.entropy
                + cfg.bc_coef * demo_weight * bc)
        return loss, {"pg_loss": terms.pg_loss, "v_loss": terms.v_loss, "entropy": terms.entropy, "bc_loss": bc,
                      "clip_frac": terms.clip_frac}

    return loss_fn


def make_train_step(model: JobShopPolicy, optimizer: optax.GradientTransformation, cfg: PPOConfig,
                    distribution: instances.Distribution = instances.DISTRIBUTIONS["taillard"]):
    W = model.cfg.window
    T, B = cfg.rollout_len, cfg.batch

    def rollout(params, problems, key):
        def body(states, k):
            obs = env.batch_observe(problems, states, W)
            logits, value = model.apply({"params": params}, obs)
            a = jax.random.categorical(k, logits)
            logp, _ = _log_prob(logits, a)
            alive = ~env.batch_is_done(problems, states)
            states, r, done = env.batch_step(problems, states, a)
            return states, {"obs": obs, "a": a, "logp": logp, "value": value, "r": r * alive, "alive": alive,
                            "done": done}

        states, traj = jax.lax.scan(body, env.batch_reset(problems), jax.random.split(key, T))
        _, last_value = model.apply({"params": params}, env.batch_observe(problems, states, W))
        last_value = jnp.where(env.batch_is_done(problems, states), 0.0, last_value)
        return states, traj, last_value

    def gae(traj, last_value):
        def body(carry, x):
            next_adv, next_value = carry
            nonterminal = 1.0 - x["done"].astype(jnp.float32)
            delta = x["r"] + cfg.gamma * next_value * nonterminal - x["value"]
            adv = delta + cfg.gamma * cfg.gae_lambda * nonterminal * next_adv
            adv = jnp.where(x["alive"], adv, 0.0)
            return (adv, jnp.where(x["alive"], x["value"], next_value)), adv

        _, adv = jax.lax.scan(body, (jnp.zeros(B), last_value), traj, reverse=True)
        return adv, adv + traj["value"]

    loss_fn = make_loss_fn(model, cfg)

    def train_step(state: TrainState, demos: dict):
        rng, k_inst, k_roll, k_perm = jax.random.split(state.rng, 4)
        machines, durations = instances.generate_batch_jax(k_inst, B, cfg.num_jobs, cfg.num_machines, distribution)
        problems = env.Problem(machines, durations)
        final, traj, last_value = rollout(state.params, problems, k_roll)
        if cfg.normalise_reward:
            traj = dict(traj, r=normalise_rewards(problems, traj["r"]))
        adv, ret = gae(traj, last_value)
        alive = traj["alive"]
        mean = (adv * alive).sum() / jnp.maximum(alive.sum(), 1)
        std = jnp.sqrt((jnp.square(adv - mean) * alive).sum() / jnp.maximum(alive.sum(), 1))
        data = dict(traj, adv=(adv - mean) / (std + 1e-8), ret=ret)
        data = jax.tree.map(lambda x: x.reshape((T * B,) + x.shape[2:]), data)
        demo_problems = env.Problem(demos["machines"], demos["durations"])
        demo_obs, demo_mask = replay_observations(demo_problems, demos["actions"], W)
        demo = {"obs": demo_obs, "a": demos["actions"].T, "mask": demo_mask}
        demo = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), demo)
        n_demo = demo["a"].shape[0] // cfg.minibatches * cfg.minibatches

        def epoch(carry, key):
            params, opt_state = carry
            k_data, k_demo = jax.random.split(key)
            perm = jax.random.permutation(k_data, T * B).reshape(cfg.minibatches, -1)
            # each demonstration state joins one minibatch per epoch, like the rollout's states
            demo_perm = jax.random.permutation(k_demo, demo["a"].shape[0])[:n_demo].reshape(cfg.minibatches, -1)

            def minibatch(carry, idx):
                params, opt_state = carry
                (i, j) = idx
                mb = jax.tree.map(lambda x: x[i], data)
                dmb = jax.tree.map(lambda x: x[j], demo)
                (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                    params, mb, dmb["obs"], dmb["a"], dmb["mask"], demos["weight"])
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), dict(aux, grad_norm=optax.tree.norm(grads))

            return jax.lax.scan(minibatch, (params, opt_state), (perm, demo_perm))

        (params, opt_state), aux = jax.lax.scan(epoch, (state.params, state.opt_state),
                                                jax.random.split(k_perm, cfg.epochs))
        metrics = jax.tree.map(jnp.mean, aux)
        cmax = env.batch_makespan(problems, final).astype(jnp.float32)
        finished = env.batch_is_done(problems, final)
        metrics.update(train_makespan=jnp.sum(jnp.where(finished, cmax, 0)) / jnp.maximum(finished.sum(), 1),
                       finished_frac=finished.mean(), noop_frac=(
                           (traj["a"] == cfg.num_jobs) * alive).sum() / jnp.maximum(alive.sum(), 1),
                       episode_return=traj["r"].sum(0).mean(), lr=lr_schedule(cfg)(
                           state.step * cfg.epochs * cfg.minibatches))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    return train_step
