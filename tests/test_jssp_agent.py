"""rl/jssp agent: a PPO update changes the policy, inference yields valid schedules, policy round trip,
the evaluation script's records and table, the shipped policy."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.jssp_policy import JobShopPolicy, PolicyConfig
from rl.jssp import agent, env, instances, validate

TINY = PolicyConfig(window=2, d_model=8, num_heads=2, job_layers=1, mlp_dim=16)
PPO = agent.PPOConfig(num_jobs=4, num_machines=3, batch=2, epochs=1, minibatches=1, cpsat_instances=1)


def test_one_training_update_changes_the_policy():
    model = agent.make_model(TINY)
    opt = agent.make_optimizer(PPO)
    state = agent.init_state(model, opt, seed=0)
    solver = agent.make_solver(model)
    demos, gain = agent.cpsat_demonstrations(solver, state.params, PPO, np.random.default_rng(0), 1.0)
    assert gain >= 0  # CP-SAT, hinted with the agent's schedule, never returns a worse one
    assert (demos["actions"][0] >= 0).sum() >= PPO.num_jobs * PPO.num_machines
    step = jax.jit(agent.make_train_step(model, opt, PPO))
    new, metrics = step(state, jax.tree.map(jnp.asarray, demos))
    assert int(new.step) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    diffs = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params))]
    assert max(diffs) > 0
    # the policy's output on a fixed observation changes too
    inst = instances.random_instance(np.random.default_rng(1), 4, 3)
    problem = env.make_problem(inst.machines, inst.durations)
    obs = env.observe(problem, env.reset(problem), TINY.window)
    before, _ = model.apply({"params": state.params}, obs)
    after, _ = model.apply({"params": new.params}, obs)
    assert float(jnp.abs(jax.nn.log_softmax(before) - jax.nn.log_softmax(after))[:4].max()) > 0


def test_inference_greedy_and_sampling_are_valid_and_best_of_is_min(tmp_path):
    model = JobShopPolicy(TINY)
    params = agent.init_params(model, jax.random.PRNGKey(0))
    inst = instances.random_instance(np.random.default_rng(2), 5, 4)
    solve = agent.make_solver(model)
    greedy = solve(params, inst.machines, inst.durations, jax.random.PRNGKey(0), 0)
    c, s = agent.best_of(greedy)
    assert validate.check_schedule(inst.machines, inst.durations, s) == c
    many = solve(params, inst.machines, inst.durations, jax.random.PRNGKey(0), 6)
    c6, s6 = agent.best_of(many)
    all_c = [validate.check_schedule(inst.machines, inst.durations, np.asarray(many.start[i])) for i in range(6)]
    assert c6 == min(all_c)
    # save / load round trip gives the same greedy schedule
    agent.save_policy(tmp_path, params, TINY, {"note": "test"})
    model2, params2, info = agent.load_policy(tmp_path)
    assert info["note"] == "test"
    c2, s2 = agent.best_of(agent.make_solver(model2)(params2, inst.machines, inst.durations, jax.random.PRNGKey(0), 0))
    assert c2 == c and np.array_equal(s2, s)
    with pytest.raises(ValueError, match="policy.msgpack"):
        agent.load_policy(tmp_path / "nowhere")


def test_policy_config_and_ppo_config_reject_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        PolicyConfig(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="--batch"):
        agent.PPOConfig(batch=0)
    with pytest.raises(ValueError, match="--rollout_factor"):
        agent.PPOConfig(rollout_factor=0.5)


def test_eval_records_and_group_table(tmp_path):
    from scripts import eval_jssp

    d = tmp_path / "insts"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, (J, M) in enumerate([(4, 3), (4, 3), (5, 4)]):
        (d / f"r{i}.txt").write_text(instances.format_instance(instances.random_instance(rng, J, M)))
    insts = eval_jssp.load_instances(str(d))
    bounds = {"r0": {"upper_bound": 10_000}}
    records = eval_jssp.evaluate(insts, eval_jssp.make_runner("mwkr"), "mwkr", bounds)
    assert [r["instance"] for r in records] == ["r0", "r1", "r2"]
    for r, inst in zip(records, insts):
        assert validate.check_schedule(inst.machines, inst.durations, r["start_times"]) == r["makespan"]
        assert np.asarray(r["start_times"]).shape == inst.machines.shape
    assert records[0]["gap"] == pytest.approx(100 * (records[0]["makespan"] - 10_000) / 10_000)
    assert records[1]["gap"] is None
    json.dumps(records)
    rows, table = eval_jssp.group_table(records)
    assert [(r["size"], r["n"]) for r in rows] == [("4x3", 2), ("5x4", 1)]
    assert "4x3" in table and "5x4" in table
    with pytest.raises(ValueError, match="--sizes"):
        eval_jssp.load_instances("taillard", "15by15")
    with pytest.raises(ValueError, match="--instances"):
        eval_jssp.load_instances(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="--solver"):
        eval_jssp.make_runner("edd")


def test_shipped_policy_loads_and_solves():
    model, params, info = agent.load_policy(agent.TRAINED_DIR)
    assert "trained_by" in info
    inst = instances.random_instance(np.random.default_rng(5), 6, 6)
    c, s = agent.best_of(agent.make_solver(model)(params, inst.machines, inst.durations, jax.random.PRNGKey(0), 0))
    assert validate.check_schedule(inst.machines, inst.durations, s) == c
