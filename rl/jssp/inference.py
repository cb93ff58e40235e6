"""Running a trained dispatching policy: the greedy decision, sampling, and jitted batch solvers.

Tassel, Gebser & Schekotihin (ICAPS'23), Sec. 4: at inference, beta schedules are sampled in parallel and
the best is kept (:func:`make_solver` with ``samples`` > 0, then :func:`best_of`). The greedy policy reads
the No-Op as a separate decision, taken only above a threshold (:func:`greedy_action`); the threshold and
the sampling temperature are chosen on validation instances (:mod:`rl.jssp.tuning`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from models.attention import NEG
from models.jssp_policy import JobShopPolicy
from rl.jssp import env


def greedy_action(logits: jax.Array, noop_threshold: float | None = None) -> jax.Array:
    """The greedy decision. ``noop_threshold=None``: the argmax over jobs and the No-Op. Otherwise the
    decision is read as two levels, wait or dispatch, then which job: wait only if the No-Op's
    probability exceeds ``noop_threshold`` (1.0: never wait), else the most likely job. With a flat
    argmax the No-Op, whose probability is not split among jobs, wins too often: imitating CP-SAT's
    schedules gives it ~15-20 % mass in every state (they delay operations often), and a greedy
    schedule that waits whenever no single job is more likely than that is poor."""
    if noop_threshold is None:
        return jnp.argmax(logits)
    J = logits.shape[-1] - 1
    wait = jax.nn.softmax(logits)[J] > noop_threshold
    return jnp.where(wait, J, jnp.argmax(logits[:J]))


def without_noop(logits: jax.Array) -> jax.Array:
    """Logits with the No-Op (last) removed from the choice: a distribution over the jobs only (a running
    instance always has a legal job: the environment advances time when none can start)."""
    return logits.at[..., -1].set(NEG)


def never_waits(noop_threshold: float | None) -> bool:
    """Whether a No-Op threshold means "never wait" (1.0): such a policy (e.g. a self-labelled one, whose
    No-Op output is untrained) neither waits greedily nor samples the No-Op."""
    return noop_threshold is not None and noop_threshold >= 1.0


def _policy_rollout(model: JobShopPolicy, params, problem: env.Problem, key, greedy: bool,
                    noop_threshold: float | None = None, temperature: float = 1.0) -> env.State:
    def choose(p, s, k):
        logits, _ = model.apply({"params": params}, env.observe(p, s, model.cfg.window))
        if greedy:
            return greedy_action(logits, noop_threshold)
        return jax.random.categorical(k, (without_noop(logits) if never_waits(noop_threshold) else logits)
                                      / temperature)

    return env.rollout(problem, choose, key)


def make_solver(model: JobShopPolicy, noop_threshold: float | None = None, temperature: float = 1.0):
    """``solve(params, machines, durations, key, samples) -> final states [samples]`` (jitted).

    ``samples == 0`` is the greedy policy (one schedule, :func:`greedy_action` with ``noop_threshold``);
    otherwise ``samples`` schedules are sampled in parallel (vmap) from softmax(logits / ``temperature``),
    among the jobs only when the threshold is 1 (:func:`never_waits`), and all are returned; pick the best
    with :func:`best_of`.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    def solve(params, machines, durations, key, samples: int):
        problem = env.Problem(machines, durations)
        if samples == 0:
            return jax.tree.map(lambda x: x[None], _policy_rollout(model, params, problem, key, True,
                                                                   noop_threshold))
        keys = jax.random.split(key, samples)
        return jax.vmap(lambda k: _policy_rollout(model, params, problem, k, False, noop_threshold,
                                                  temperature))(keys)

    return jax.jit(solve, static_argnames="samples")


def best_of(states: env.State) -> tuple[int, np.ndarray]:
    """(makespan, start times) of the best finished schedule of a batch of final states."""
    start = np.asarray(states.start)
    cmax = np.asarray(states.job_ready).max(-1)
    cmax = np.where((start >= 0).all((-1, -2)), cmax, np.iinfo(cmax.dtype).max)  # NumPy 2.5 refuses a wider int
    i = int(np.argmin(cmax))
    return int(cmax[i]), start[i]


def make_batch_greedy(model: JobShopPolicy, noop_threshold: float | None = None):
    """``greedy(params, machines [B,J,M], durations [B,J,M]) -> final states [B]`` (jitted)."""
    def greedy(params, machines, durations):
        return jax.vmap(lambda m, d: _policy_rollout(model, params, env.Problem(m, d), jax.random.PRNGKey(0),
                                                     True, noop_threshold))(machines, durations)

    return jax.jit(greedy)
