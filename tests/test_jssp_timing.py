"""The job-shop environment's timing rule (rl/jssp/env.py) on a 3 x 3 instance solved by hand.

The rule (env.py's docstring): at the current time t an action dispatches the next operation of a job
whose earliest start max(job predecessor's end, machine's free time) is <= t, and the operation starts
at t; the No-Op moves t to the next event (the smallest earliest start > t); when nothing can start at t
the time advances on its own to the smallest earliest start. So every operation starts at
max(job predecessor end, machine free time, t) = t, never before the current time.

Along the way the propagated earliest starts (``env.propagate``), the makespan lower bound
(``env.lower_bound``), the reward (the bound's decrease / the largest duration) and the observation's
earliest-start feature are checked against hand-computed values after every step.
"""
import jax
import numpy as np

from rl.jssp import env

# job j's operations in order: (machine, duration)
#   job 0: (m0, 3) (m1, 2) (m2, 2)
#   job 1: (m1, 2) (m0, 4) (m2, 2)
#   job 2: (m2, 4) (m1, 3) (m0, 1)
MACHINES = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]], np.int32)
DURATIONS = np.array([[3, 2, 2], [2, 4, 2], [4, 3, 1]], np.int32)
NOOP = 3
SCALE = 4  # the reward's scale: the largest duration

# (action, start of the dispatched operation, t after the step), worked by hand:
# est(j) = max(end of job j's last operation, free time of its next operation's machine).
STEPS = [
    (0, 0, 0),     # t=0: job 0 op 0 on m0: max(0, 0, t=0) = 0, ends 3 (m0 free at 3)
    (1, 0, 0),     # t=0: job 1 op 0 on m1: max(0, 0, 0) = 0, ends 2 (m1 free at 2)
    (NOOP, None, 3),  # No-Op: est = (job0 on m1: max(3, 2) = 3, job1 on m0: max(2, 3) = 3, job2 on m2: 0);
                      # next event = smallest est > 0 = 3, so t = 3 (job 2 stays ready since 0)
    (2, 3, 3),     # t=3: job 2 op 0 on m2: max(0, 0, t=3) = 3 (NOT 0: it was ready, but the time is 3), ends 7
    (0, 3, 3),     # t=3: job 0 op 1 on m1: max(3, 2, 3) = 3, ends 5
    (1, 3, 7),     # t=3: job 1 op 1 on m0: max(2, 3, 3) = 3, ends 7; now est = (job0 on m2: max(5, 7) = 7,
                   # job1 on m2: max(7, 7) = 7, job2 on m1: max(7, 5) = 7): nothing at 3, t advances to 7
    (2, 7, 7),     # t=7: job 2 op 1 on m1: max(7, 5, 7) = 7, ends 10
    (0, 7, 9),     # t=7: job 0 op 2 on m2: max(5, 7, 7) = 7, ends 9 (job 0 done); est = (job1 on m2:
                   # max(7, 9) = 9, job2 on m0: max(10, 7) = 10): t advances to 9
    (1, 9, 10),    # t=9: job 1 op 2 on m2: max(7, 9, 9) = 9, ends 11 (job 1 done); t advances to 10
    (2, 10, 10),   # t=10: job 2 op 2 on m0: max(10, 7, 10) = 10, ends 11 (all done)
]
START = np.array([[0, 3, 7],     # job 0: 0-3 on m0, 3-5 on m1, 7-9 on m2
                  [0, 3, 9],     # job 1: 0-2 on m1, 3-7 on m0, 9-11 on m2
                  [3, 7, 10]])   # job 2: 3-7 on m2, 7-10 on m1, 10-11 on m0
MAKESPAN = 11  # max(9, 11, 11): jobs 1 and 2 end at 9 + 2 and 10 + 1

# Propagation (env.propagate), worked by hand: a decided operation keeps its start; an undecided one
# gets est[j, o] = max(end[j, o-1], mach_ready[m(j, o)]) (end = est + duration), chained along the job,
# where mach_ready[m] is the end of m's last DECIDED operation (the current time t plays no part).
# The lower bound is max_j (est[j, 2] + duration[j, 2]). "<- m busy" marks an estimate that the
# machine's free time pushes later than the job's precedence alone would.
EST0 = np.array([[0, 3, 5],      # reset, every machine free at 0: job 0 0 | 0+3 | 3+2, ends 5+2 = 7
                 [0, 2, 6],      # job 1 0 | 0+2 | 2+4, ends 6+2 = 8
                 [0, 4, 7]])     # job 2 0 | 0+4 | 4+3, ends 7+1 = 8
