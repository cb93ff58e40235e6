"""The rl/jssp agent (ppo, inference, policy_io, tuning; train's curriculum): a PPO update changes the policy,
inference yields valid schedules, policy round trip, the evaluation's records and table, the shipped policy,
the training config and the command lines."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.jssp_policy import JobShopPolicy, PolicyConfig
from rl.jssp import env, evaluate, inference, instances, policy_io, ppo, train, tuning, validate
from rl.jssp.train import TrainJSSPConfig, refreshes_demos
from training import config as config_lib
from training import run as run_lib

TINY = PolicyConfig(window=2, d_model=8, num_heads=2, job_layers=1, mlp_dim=16)
PPO = ppo.PPOConfig(num_jobs=4, num_machines=3, batch=2, epochs=1, minibatches=1, cpsat_instances=1)


@pytest.mark.slow  # about 65 s of compile; the PPO loss itself is checked against NumPy in tests/test_rl_losses.py
def test_one_training_update_changes_the_policy():
    model = policy_io.make_model(TINY)
    opt = ppo.make_optimizer(PPO)
    state = ppo.init_state(model, opt, seed=0)
    solver = inference.make_solver(model)
    demos, gain = ppo.cpsat_demonstrations(solver, state.params, PPO, np.random.default_rng(0), 1.0)
    assert gain >= 0  # CP-SAT, hinted with the agent's schedule, never returns a worse one
    assert (demos["actions"][0] >= 0).sum() >= PPO.num_jobs * PPO.num_machines
    step = jax.jit(ppo.make_train_step(model, opt, PPO))
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


@pytest.mark.slow  # about 27 s
def test_inference_greedy_and_sampling_are_valid_and_best_of_is_min(tmp_path):
    model = JobShopPolicy(TINY)
    params = policy_io.init_params(model, jax.random.PRNGKey(0))
    inst = instances.random_instance(np.random.default_rng(2), 5, 4)
    solve = inference.make_solver(model)
    greedy = solve(params, inst.machines, inst.durations, jax.random.PRNGKey(0), 0)
    c, s = inference.best_of(greedy)
    assert validate.check_schedule(inst.machines, inst.durations, s) == c
    many = solve(params, inst.machines, inst.durations, jax.random.PRNGKey(0), 6)
    c6, s6 = inference.best_of(many)
    all_c = [validate.check_schedule(inst.machines, inst.durations, np.asarray(many.start[i])) for i in range(6)]
    assert c6 == min(all_c)
    # save / load round trip gives the same greedy schedule
    policy_io.save_policy(tmp_path, params, TINY, {"note": "test"})
    model2, params2, info = policy_io.load_policy(tmp_path)
    assert info["note"] == "test"
    again = inference.make_solver(model2)(params2, inst.machines, inst.durations, jax.random.PRNGKey(0), 0)
    c2, s2 = inference.best_of(again)
    assert c2 == c and np.array_equal(s2, s)
    with pytest.raises(ValueError, match="policy.msgpack"):
        policy_io.load_policy(tmp_path / "nowhere")


def test_policy_config_and_ppo_config_reject_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        PolicyConfig(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="batch=0"):
        ppo.PPOConfig(batch=0)
    with pytest.raises(ValueError, match="rollout_factor=0.5"):
        ppo.PPOConfig(rollout_factor=0.5)


def test_eval_records_and_group_table(tmp_path):
    d = tmp_path / "insts"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, (J, M) in enumerate([(4, 3), (4, 3), (5, 4)]):
        (d / f"r{i}.txt").write_text(instances.format_instance(instances.random_instance(rng, J, M)))
    insts = evaluate.load_instances(str(d))
    bounds = {"r0": {"upper_bound": 10_000}}
    records = evaluate.evaluate(insts, evaluate.make_runner("mwkr"), "mwkr", bounds)
    assert [r["instance"] for r in records] == ["r0", "r1", "r2"]
    for r, inst in zip(records, insts):
        assert validate.check_schedule(inst.machines, inst.durations, r["start_times"]) == r["makespan"]
        assert np.asarray(r["start_times"]).shape == inst.machines.shape
    assert records[0]["gap"] == pytest.approx(100 * (records[0]["makespan"] - 10_000) / 10_000)
    assert records[1]["gap"] is None
    json.dumps(records)
    rows, table = evaluate.group_table(records)
    assert [(r["size"], r["n"]) for r in rows] == [("4x3", 2), ("5x4", 1)]
    assert "4x3" in table and "5x4" in table
    with pytest.raises(ValueError, match="sizes="):
        evaluate.load_instances("taillard", "15by15")
    with pytest.raises(ValueError, match="instances="):
        evaluate.load_instances(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="solver="):
        evaluate.make_runner("edd")


@pytest.mark.slow  # about 17 s; the tour and results/jssp/jssp_eval_* run the shipped policy
def test_shipped_policy_loads_and_solves():
    model, params, info = policy_io.load_policy(policy_io.TRAINED_DIR)
    assert "trained_by" in info
    inst = instances.random_instance(np.random.default_rng(5), 6, 6)
    greedy = inference.make_solver(model)(params, inst.machines, inst.durations, jax.random.PRNGKey(0), 0)
    c, s = inference.best_of(greedy)
    assert validate.check_schedule(inst.machines, inst.durations, s) == c
    # its provenance line is still a valid command of scripts.train_jssp, the one the config writes
    module, *args = info["trained_by"].removeprefix("python -m ").split()
    types = {f.name: f.type for f in config_lib.flat_fields(TrainJSSPConfig)}
    flat = dict(arg.removeprefix("--").split("=", 1) for arg in args)
    cfg = config_lib.from_flat(TrainJSSPConfig, {k: v == "True" if types[k] is bool else types[k](v)
                                                 for k, v in flat.items()})
    assert module == "scripts.train_jssp" and cfg.policy == PolicyConfig(**info["policy_config"])
    assert sorted(run_lib.command_line(module, cfg).split()) == sorted(info["trained_by"].split())


def test_curriculum_parsing_and_round_robin_mix():
    stages = train.parse_curriculum("10x10:0, 15x15:3,20x15:5")
    assert stages == ((10, 10, 0), (15, 15, 3), (20, 15, 5))
    sizes = [train.curriculum_size(s, stages) for s in range(1, 10)]
    # steps 1-3: 10x10 only; from 4 the 15x15 joins (trained on its first step), from 6 the 20x15
    assert sizes[:3] == [(10, 10)] * 3
    assert sizes[3] == (15, 15) and set(sizes[3:5]) == {(10, 10), (15, 15)}
    assert sizes[5] == (20, 15) and set(sizes[5:8]) == {(10, 10), (15, 15), (20, 15)}
    assert train.curriculum_size(7, ((6, 6, 0),)) == (6, 6)
    for bad, match in (("10by10:0", "JOBSxMACHINES"), ("10x10:5", "start at 0"), ("10x10:0,15x15:0", "increase"),
                       ("10x10:0,10x10:4", "repeats"), ("", "names no size"), ("10x10", "JOBSxMACHINES")):
        with pytest.raises(ValueError, match=match):
            train.parse_curriculum(bad)


def test_bc_weight_and_lr_schedules():
    assert ppo.bc_weight(1, 4.0, 10) == 4.0
    assert ppo.bc_weight(6, 4.0, 10) == pytest.approx(4.0 - 3.0 * 5 / 10)
    assert ppo.bc_weight(11, 4.0, 10) == ppo.bc_weight(500, 4.0, 10) == 1.0
    assert ppo.bc_weight(1, 4.0, 0) == 1.0
    cfg = ppo.PPOConfig(lr=1e-3, lr_decay_steps=10, lr_end_frac=0.1, epochs=2, minibatches=3)
    sched = ppo.lr_schedule(cfg)
    assert float(sched(0)) == pytest.approx(1e-3)
    assert float(sched(10 * 2 * 3)) == pytest.approx(1e-4)
    assert float(ppo.lr_schedule(ppo.PPOConfig(lr=2e-4))(1000)) == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="lr_end_frac=0.0"):
        ppo.PPOConfig(lr_end_frac=0.0)


def test_normalised_return_is_the_relative_gap_to_the_initial_lower_bound():
    rng = np.random.default_rng(3)
    insts = [instances.random_instance(rng, 4, 3) for _ in range(2)]
    problems = env.Problem(jnp.asarray(np.stack([i.machines for i in insts])),
                           jnp.asarray(np.stack([i.durations for i in insts])))

    def run(p, key):
        def body(s, k):
            s2, r, _ = env.step(p, s, env.random_legal_action(p, s, k))
            return s2, r
        return jax.lax.scan(body, env.reset(p), jax.random.split(key, 4 * 3 * 5))

    final, rewards = jax.vmap(run)(problems, jax.random.split(jax.random.PRNGKey(0), 2))
    assert bool(env.batch_is_done(problems, final).all())
    ret = ppo.normalise_rewards(problems, rewards.T).sum(0)
    lb0 = np.array([int(env.lower_bound(env.Problem(problems.machines[b], problems.durations[b]),
                                        env.reset(env.Problem(problems.machines[b], problems.durations[b]))))
                    for b in range(2)])
    cmax = np.asarray(env.batch_makespan(problems, final))
    np.testing.assert_allclose(np.asarray(ret), (lb0 - cmax) / lb0, rtol=1e-5)


def test_training_refreshes_each_sizes_demonstrations():
    cfg = TrainJSSPConfig(curriculum="4x3:0,5x4:4", cpsat_every=2, bc_boost_steps=2)
    got = [s for s in range(1, 12) if refreshes_demos(s, cfg)]
    # boost: steps 1-2; 4x3 uses 1,2,3,4,6,8,10 -> refresh on its 0th, 2nd, 4th, 6th use (1, 3, 6, 10);
    # 5x4 uses 5,7,9,11 -> refresh on its first and third (5, 9)
    assert got == [1, 2, 3, 5, 6, 9, 10]
    no_cpsat = config_lib.from_flat(TrainJSSPConfig, {"cpsat_instances": 0})
    assert not any(refreshes_demos(s, no_cpsat) for s in range(1, 5))
    with pytest.raises(ValueError, match="curriculum="):
        TrainJSSPConfig(curriculum="4x3:1")
    with pytest.raises(ValueError, match="bc_boost=0.5"):
        TrainJSSPConfig(bc_boost=0.5)


def test_greedy_action_noop_threshold_and_its_selection():
    logits = jnp.log(jnp.array([0.25, 0.25, 0.2, 0.3]))  # 3 jobs, No-Op last and the single most likely
    assert int(inference.greedy_action(logits)) == 3
    assert int(inference.greedy_action(logits, 0.5)) in (0, 1)  # wait only if P(No-Op) > 0.5
    assert int(inference.greedy_action(logits, 0.2)) == 3
    sure = jnp.log(jnp.array([0.005, 0.005, 0.99]))
    assert int(inference.greedy_action(sure, 0.9)) == 2 and int(inference.greedy_action(sure, 1.0)) == 0
    model = JobShopPolicy(TINY)
    params = policy_io.init_params(model, jax.random.PRNGKey(0))
    rng = np.random.default_rng(4)
    insts = [instances.random_instance(rng, 4, 3) for _ in range(3)]
    m, d = (jnp.asarray(np.stack([getattr(i, f) for i in insts])) for f in ("machines", "durations"))
    best, means = tuning.select_noop_threshold(model, params, m, d, candidates=(None, 1.0))
    assert set(means) == {"None", "1.0"} and means[str(best)] == min(means.values())


@pytest.mark.slow  # about 30 s
def test_sampling_temperature_limits_and_its_selection(tmp_path):
    import shutil

    model = policy_io.make_model(TINY)
    params = policy_io.init_params(model, jax.random.PRNGKey(3))
    inst = instances.random_instance(np.random.default_rng(4), 4, 3)
    m, d = jnp.asarray(inst.machines), jnp.asarray(inst.durations)
    greedy_cmax, _ = inference.best_of(inference.make_solver(model)(params, m, d, jax.random.PRNGKey(0), 0))
    cold = inference.make_solver(model, temperature=1e-6)(params, m, d, jax.random.PRNGKey(0), 16)
    np.testing.assert_array_equal(np.asarray(cold.job_ready).max(-1), greedy_cmax)  # T -> 0: the argmax
    with pytest.raises(ValueError, match="temperature=0"):
        inference.make_solver(model, temperature=0)
    insts = [instances.random_instance(np.random.default_rng(s), 4, 3) for s in range(3)]
    ms = jnp.asarray(np.stack([i.machines for i in insts]))
    ds = jnp.asarray(np.stack([i.durations for i in insts]))
    choice, means = tuning.select_sampling_temperature(model, params, ms, ds, 8, candidates=(0.5, 2.0))
    assert set(means) == {"0.5", "2.0"} and means[str(choice)] == min(means.values())
    policy_dir = tmp_path / "policy"
    shutil.copytree(policy_io.TRAINED_DIR, policy_dir)
    out = tuning.tune_sampling(tuning.TuneSamplingConfig(str(policy_dir), "4x3", 2, 4, seed=0), candidates=(1.0, 2.0))
    info = json.loads((policy_dir / "policy.json").read_text())
    assert info["sampling_temperature"] == out["sampling_temperature"] in (1.0, 2.0)
    assert info["greedy_noop_threshold"] == json.loads((policy_io.TRAINED_DIR / "policy.json").read_text())[
        "greedy_noop_threshold"]   # the rest of policy.json is kept
    with pytest.raises(ValueError, match="size='15'"):
        tuning.TuneSamplingConfig(size="15")


OLD_TRAIN_FLAGS = ("workdir", "seed", "multihost", "checkpoint_every", "keep_checkpoints", "checkpoint_mode",
                   "overwrite", "export_dir", "steps", "num_jobs", "num_machines", "batch", "rollout_factor", "epochs",
                   "minibatches", "lr", "ent_coef", "bc_coef", "cpsat_every", "cpsat_instances", "cpsat_time_limit",
                   "bc_boost", "bc_boost_steps", "curriculum", "lr_decay", "lr_end_frac", "normalise_reward", "window",
                   "d_model", "num_heads", "job_layers", "mlp_dim", "eval_every", "eval_instances", "log_every")


def test_train_config_nests_ppo_and_policy_under_the_old_flat_names():
    fields = {f.name: f for f in config_lib.flat_fields(TrainJSSPConfig)}
    assert set(OLD_TRAIN_FLAGS) <= set(fields) and "lr_decay_steps" not in fields
    assert fields["batch"].path == ("ppo", "batch") and fields["d_model"].path == ("policy", "d_model")
    assert fields["bc_coef"].help == "Weight of the CP-SAT demonstration cross-entropy."
    assert all(f.help != f.name.replace("_", " ") for f in fields.values())  # every setting documented
    cfg = config_lib.from_flat(TrainJSSPConfig, {"batch": 2, "d_model": 8, "num_heads": 2, "curriculum": "4x3:0,5x4:2",
                                                 "lr_decay": True, "steps": 7})
    assert cfg.policy == PolicyConfig(d_model=8, num_heads=2) and cfg.ppo.lr_decay_steps == 7
    assert cfg.ppo_config((5, 4)) == ppo.PPOConfig(num_jobs=5, num_machines=4, batch=2, lr_decay_steps=7)
    assert config_lib.from_flat(TrainJSSPConfig, config_lib.to_flat(cfg)) == cfg
    for flat, match in (({"batch": 0}, "batch=0 must be"), ({"d_model": 10}, "d_model=10 must be divisible by "
                                                                             "num_heads=4"),
                        ({"cpsat_time_limit": 0.0}, "cpsat_time_limit=0.0 must be > 0")):
        with pytest.raises(ValueError, match=match):
            config_lib.from_flat(TrainJSSPConfig, flat)


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180)


def test_cli_bad_flags_are_one_line_before_work(tmp_path):
    for module, args, expected in (
            ("scripts.train_jssp", [f"--workdir={tmp_path}/w", "--cpsat_time_limit=0"],
             "error: --cpsat_time_limit=0.0 must be > 0 seconds"),
            ("scripts.train_jssp", [f"--workdir={tmp_path}/w", "--d_model=10"],
             "error: --d_model=10 must be divisible by --num_heads=4"),
            ("scripts.eval_jssp", ["--solver=edd"], "error: --solver='edd'; allowed:")):
        out = _cli(module, *args)
        assert out.returncode == 1, out.stderr
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing was started


def test_eval_cli_writes_validated_records(tmp_path):
    d = tmp_path / "insts"
    d.mkdir()
    (d / "a.txt").write_text(instances.format_instance(instances.random_instance(np.random.default_rng(0), 4, 3)))
    out = _cli("scripts.eval_jssp", "--solver=spt", f"--instances={d}", f"--out={tmp_path}/r.json")
    assert out.returncode == 0, out.stderr
    (record,) = json.loads((tmp_path / "r.json").read_text())
    inst = instances.read_instance(d / "a.txt")
    assert validate.check_schedule(inst.machines, inst.durations, record["start_times"]) == record["makespan"]
    assert "4x3" in out.stdout


def test_best_of_skips_unfinished_schedules_in_the_arrays_own_int_type():
    """An unfinished sample (a start < 0) never wins, whatever its makespan; the sentinel stays in the
    arrays' int32 (NumPy 2.5 on the H200 refused an int64 sentinel beside int32 makespans)."""
    import types

    start = np.array([[[0, 1]], [[0, -1]], [[0, 2]]], np.int32)          # sample 1 unfinished
    job_ready = np.array([[7, 9], [3, 4], [8, 6]], np.int32)             # makespans 9, 4, 8
    cmax, best_start = inference.best_of(types.SimpleNamespace(start=start, job_ready=job_ready))
    assert cmax == 8 and best_start.tolist() == [[0, 2]]
