"""Static dispatching rules run in the same event-driven environment (``rl.jssp.env``).

At each decision the rule picks, among the jobs whose next operation can start now, the one of best
priority (ties: lowest job index); rules never take the No-Op, so they build non-delay schedules.
Definitions as in the learning-to-dispatch literature (e.g. Zhang et al., L2D, NeurIPS'20, Sec. 5):

* SPT: shortest processing time of the next operation;
* MWKR: most work remaining (total duration of the job's undecided operations);
* MOPNR: most operations remaining;
* FDD/MWKR: smallest ratio of flow due date (the job's processing time up to and including the next
  operation) to work remaining.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rl.jssp import env

RULES = ("spt", "mwkr", "mopnr", "fdd_mwkr")


def priority(problem: env.Problem, state: env.State, rule: str) -> jax.Array:
    """[J] float priority (larger is better) of each job's next operation under ``rule``."""
    J, M = problem.machines.shape
    dur = problem.durations.astype(jnp.float32)
    undecided = jnp.arange(M)[None, :] >= state.next_op[:, None]
    work_left = jnp.sum(jnp.where(undecided, dur, 0.0), 1)
    if rule == "spt":
        _, d = env.next_operation(problem, state)
        return -d.astype(jnp.float32)
    if rule == "mwkr":
        return work_left
    if rule == "mopnr":
        return (M - state.next_op).astype(jnp.float32)
    if rule == "fdd_mwkr":
        upto_next = jnp.arange(M)[None, :] <= state.next_op[:, None]
        fdd = jnp.sum(jnp.where(upto_next, dur, 0.0), 1)
        return -fdd / jnp.maximum(work_left, 1e-6)
    raise ValueError(f"rule={rule!r}; allowed: {', '.join(RULES)}")


def rule_action(problem: env.Problem, state: env.State, rule: str) -> jax.Array:
    legal = env.legal_mask(problem, state)[:-1]
    return jnp.argmax(jnp.where(legal, priority(problem, state, rule), -jnp.inf))


@functools.partial(jax.jit, static_argnames="rule")
def solve_batch(machines: jax.Array, durations: jax.Array, rule: str) -> env.State:
    """Final states of ``rule`` on a batch of same-size instances ([B, J, M] arrays)."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}; allowed: {', '.join(RULES)}")

    def one(m, d):
        problem = env.Problem(m, d)
        J, M = m.shape
        return env.rollout(problem, lambda p, s, k: rule_action(p, s, rule), jax.random.PRNGKey(0),
                           max_steps=J * M)

    return jax.vmap(one)(machines, durations)


def solve(machines, durations, rule: str):
    """(makespan, start_times) of ``rule`` on one instance, as NumPy values."""
    import numpy as np

    state = solve_batch(jnp.asarray(machines, jnp.int32)[None], jnp.asarray(durations, jnp.int32)[None], rule)
    return int(np.max(state.job_ready[0])), np.asarray(state.start[0])
