"""rl/jssp: reader, validator, JAX environment (vs the validator and the plain-Python env), rules, CP-SAT;
importing the package starts no JAX backend."""
import itertools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.jssp import cpsat, env, instances, pyenv, rules, validate

# Fisher & Thompson (1963) 6x6 instance "ft06" (OR-Library), machines from 0; optimum makespan 55.
FT06 = """6 6
2 1 0 3 1 6 3 7 5 3 4 6
1 8 2 5 4 10 5 10 0 10 3 4
2 5 3 4 5 8 0 9 1 1 4 7
1 5 0 5 2 5 3 3 4 8 5 9
2 9 1 3 4 5 5 4 0 3 3 1
1 3 3 3 5 9 0 10 4 4 2 1
"""


def brute_force_makespan(machines, durations):
    """Optimum by enumerating every machine's job order (permutations), tiny instances only."""
    J, M = machines.shape
    best = None
    for orders in itertools.product(*[list(itertools.permutations(range(J))) for _ in range(M)]):
        # simulate: repeatedly schedule any op whose job and machine predecessors are done
        pos = {m: 0 for m in range(M)}
        next_op = [0] * J
        job_end, mach_end = [0] * J, [0] * M
        progress = True
        while progress:
            progress = False
            for j in range(J):
                o = next_op[j]
                if o < M:
                    m = machines[j, o]
                    if orders[m][pos[m]] == j:
                        s = max(job_end[j], mach_end[m])
                        job_end[j] = mach_end[m] = s + durations[j, o]
                        next_op[j] += 1
                        pos[m] += 1
                        progress = True
        if all(o == M for o in next_op):
            c = max(job_end)
            best = c if best is None else min(best, c)
    return best


