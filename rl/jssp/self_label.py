"""Self-labelling training of the dispatching policy.

Corsini, Porrello, Calderara & Dell'Amico, "Self-Labeling the Job Shop Scheduling Problem" (ICML 2024;
their solver is SPN): no reward, no critic. For each generated instance the current policy samples ``beta``
complete schedules; the best one (smallest makespan) becomes the pseudo-label, and the policy is trained by
cross-entropy to reproduce it (their self-supervised objective: ``-sum_t log pi(a*_t | s*_t)`` along the
label's trajectory, here averaged over its decisions). As the policy improves, so do its samples and hence its labels.

Here the policy and environment are this package's (:mod:`models.jssp_policy`, :mod:`rl.jssp.env`, whose
action set has the No-Op of Tassel et al.); the label is a whole action sequence, which takes No-Ops only
with ``label_waits`` (see :class:`SelfLabelConfig`). Among the jobs only, every action dispatches one
operation (the environment advances the time by itself when nothing can start), so each sample ends in
exactly ``J * M`` actions, the label search's horizon (:func:`label_horizon`); with ``label_waits`` it is
``rollout_factor * J * M``, and a sample that has not finished by then never becomes a label.

One iteration (generate ``batch`` instances, sample ``batch * beta`` schedules, pick the labels, replay
them to get their states, ``epochs`` x ``minibatches`` cross-entropy updates) is the pure function
``step(state) -> (state, metrics)`` of :func:`make_self_label_step`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from models.jssp_policy import JobShopPolicy
from rl.jssp import env, inference, instances, ppo
from training.run import TrainState


@dataclasses.dataclass(frozen=True)
class SelfLabelConfig:
    """The label search. The iteration's shape (instance size, ``batch``, ``rollout_factor``, ``epochs``,
    ``minibatches``) and optimiser are the PPO settings' (:class:`rl.jssp.ppo.PPOConfig`), shared.

    beta: Schedules sampled per instance for its label (SPN trains with 256 on a GPU).
    label_temperature: Sampling temperature of the label search (SPN: 1).
    label_waits: Let the label search take the No-Op. Off: it samples among the jobs only (non-delay
      schedules, dispatched at the next event) and the loss is over the jobs, so the No-Op's probability is
      not trained; the greedy policy then runs with its No-Op threshold (often 1: never wait). On, labels
      copy the waits of lucky samples and the policy waits more and more (measured: validation gap 47.9 ->
      53.1 % in 20 iterations).
    """
    beta: int = 32
    label_temperature: float = 1.0
    label_waits: bool = False

    def __post_init__(self):
        if not isinstance(self.beta, int) or self.beta < 1:
            raise ValueError(f"beta={self.beta!r} must be an integer >= 1")
        if not self.label_temperature > 0:
            raise ValueError(f"label_temperature={self.label_temperature} must be > 0")


def sample_schedules(model: JobShopPolicy, params, problems: env.Problem, key: jax.Array, length: int,
                     temperature: float, waits: bool = True) -> tuple[jax.Array, env.State]:
    """Samples one action sequence per problem ([N] leading axis) for ``length`` steps, among the jobs only
    unless ``waits``; returns (actions [N, length], -1 once a problem is done, and the final states)."""
    W = model.cfg.window

    def body(states, k):
        logits, _ = model.apply({"params": params}, env.batch_observe(problems, states, W))
        a = jax.random.categorical(k, (logits if waits else inference.without_noop(logits)) / temperature)
        alive = ~env.batch_is_done(problems, states)
        states, _, _ = env.batch_step(problems, states, a)
        return states, jnp.where(alive, a, -1)

    final, actions = jax.lax.scan(body, env.batch_reset(problems), jax.random.split(key, length))
    return actions.T, final


def label_horizon(shape: ppo.PPOConfig, cfg: SelfLabelConfig) -> int:
    """Actions sampled per schedule: ``J * M`` among the jobs only (one dispatch each; a longer horizon only
    pads finished samples, and halving it halves the sampling, most of a step's time), else the
    rollout length (No-Ops included)."""
    return shape.rollout_len if cfg.label_waits else shape.num_jobs * shape.num_machines


def pick_labels(actions: jax.Array, makespans: jax.Array, finished: jax.Array) -> tuple[jax.Array, jax.Array,
                                                                                        jax.Array]:
    """The pseudo-labels: per instance, the finished sample of smallest makespan (the first on ties).

    ``actions`` [B, beta, T], ``makespans`` and ``finished`` [B, beta]. Returns (label actions [B, T], their
    makespans [B], whether the instance has a finished sample at all [B]; without one its label is ignored).
    """
    score = jnp.where(finished, makespans, env.BIG)
    best = jnp.argmin(score, axis=1)
    labels = jnp.take_along_axis(actions, best[:, None, None], 1)[:, 0]
    return labels, jnp.take_along_axis(score, best[:, None], 1)[:, 0], finished.any(1)


def label_cross_entropy(logits: jax.Array, actions: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean ``-log softmax(logits)[a]`` over the decisions where ``mask`` holds (the self-labelling loss)."""
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, jnp.maximum(actions, 0)[..., None], -1)[..., 0]
    m = mask.astype(jnp.float32)
    return (nll * m).sum() / jnp.maximum(m.sum(), 1.0)


