"""Pure-JAX event-driven job-shop environment with CP-style earliest-start propagation.

After Tassel, Gebser & Schekotihin, "An End-to-End Reinforcement Learning Approach for Job-Shop
Scheduling Problems Based on Constraint Programming" (ICAPS'23), Sec. 3: the state is the CP model of
the instance (an interval per operation, job precedence, per-machine no-overlap) in which the decided
operations are fixed; propagation gives every undecided operation its earliest start

    est[j, o] = max(end[j, o-1], ready[m(j, o)])     (precedence + machines' fixed operations)

chained along each job (``propagate``). Time is event-driven: at the current time ``t`` an action either
dispatches the next operation of a job whose earliest start is <= t (it starts at ``t``), or is the
No-Op (index ``num_jobs``), which moves ``t`` to the next event (the smallest earliest start > t).
When nothing can start at ``t`` the time advances on its own, so every non-final state has a legal job.

All functions take one instance and are pure; ``jax.vmap`` batches them (``batch_reset`` etc.).
The reward is the decrease of the propagated makespan lower bound (``lower_bound``), scaled by the
instance's largest duration, so an episode's return is ``(LB_0 - C_max) / scale`` (as in L2D).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BIG = np.int32(2**30)  # a NumPy scalar, not a JAX array: importing this module must not start a backend


@flax.struct.dataclass
class Problem:
    machines: jax.Array  # [J, M] int32, machine of job j's o-th operation
    durations: jax.Array  # [J, M] int32


@flax.struct.dataclass
class State:
    t: jax.Array  # [] int32 current time
    next_op: jax.Array  # [J] int32 index of each job's next undecided operation (M: job finished)
    job_ready: jax.Array  # [J] int32 end of each job's last decided operation
    mach_ready: jax.Array  # [M] int32 end of each machine's last decided operation
    start: jax.Array  # [J, M] int32 start times of decided operations, -1 otherwise
    num_steps: jax.Array  # [] int32 actions taken (No-Ops included)


def make_problem(machines, durations) -> Problem:
    return Problem(jnp.asarray(machines, jnp.int32), jnp.asarray(durations, jnp.int32))


def reset(problem: Problem) -> State:
    J, M = problem.machines.shape
    return State(t=jnp.int32(0), next_op=jnp.zeros(J, jnp.int32), job_ready=jnp.zeros(J, jnp.int32),
                 mach_ready=jnp.zeros(M, jnp.int32), start=jnp.full((J, M), -1, jnp.int32),
                 num_steps=jnp.int32(0))


def job_done(problem: Problem, state: State) -> jax.Array:
    return state.next_op >= problem.machines.shape[1]


def is_done(problem: Problem, state: State) -> jax.Array:
    return jnp.all(job_done(problem, state))


def next_operation(problem: Problem, state: State):
    """(machine, duration) of each job's next operation (last operation's for finished jobs)."""
    o = jnp.minimum(state.next_op, problem.machines.shape[1] - 1)[:, None]
    return (jnp.take_along_axis(problem.machines, o, 1)[:, 0], jnp.take_along_axis(problem.durations, o, 1)[:, 0])


def next_est(problem: Problem, state: State) -> jax.Array:
    """Earliest start of each job's next operation; BIG for finished jobs."""
    m, _ = next_operation(problem, state)
    est = jnp.maximum(state.job_ready, state.mach_ready[m])
    return jnp.where(job_done(problem, state), BIG, est)


def legal_mask(problem: Problem, state: State) -> jax.Array:
    """[J + 1] bool: jobs whose next operation can start now, then the No-Op (legal when an event lies ahead)."""
    est = next_est(problem, state)
    jobs = est <= state.t
    noop = jnp.any((est > state.t) & (est < BIG))
    return jnp.concatenate([jobs, noop[None]])


def propagate(problem: Problem, state: State) -> jax.Array:
    """[J, M] earliest start of every operation: fixed starts for decided ones, propagated otherwise."""
    dur_t, mach_t, start_t = problem.durations.T, problem.machines.T, state.start.T
    op_idx = jnp.arange(problem.machines.shape[1])

    def body(prev_end, xs):
        o, d, m, s = xs
        decided = o < state.next_op
        est = jnp.where(decided, s, jnp.maximum(prev_end, state.mach_ready[m]))
        return est + d, est

    _, est = jax.lax.scan(body, jnp.zeros_like(state.job_ready), (op_idx, dur_t, mach_t, start_t))
    return est.T


def lower_bound(problem: Problem, state: State) -> jax.Array:
    """Makespan lower bound of the partial schedule: max propagated end (= C_max when done)."""
    est = propagate(problem, state)
    return jnp.max(est[:, -1] + problem.durations[:, -1])


def initial_lower_bound(problem: Problem) -> jax.Array:
    """LB_0: the lower bound of the empty schedule (propagation alone: the longest job)."""
    return lower_bound(problem, reset(problem))


def makespan(problem: Problem, state: State) -> jax.Array:
    return jnp.max(state.job_ready)


def _advance_if_stuck(problem: Problem, state: State) -> State:
    est = next_est(problem, state)
    stuck = ~jnp.any(est <= state.t) & ~is_done(problem, state)
    return state.replace(t=jnp.where(stuck, jnp.min(est), state.t))