# ----------------------------------------------------------------------------- reader
def test_reader_tiny(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("# comment\n2 3\n0 5 1 2 2 7\n\n2 1 0 4 1 3  # trailing\n")
    inst = instances.read_instance(p)
    assert inst.name == "tiny" and inst.size == "2x3"
    np.testing.assert_array_equal(inst.machines, [[0, 1, 2], [2, 0, 1]])
    np.testing.assert_array_equal(inst.durations, [[5, 2, 7], [1, 4, 3]])
    again = instances.parse_text(instances.format_instance(inst))
    np.testing.assert_array_equal(again.machines, inst.machines)
    np.testing.assert_array_equal(again.durations, inst.durations)


@pytest.mark.parametrize("text, line, fragment", [
    ("2 2\n0 1 1 2\n", 2, "2 jobs but the file has 1"),
    ("2 2\n0 1 1 2\n0 1 1 2\n1 1 0 1\n", 4, "2 jobs but the file has 3"),
    ("2 2\n0 1 1 2\n0 1 1\n", 3, "2 'machine duration' pairs"),
    ("2 2\n0 1 2 2\n0 1 1 2\n", 2, "machine 2 out of range"),
    ("2 2\n0 1 1 2\n0 -3 1 2\n", 3, "negative duration -3"),
    ("2 2\n0 1 0 2\n0 1 1 2\n", 2, "more than once"),
    ("2 2 2\n0 1 1 2\n0 1 1 2\n", 1, "2 integers"),
    ("2 x\n", 1, "expected integers"),
    ("", 1, "empty file"),
])
def test_reader_malformed_names_file_and_line(tmp_path, text, line, fragment):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(instances.InstanceFormatError) as err:
        instances.read_instance(p)
    assert f"{p}:{line}:" in str(err.value) and fragment in str(err.value)


def test_taillard_shipped_and_bounds():
    insts = instances.load_taillard()
    bounds = instances.load_bounds()
    assert len(insts) == 80 and set(bounds) == {i.name for i in insts}
    for inst in insts:
        instances.check_arrays(inst.machines, inst.durations, inst.name)
        assert (bounds[inst.name]["lower_bound"] <= bounds[inst.name]["upper_bound"])
        # a trivial lower bound of every instance must not exceed its best known makespan
        assert max(inst.durations.sum(1).max(), np.bincount(inst.machines.ravel(), inst.durations.ravel()).max()) \
            <= bounds[inst.name]["upper_bound"]
    assert sorted({i.size for i in insts}) == ["100x20", "15x15", "20x15", "20x20", "30x15", "30x20", "50x15",
                                               "50x20"]


def test_random_generators_are_valid_instances():
    inst = instances.random_instance(np.random.default_rng(0), 7, 5)
    instances.check_arrays(inst.machines, inst.durations)
    m, d = instances.random_batch_jax(jax.random.PRNGKey(0), 4, 6, 5)
    for b in range(4):
        instances.check_arrays(np.asarray(m[b]), np.asarray(d[b]))
    assert int(d.min()) >= 1 and int(d.max()) <= 99


# ----------------------------------------------------------------------------- validator
def test_validator_rejects_violations():
    inst = instances.parse_text(FT06)
    res = cpsat.solve(inst.machines, inst.durations, time_limit_s=5)
    assert validate.check_schedule(inst.machines, inst.durations, res.start_times) == res.makespan
    bad = res.start_times.copy()
    bad[0, 1] = bad[0, 0]  # starts before its predecessor ends
    with pytest.raises(validate.InfeasibleSchedule, match="precedence"):
        validate.check_schedule(inst.machines, inst.durations, bad)
    # put two operations of one machine at the same time, far after everything else (precedence kept)
    bad = res.start_times.copy()
    j0, j1 = 0, 1
    o0, o1 = int(np.where(inst.machines[j0] == 3)[0][0]), int(np.where(inst.machines[j1] == 3)[0][0])
    far = 10_000
    bad[j0, o0:] = far + np.concatenate([[0], np.cumsum(inst.durations[j0, o0:-1])])
    bad[j1, o1:] = far + np.concatenate([[0], np.cumsum(inst.durations[j1, o1:-1])])
    with pytest.raises(validate.InfeasibleSchedule, match="machine 3"):
        validate.check_schedule(inst.machines, inst.durations, bad)
    with pytest.raises(validate.InfeasibleSchedule, match="negative"):
        validate.check_schedule(inst.machines, inst.durations, np.full((6, 6), -1))


# ----------------------------------------------------------------------------- environment
@pytest.mark.parametrize("size", [(3, 3), (6, 4), (8, 6)])
def test_env_random_legal_policies_vs_validator_and_python_env(size):
    J, M = size
    B = 8
    machines, durations = instances.random_batch_jax(jax.random.PRNGKey(J * 100 + M), B, J, M)
    keys = jax.random.split(jax.random.PRNGKey(1), B)

    def record(m, d, key):  # rollout that also records actions and rewards
        problem = env.Problem(m, d)
        T = J * M * (J + 1)

        def body(carry, _):
            state, key = carry
            key, sub = jax.random.split(key)
            a = env.random_legal_action(problem, state, sub)
            done = env.is_done(problem, state)
            legal_ok = env.legal_mask(problem, state)[a] | done
            state, r, _ = env.step(problem, state, a)
            return (state, key), (jnp.where(done, -1, a), r, legal_ok)

        (state, _), (acts, rews, legal_ok) = jax.lax.scan(body, (env.reset(problem), key), None, length=T)
        lb0 = env.lower_bound(problem, env.reset(problem))
        return state, acts, rews, legal_ok, lb0

    states, acts, rews, legal_ok, lb0 = jax.jit(jax.vmap(record))(machines, durations, keys)
    assert bool(jnp.all(legal_ok))
    n_noops = 0
    for b in range(B):
        m, d = np.asarray(machines[b]), np.asarray(durations[b])
        assert bool(env.is_done(env.Problem(machines[b], durations[b]), jax.tree.map(lambda x: x[b], states)))
        start = np.asarray(states.start[b])
        cmax = validate.check_schedule(m, d, start)
        assert cmax == int(states.job_ready[b].max())
        scale = d.max()
        np.testing.assert_allclose(float(rews[b].sum()), (float(lb0[b]) - cmax) / scale, rtol=1e-4, atol=1e-4)
        py = pyenv.PyJobShopEnv(m, d)  # the same actions in the plain-Python environment
        for a in np.asarray(acts[b]):
            if a < 0:
                break
            assert py.legal()[a]
            n_noops += int(a == J)
            py.step(int(a))
        assert py.done()
        np.testing.assert_array_equal(np.asarray(py.start), start)
    assert n_noops > 0  # the No-Op path was exercised


def test_observation_shapes_and_masks():
    inst = instances.parse_text(FT06)
    problem = env.make_problem(inst.machines, inst.durations)
    state = env.reset(problem)
    obs = env.observe(problem, state, window=4)
    assert obs["ops"].shape == (6, 4, 5) and obs["jobs"].shape == (6, 5) and obs["conflict"].shape == (6, 6)
    np.testing.assert_array_equal(np.asarray(obs["legal"]), [True] * 6 + [False])
    work = inst.durations.sum(1)  # at reset: remaining work = the whole job; relative to the largest
    np.testing.assert_allclose(np.asarray(obs["jobs"][:, 4]), work / work.max(), rtol=1e-6)
    first = inst.machines[:, 0]
    np.testing.assert_array_equal(np.asarray(obs["conflict"]), first[:, None] == first[None, :])
    est = np.asarray(env.propagate(problem, state))  # at reset: job-chain earliest starts
    np.testing.assert_array_equal(est[:, 1:], np.cumsum(inst.durations, 1)[:, :-1])
    assert env.next_est(problem, state).dtype == jnp.int32  # the NumPy constant BIG keeps int32


def test_importing_the_jssp_modules_starts_no_jax_backend():
    """jax.distributed.initialize() must be callable after import: no module-level JAX computation."""
    code = ("import rl.jssp.env, rl.jssp.rules, rl.jssp.instances, rl.jssp.policy_io, rl.jssp.ppo, "
            "rl.jssp.inference, rl.jssp.tuning, rl.jssp.self_label, rl.jssp.train, rl.jssp.instance_sets, "
            "rl.jssp.evaluate, rl.jssp.bench, models.jssp_policy\n"
            "from jax._src import xla_bridge\n"
            "assert not xla_bridge._backends, 'a backend was initialised at import'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- rules
# Hand-solved: J0 = (m0,1)(m1,1), J1 = (m0,2)(m1,6).
# SPT: t=0 J0 on m0 [0,1]; t=1 J0 on m1 [1,2] (1 < 2), J1 on m0 [1,3]; J1 on m1 [3,9]  -> 9
# MWKR: t=0 J1 (work 8) on m0 [0,2]; t=2 J1 on m1 [2,8] (6 > 2), J0 on m0 [2,3]; J0 on m1 [8,9] -> 9
HAND_M = np.array([[0, 1], [0, 1]])
HAND_D = np.array([[1, 1], [2, 6]])


def test_spt_and_mwkr_on_hand_solved_instance():
    c, s = rules.solve(HAND_M, HAND_D, "spt")
    assert c == 9
    np.testing.assert_array_equal(s, [[0, 1], [1, 3]])
    c, s = rules.solve(HAND_M, HAND_D, "mwkr")
    assert c == 9
    np.testing.assert_array_equal(s, [[2, 8], [0, 2]])
    assert brute_force_makespan(HAND_M, HAND_D) == 9


def test_rules_feasible_and_spt_matches_python_env():
    inst = instances.random_instance(np.random.default_rng(3), 8, 6)
    for rule in rules.RULES:
        c, s = rules.solve(inst.machines, inst.durations, rule)
        assert validate.check_schedule(inst.machines, inst.durations, s) == c
    c, s = rules.solve(inst.machines, inst.durations, "spt")
    c_py, s_py, _ = pyenv.run_spt(inst.machines, inst.durations)
    assert c == c_py
    np.testing.assert_array_equal(s, s_py)
    with pytest.raises(ValueError, match="allowed"):
        rules.solve(inst.machines, inst.durations, "lifo")


# ----------------------------------------------------------------------------- CP-SAT
def test_cpsat_reaches_ft06_optimum():
    inst = instances.parse_text(FT06, name="ft06")
    res = cpsat.solve(inst.machines, inst.durations, time_limit_s=20, workers=2)
    assert res.makespan == 55 and res.optimal
    assert validate.check_schedule(inst.machines, inst.durations, res.start_times) == 55


def test_cpsat_matches_brute_force_and_hint_replay():
    rng = np.random.default_rng(7)
    for _ in range(3):
        inst = instances.random_instance(rng, 3, 3, high=9)
        res = cpsat.solve(inst.machines, inst.durations, time_limit_s=5)
        assert res.makespan == brute_force_makespan(inst.machines, inst.durations)
    inst = instances.random_instance(rng, 6, 5)
    _, spt_start = rules.solve(inst.machines, inst.durations, "spt")
    res = cpsat.solve(inst.machines, inst.durations, time_limit_s=5, hint=spt_start)
    # the solver's schedule replays exactly in the JAX environment (after a left shift)
    actions = cpsat.schedule_to_actions(inst.machines, inst.durations, res.start_times)
    problem = env.make_problem(inst.machines, inst.durations)
    state = env.reset(problem)
    legal_fn, step_fn = jax.jit(env.legal_mask), jax.jit(env.step)
    for a in actions:
        assert bool(legal_fn(problem, state)[a])
        state, _, _ = step_fn(problem, state, jnp.int32(a))
    np.testing.assert_array_equal(np.asarray(state.start),
                                  cpsat.left_shift(inst.machines, inst.durations, res.start_times))
    assert int(env.makespan(problem, state)) <= res.makespan