def make_self_label_step(model: JobShopPolicy, optimizer: optax.GradientTransformation, shape: ppo.PPOConfig,
                         cfg: SelfLabelConfig, distribution: instances.Distribution):
    """``step(state: TrainState) -> (state, metrics)``: one self-labelling iteration (module docstring) on
    ``shape.batch`` instances of ``shape.num_jobs`` x ``shape.num_machines`` drawn from ``distribution``."""
    B, beta, T, W = shape.batch, cfg.beta, label_horizon(shape, cfg), model.cfg.window

    def loss_fn(params, obs, actions, mask):
        logits, _ = model.apply({"params": params}, obs)
        return label_cross_entropy(logits if cfg.label_waits else inference.without_noop(logits), actions, mask)

    def step(state: TrainState):
        rng, k_inst, k_sample, k_perm = jax.random.split(state.rng, 4)
        machines, durations = instances.generate_batch_jax(k_inst, B, shape.num_jobs, shape.num_machines,
                                                           distribution)
        problems = env.Problem(machines, durations)
        repeated = jax.tree.map(lambda x: jnp.repeat(x, beta, axis=0), problems)
        actions, final = sample_schedules(model, state.params, repeated, k_sample, T, cfg.label_temperature,
                                          cfg.label_waits)
        finished = env.batch_is_done(repeated, final).reshape(B, beta)
        cmax = env.batch_makespan(repeated, final).reshape(B, beta)
        labels, label_cmax, has_label = pick_labels(actions.reshape(B, beta, T), cmax, finished)
        labels = jnp.where(has_label[:, None], labels, -1)
        obs, mask = ppo.replay_observations(problems, labels, W)  # [T, B, ...]
        data = {"obs": obs, "a": labels.T, "mask": mask}
        data = jax.tree.map(lambda x: x.reshape((T * B,) + x.shape[2:]), data)
        n = T * B // shape.minibatches * shape.minibatches

        def epoch(carry, key):
            def minibatch(carry, idx):
                params, opt_state = carry
                mb = jax.tree.map(lambda x: x[idx], data)
                loss, grads = jax.value_and_grad(loss_fn)(params, mb["obs"], mb["a"], mb["mask"])
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), loss

            order = jax.random.permutation(key, T * B)[:n].reshape(shape.minibatches, -1)
            return jax.lax.scan(minibatch, carry, order)

        (params, opt_state), losses = jax.lax.scan(epoch, (state.params, state.opt_state),
                                                   jax.random.split(k_perm, shape.epochs))
        lb0 = env.batch_initial_lower_bound(problems).astype(jnp.float32)
        f = finished.astype(jnp.float32)
        sample_cmax = (cmax * f).sum(1) / jnp.maximum(f.sum(1), 1.0)
        labelled = has_label.astype(jnp.float32)
        per_instance = lambda x: (x * labelled).sum() / jnp.maximum(labelled.sum(), 1.0)  # noqa: E731
        metrics = {"label_loss": losses.mean(), "finished_frac": f.mean(),
                   "label_gap_lb_pct": 100 * per_instance(label_cmax / lb0 - 1),
                   "sample_gap_lb_pct": 100 * per_instance(sample_cmax / lb0 - 1),
                   "label_noop_frac": ((labels == shape.num_jobs).sum() / jnp.maximum((labels >= 0).sum(), 1))}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    return step