def step(problem: Problem, state: State, action: jax.Array) -> tuple[State, jax.Array, jax.Array]:
    """Applies ``action`` (a job index, or ``num_jobs`` for the No-Op); returns (state, reward, done).

    The action must be legal (see ``legal_mask``); a finished instance is left unchanged.
    """
    J, M = problem.machines.shape
    done_before = is_done(problem, state)
    lb_before = lower_bound(problem, state)
    est = next_est(problem, state)
    is_noop = action >= J
    j = jnp.clip(action, 0, J - 1)
    o = jnp.minimum(state.next_op[j], M - 1)
    m, d = problem.machines[j, o], problem.durations[j, o]
    s = jnp.maximum(state.t, est[j])
    end = s + d
    dispatched = state.replace(next_op=state.next_op.at[j].add(1), job_ready=state.job_ready.at[j].set(end),
                               mach_ready=state.mach_ready.at[m].set(end), start=state.start.at[j, o].set(s))
    next_event = jnp.min(jnp.where(est > state.t, est, BIG))
    waited = state.replace(t=jnp.where(next_event < BIG, next_event, state.t))
    new = jax.tree.map(lambda a, b: jnp.where(is_noop, a, b), waited, dispatched)
    new = _advance_if_stuck(problem, new).replace(num_steps=state.num_steps + 1)
    new = jax.tree.map(lambda a, b: jnp.where(done_before, a, b), state, new)
    scale = jnp.max(problem.durations).astype(jnp.float32)
    reward = (lb_before - lower_bound(problem, new)).astype(jnp.float32) / scale
    return new, reward, is_done(problem, new)


def observe(problem: Problem, state: State, window: int) -> dict:
    """The paper's observation: each job's window of next operations and a job-job conflict mask.

    ``ops`` [J, window, 5]: duration, earliest start - t, machine ready - t (all / max duration, clipped
    to [0, 10]), remaining work of the operation's machine (fraction), 1 for a real operation.
    ``ops_valid`` [J, window]; ``jobs`` [J, 5]: remaining work, remaining operations (fractions), legal,
    idle time of the job, remaining work / the largest remaining work of any job (what the MWKR and
    FDD/MWKR rules rank by, which the job's own fraction does not give); ``conflict`` [J, J]: unfinished
    jobs whose next operations share a machine; ``legal`` [J + 1] (the No-Op last).
    """
    J, M = problem.machines.shape
    scale = jnp.max(problem.durations).astype(jnp.float32)
    est = propagate(problem, state)
    op_idx = state.next_op[:, None] + jnp.arange(window)[None, :]
    valid = op_idx < M
    oc = jnp.minimum(op_idx, M - 1)
    w_dur = jnp.take_along_axis(problem.durations, oc, 1).astype(jnp.float32)
    w_est = jnp.take_along_axis(est, oc, 1)
    w_mach = jnp.take_along_axis(problem.machines, oc, 1)
    decided = jnp.arange(M)[None, :] < state.next_op[:, None]
    remaining = jnp.where(decided, 0, problem.durations).astype(jnp.float32)
    mach_load = jnp.zeros(M).at[problem.machines.reshape(-1)].add(remaining.reshape(-1))
    mach_total = jnp.zeros(M).at[problem.machines.reshape(-1)].add(problem.durations.reshape(-1).astype(jnp.float32))
    rel = lambda x: jnp.clip(x.astype(jnp.float32) / scale, 0.0, 10.0)  # noqa: E731
    ops = jnp.stack([w_dur / scale, rel(w_est - state.t), rel(state.mach_ready[w_mach] - state.t),
                     mach_load[w_mach] / jnp.maximum(mach_total[w_mach], 1.0), valid.astype(jnp.float32)], -1)
    ops = ops * valid[..., None]
    legal = legal_mask(problem, state)
    done_j = job_done(problem, state)
    total = jnp.maximum(jnp.sum(problem.durations, 1).astype(jnp.float32), 1.0)
    work_left = remaining.sum(1)
    jobs = jnp.stack([work_left / total, (M - state.next_op) / M, legal[:J].astype(jnp.float32),
                      rel(jnp.where(done_j, 0, state.t - state.job_ready)),
                      work_left / jnp.maximum(jnp.max(work_left), 1.0)], -1)
    m_next = w_mach[:, 0]
    conflict = (m_next[:, None] == m_next[None, :]) & ~done_j[:, None] & ~done_j[None, :]
    return {"ops": ops, "ops_valid": valid, "jobs": jobs, "conflict": conflict, "legal": legal}


# Batched versions (vmap over a leading instance axis).
batch_reset = jax.vmap(reset)
batch_step = jax.vmap(step)
batch_legal_mask = jax.vmap(legal_mask)
batch_is_done = jax.vmap(is_done)
batch_makespan = jax.vmap(makespan)
batch_initial_lower_bound = jax.vmap(initial_lower_bound)


def batch_observe(problems: Problem, states: State, window: int) -> dict:
    return jax.vmap(lambda p, s: observe(p, s, window))(problems, states)


def rollout(problem: Problem, choose, key: jax.Array, max_steps: int | None = None) -> State:
    """Runs ``choose(problem, state, key) -> action`` from the reset state until the instance is done.

    A ``lax.while_loop``; vmap it for a batch. ``max_steps`` (default ``J * M * (J + 1)``: at most J
    consecutive No-Ops can precede each dispatch) bounds the loop.
    """
    J, M = problem.machines.shape
    limit = J * M * (J + 1) if max_steps is None else max_steps

    def cond(carry):
        state, _ = carry
        return ~is_done(problem, state) & (state.num_steps < limit)

    def body(carry):
        state, key = carry
        key, sub = jax.random.split(key)
        state, _, _ = step(problem, state, choose(problem, state, sub))
        return state, key

    state, _ = jax.lax.while_loop(cond, body, (reset(problem), key))
    return state


def random_legal_action(problem: Problem, state: State, key: jax.Array) -> jax.Array:
    """A uniformly random legal action (No-Op included when legal): the test policy."""
    legal = legal_mask(problem, state)
    return jax.random.categorical(key, jnp.where(legal, 0.0, -jnp.inf))