LB0 = 8  # max(7, 8, 8)
# (est after the step, lower bound after the step), one per entry of STEPS
PROPAGATED = [
    # step 0: job 0 op 0 fixed at 0 on m0 (0-3): mach_ready = (m0 3, m1 0, m2 0)
    (np.array([[0, 3, 5],        # job 0: 0 | max(0+3, m1 0) = 3 | max(3+2, m2 0) = 5, ends 7
               [0, 3, 7],        # job 1: 0 | max(0+2, m0 3) = 3 <- m0 busy (precedence alone: 2) |
                                 #   max(3+4, 0) = 7, ends 9
               [0, 4, 7]]), 9),  # job 2: 0 | 4 | max(4+3, m0 3) = 7, ends 8; LB = max(7, 9, 8) = 9 (8 without m0's 3)
    # step 1: job 1 op 0 fixed at 0 on m1 (0-2): mach_ready = (3, 2, 0)
    (np.array([[0, 3, 5],        # job 0: 0 | max(3, m1 2) = 3 | max(5, m2 0) = 5, ends 7
               [0, 3, 7],        # job 1: 0 | max(0+2, m0 3) = 3 <- m0 busy | max(7, m2 0) = 7, ends 9
               [0, 4, 7]]), 9),  # job 2: max(0, m2 0) = 0 | max(4, m1 2) = 4 | max(7, m0 3) = 7, ends 8; LB = 9
    # step 2: No-Op, t = 3; nothing decided, so nothing changes (job 2 op 0 keeps est 0 < t)
    (np.array([[0, 3, 5],
               [0, 3, 7],
               [0, 4, 7]]), 9),  # LB = 9
    # step 3: job 2 op 0 fixed at 3 on m2 (3-7): mach_ready = (3, 2, 7)
    (np.array([[0, 3, 7],        # job 0: 0 | max(3, 2) = 3 | max(3+2, m2 7) = 7 <- m2 busy (alone: 5), ends 9
               [0, 3, 7],        # job 1: 0 | max(2, m0 3) = 3 <- m0 busy | max(3+4, m2 7) = 7, ends 9
               [3, 7, 10]]), 11),  # job 2: 3 | max(3+4, m1 2) = 7 | max(7+3, m0 3) = 10, ends 11; LB = 11
    # step 4: job 0 op 1 fixed at 3 on m1 (3-5): mach_ready = (3, 5, 7)
    (np.array([[0, 3, 7],        # job 0: 0 | 3 | max(3+2, m2 7) = 7 <- m2 busy, ends 9
               [0, 3, 7],        # job 1: 0 | max(2, m0 3) = 3 <- m0 busy | max(7, 7) = 7, ends 9
               [3, 7, 10]]), 11),  # job 2: 3 | max(7, m1 5) = 7 | max(10, 3) = 10, ends 11; LB = 11
    # step 5: job 1 op 1 fixed at 3 on m0 (3-7): mach_ready = (7, 5, 7)
    (np.array([[0, 3, 7],        # job 0: max(5, m2 7) = 7 <- m2 busy, ends 9
               [0, 3, 7],        # job 1: 0 | 3 | max(3+4, m2 7) = 7, ends 9
               [3, 7, 10]]), 11),  # job 2: 3 | max(7, 5) = 7 | max(10, m0 7) = 10, ends 11; LB = 11
    # step 6: job 2 op 1 fixed at 7 on m1 (7-10): mach_ready = (7, 10, 7)
    (np.array([[0, 3, 7],        # job 0: max(5, m2 7) = 7 <- m2 busy, ends 9
               [0, 3, 7],        # job 1: max(7, 7) = 7, ends 9
               [3, 7, 10]]), 11),  # job 2: max(7+3, m0 7) = 10, ends 11; LB = 11
    # step 7: job 0 op 2 fixed at 7 on m2 (7-9): mach_ready = (7, 10, 9)
    (np.array([[0, 3, 7],        # job 0 all decided, ends 9
               [0, 3, 9],        # job 1: max(3+4, m2 9) = 9 <- m2 busy (alone: 7), ends 11
               [3, 7, 10]]), 11),  # job 2: max(10, 7) = 10, ends 11; LB = max(9, 11, 11) = 11
    # step 8: job 1 op 2 fixed at 9 on m2 (9-11): mach_ready = (7, 10, 11)
    (np.array([[0, 3, 7],
               [0, 3, 9],        # job 1 all decided, ends 11
               [3, 7, 10]]), 11),  # job 2: max(10, m0 7) = 10, ends 11; LB = 11
    # step 9: job 2 op 2 fixed at 10 on m0: everything decided, est = START, LB = makespan = 11
    (START, 11),
]
# rewards: -(LB increase) / 4 = step 0: -(9-8)/4 = -0.25, step 3: -(11-9)/4 = -0.5, else 0;
# the return is (LB0 - C_max) / 4 = (8 - 11) / 4 = -0.75
REWARDS = [-0.25, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_hand_solved_schedule_follows_the_timing_rule():
    problem = env.make_problem(MACHINES, DURATIONS)
    step, legal_mask = jax.jit(env.step), jax.jit(env.legal_mask)
    propagate, lower_bound = jax.jit(env.propagate), jax.jit(env.lower_bound)
    observe = jax.jit(env.observe, static_argnums=2)
    state = env.reset(problem)
    np.testing.assert_array_equal(np.asarray(propagate(problem, state)), EST0, err_msg="reset: propagated est")
    assert int(lower_bound(problem, state)) == LB0, f"reset: LB {int(lower_bound(problem, state))}, by hand {LB0}"
    lb_before = LB0
    for i, ((action, start, t_after), (est, lb), reward_hand) in enumerate(zip(STEPS, PROPAGATED, REWARDS)):
        t = int(state.t)
        assert bool(legal_mask(problem, state)[action]), f"step {i}: action {action} is illegal at t={t}"
        job_ready, mach_ready = np.asarray(state.job_ready), np.asarray(state.mach_ready)
        new, reward, done = step(problem, state, action)
        if action != NOOP:
            o = int(state.next_op[action])
            m, d = MACHINES[action, o], DURATIONS[action, o]
            s = int(new.start[action, o])
            assert s == start, f"step {i}: job {action} op {o} starts at {s}, by hand {start}"
            # the rule: max(job predecessor end, machine free time, current time), never before t
            assert s == max(job_ready[action], mach_ready[m], t) and s >= t, f"step {i}: start {s}, t={t}"
            assert int(new.job_ready[action]) == int(new.mach_ready[m]) == s + d
        else:
            np.testing.assert_array_equal(np.asarray(new.start), np.asarray(state.start))  # nothing dispatched
        assert int(new.t) == t_after, f"step {i}: t={int(new.t)} after the step, by hand {t_after}"
        assert bool(done) == (i == len(STEPS) - 1)
        # propagation and lower bound after the step, against the hand-worked tables
        np.testing.assert_array_equal(np.asarray(propagate(problem, new)), est,
                                      err_msg=f"step {i}: propagated earliest starts")
        got_lb = int(lower_bound(problem, new))
        assert got_lb == lb, f"step {i}: lower bound {got_lb}, by hand {lb}"
        # the reward is minus the bound's increase, scaled by the largest duration
        assert reward_hand == -(lb - lb_before) / SCALE
        assert float(reward) == reward_hand, f"step {i}: reward {float(reward)}, by hand {reward_hand}"
        # the observation's earliest-start feature: (est - t) / 4 clipped to [0, 10], over each job's
        # window of next operations (all remaining ones, window = 3)
        ops = np.asarray(observe(problem, new, 3)["ops"])
        t_new, next_op = int(new.t), np.asarray(new.next_op)
        for j in range(3):
            for k in range(3):
                o = next_op[j] + k
                want = np.clip((est[j, o] - t_new) / SCALE, 0.0, 10.0) if o < 3 else 0.0
                assert np.isclose(ops[j, k, 1], want), (f"step {i}: job {j} window {k} est feature {ops[j, k, 1]}, "
                                                        f"want {want}")
        lb_before = lb
        state = new
    assert sum(REWARDS) == (LB0 - MAKESPAN) / SCALE  # the return: (8 - 11) / 4
    np.testing.assert_array_equal(np.asarray(state.start), START)
    assert int(env.makespan(problem, state)) == MAKESPAN
    assert int(env.lower_bound(problem, state)) == MAKESPAN  # the bound is exact once everything is decided
    # the schedule is feasible: job precedence and no overlap on a machine
    end = START + DURATIONS
    assert np.all(START[:, 1:] >= end[:, :-1])
    for m in range(3):
        iv = sorted((START[j, o], end[j, o]) for j in range(3) for o in range(3) if MACHINES[j, o] == m)
        assert all(a[1] <= b[0] for a, b in zip(iv, iv[1:]))
