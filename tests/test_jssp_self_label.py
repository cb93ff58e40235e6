"""Self-labelling (rl/jssp/self_label.py), the instance families and model selection (rl/jssp/train.py):
labels are the best finished samples (checked by the independent validator), the cross-entropy against
NumPy, the families' routings and ranges, and the selection rule."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.jssp_policy import PolicyConfig
from rl.jssp import env, inference, instances, policy_io, ppo, self_label, validate
from rl.jssp.train import TrainJSSPConfig, keep_best, step_plan
from training import config as config_lib

TINY = PolicyConfig(window=2, d_model=8, num_heads=2, job_layers=1, mlp_dim=16)


@pytest.mark.parametrize("name", list(instances.DISTRIBUTIONS))
def test_each_family_generates_valid_instances_of_its_routing_and_range(name):
    dist = instances.DISTRIBUTIONS[name]
    machines, durations = map(np.asarray, instances.generate_batch_jax(jax.random.PRNGKey(3), 6, 7, 6, dist))
    for m, d in zip(machines, durations):
        instances.check_arrays(m, d)
        assert dist.low <= d.min() and d.max() <= dist.high
    if dist.routing == "two_sets":
        assert (machines[:, :, :3] < 3).all() and (machines[:, :, 3:] >= 3).all()
    if dist.routing == "flow":
        assert (machines == machines[:, :1]).all()
    else:  # jobs of one instance get their own orders
        assert any(len({tuple(r) for r in m}) > 1 for m in machines)
    assert len({tuple(m.reshape(-1)) for m in machines}) == len(machines)


def test_family_names_and_the_simple_lower_bound():
    assert [d.name for d in instances.parse_distributions("flow, taillard")] == ["flow", "taillard"]
    for spec in ("dmu", "taillard,taillard", ""):
        with pytest.raises(ValueError, match="need distinct names from taillard, wide"):
            instances.parse_distributions(spec)
    with pytest.raises(ValueError, match="routing='ring'"):
        instances.Distribution("x", 1, 9, "ring")
    machines = np.array([[0, 1], [0, 1], [1, 0]])
    durations = np.array([[5, 1], [4, 1], [1, 1]])
    assert instances.simple_lower_bound(machines, durations) == 10  # machine 0: 5 + 4 + 1 > any job's 6


def test_pick_labels_takes_the_best_finished_sample():
    actions = jnp.arange(2 * 3 * 4).reshape(2, 3, 4)
    makespans = jnp.array([[9, 5, 7], [3, 3, 8]])
    finished = jnp.array([[True, False, True], [True, True, False]])
    labels, cmax, has = self_label.pick_labels(actions, makespans, finished)
    np.testing.assert_array_equal(labels, np.asarray(actions)[[0, 1], [2, 0]])  # unfinished 5 ignored; tie: first
    np.testing.assert_array_equal(cmax, [7, 3])
    assert has.tolist() == [True, True]
    _, _, has = self_label.pick_labels(actions, makespans, jnp.zeros((2, 3), bool))
    assert has.tolist() == [False, False]


def test_label_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    actions = rng.integers(0, 5, size=6)
    mask = np.array([1, 1, 0, 1, 0, 1], bool)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -logp[np.arange(6), actions][mask].mean()
    got = self_label.label_cross_entropy(jnp.asarray(logits), jnp.asarray(actions), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_sampled_labels_replay_to_the_best_valid_schedule():
    """The label picked from sampled action sequences, replayed in the environment, gives a schedule the
    independent validator accepts, whose makespan is the smallest of the finished samples'."""
    model = policy_io.make_model(dataclasses.replace(TINY, noop_bias_init=1.0))  # a policy that often waits
    params = policy_io.init_params(model, jax.random.PRNGKey(0))
    m, d = instances.generate_batch_jax(jax.random.PRNGKey(1), 1, 4, 3, instances.DISTRIBUTIONS["taillard"])
    beta, T = 6, 4 * 3 * 8
    rep = env.Problem(jnp.repeat(m, beta, 0), jnp.repeat(d, beta, 0))
    actions, final = self_label.sample_schedules(model, params, rep, jax.random.PRNGKey(2), T, 1.0)
    finished = env.batch_is_done(rep, final)
    assert bool(finished.all())
    cmax = [validate.check_schedule(np.asarray(m[0]), np.asarray(d[0]), np.asarray(final.start[i])) for i in range(beta)]
    labels, label_cmax, _ = self_label.pick_labels(actions[None], env.batch_makespan(rep, final)[None], finished[None])
    assert int(label_cmax[0]) == min(cmax)
    problem, state = env.Problem(m[0], d[0]), env.reset(env.Problem(m[0], d[0]))
    step, legal = jax.jit(env.step), jax.jit(env.legal_mask)
    for a in np.asarray(labels[0]):
        if a < 0:
            break
        assert bool(legal(problem, state)[a])
        state, _, _ = step(problem, state, a)
    assert validate.check_schedule(np.asarray(m[0]), np.asarray(d[0]), np.asarray(state.start)) == min(cmax)
    assert (np.asarray(actions) == 4).any()  # this policy waits ...
    # ... unless told not to; then every sample ends within the label horizon J * M (one dispatch per action)
    shape = ppo.PPOConfig(num_jobs=4, num_machines=3, rollout_factor=8.0)
    horizon = self_label.label_horizon(shape, self_label.SelfLabelConfig())
    assert horizon == 4 * 3
    no_wait, final = self_label.sample_schedules(model, params, rep, jax.random.PRNGKey(2), horizon, 1.0, waits=False)
    assert bool(env.batch_is_done(rep, final).all()) and not (np.asarray(no_wait) == 4).any()
    assert (np.asarray(no_wait) >= 0).all()  # no action after the last dispatch: the horizon is tight
    assert self_label.label_horizon(shape, self_label.SelfLabelConfig(label_waits=True)) == 4 * 3 * 8


@pytest.mark.slow  # 7 s of compile; the tiny training run below runs the same step by default
def test_one_self_labelling_step_trains_and_reports_label_no_worse_than_samples():
    model = policy_io.make_model(TINY)
    shape = ppo.PPOConfig(num_jobs=4, num_machines=3, batch=2, rollout_factor=3.0, epochs=1, minibatches=2)
    opt = ppo.make_optimizer(shape)
    state = ppo.init_state(model, opt, seed=0)
    step = jax.jit(self_label.make_self_label_step(model, opt, shape, self_label.SelfLabelConfig(beta=4),
                                                   instances.DISTRIBUTIONS["two_sets"]))
    new, metrics = step(state)
    assert int(new.step) == 1 and all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["label_gap_lb_pct"]) <= float(metrics["sample_gap_lb_pct"]) + 1e-4  # best <= mean
    assert 0 < float(metrics["finished_frac"]) <= 1
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.params),
                                                           jax.tree.leaves(new.params))) > 0


def test_model_selection_keeps_the_strictly_best_validation():
    params = {"w": jnp.ones(2)}
    best = {"params": params, "val_gap_lb_pct": jnp.asarray(np.inf), "step": jnp.asarray(0)}
    best = keep_best(best, params, {"val_gap_lb_pct": 12.0}, 0)
    later = keep_best(best, {"w": jnp.zeros(2)}, {"val_gap_lb_pct": 11.5}, 20)
    assert int(later["step"]) == 20 and float(later["params"]["w"][0]) == 0
    assert keep_best(later, {"w": jnp.full(2, 7.0)}, {"val_gap_lb_pct": 11.5}, 40) is later  # a tie keeps the earlier


def test_train_config_self_label_families_and_init_from(tmp_path):
    cfg = config_lib.from_flat(TrainJSSPConfig, {"algorithm": "self_label", "beta": 8, "distributions": "taillard,flow",
                                                 "curriculum": "4x3:0,5x4:2"})
    assert cfg.self_label == self_label.SelfLabelConfig(beta=8)
    assert [step_plan(s, cfg) for s in (1, 2, 3, 4)] == [((4, 3), "taillard"), ((4, 3), "flow"),
                                                         ((5, 4), "taillard"), ((4, 3), "flow")]
    for flat, match in (({"algorithm": "a2c"}, "algorithm='a2c'; allowed: ppo, self_label"),
                        ({"beta": 0}, "beta=0 must be"), ({"label_temperature": 0.0}, "label_temperature=0.0"),
                        ({"distributions": "dmu"}, "distributions='dmu': need distinct names"),
                        ({"val_distributions": "taillard,x"}, "val_distributions='taillard,x'"),
                        ({"init_from": str(tmp_path)}, "is not a policy directory")):
        with pytest.raises(ValueError, match=match):
            config_lib.from_flat(TrainJSSPConfig, flat)
    policy_io.save_policy(tmp_path, policy_io.init_params(policy_io.make_model(TINY), jax.random.PRNGKey(0)), TINY, {})
    with pytest.raises(ValueError, match=r"its network differs: window=2 \(this run: 4\)"):
        config_lib.from_flat(TrainJSSPConfig, {"init_from": str(tmp_path)})
    assert json.loads((tmp_path / "policy.json").read_text())["policy_config"]["d_model"] == 8
    ok = config_lib.from_flat(TrainJSSPConfig, {"init_from": str(tmp_path), "window": 2, "d_model": 8, "num_heads": 2,
                                                "job_layers": 1, "mlp_dim": 16})
    assert ok.init_from == str(tmp_path)


def test_generated_test_set_files_and_bounds_read_back(tmp_path):
    from rl.jssp import instance_sets
    cfg = instance_sets.MakeSetConfig(out_dir=str(tmp_path), families="flow,two_sets", sizes="4x3", count=2,
                                 bound_time_limit=2.0)
    rows = instance_sets.make_set(cfg)
    insts = {i.name: i for i in instances.read_directory(tmp_path)}
    bounds = instances.read_bounds(tmp_path / "bounds.csv")
    assert sorted(insts) == sorted(bounds) == sorted(r["instance"] for r in rows) and len(rows) == 4
    for name, inst in insts.items():
        assert bounds[name]["status"] == "OPTIMAL" and bounds[name]["lower_bound"] == bounds[name]["upper_bound"]
        assert (inst.machines == inst.machines[:1]).all() == name.startswith("flow")
        assert instances.simple_lower_bound(inst.machines, inst.durations) <= bounds[name]["upper_bound"]
    for flat, match in (({"out_dir": "x", "sizes": "4by3"}, "size='4by3'"),
                        ({"out_dir": "x", "families": "dmu"}, "families='dmu'")):
        with pytest.raises(ValueError, match=match):
            instance_sets.MakeSetConfig(**flat)
    with pytest.raises(ValueError, match="out_dir='' is required"):
        instance_sets.make_set(instance_sets.MakeSetConfig())


def test_generated_set_bounds_fall_back_to_the_rule_when_cpsat_finds_no_schedule(monkeypatch):
    from rl.jssp import cpsat, instance_sets, rules
    inst = instances.random_instance(np.random.default_rng(5), 6, 4, name="r")
    real_solve = cpsat.solve
    monkeypatch.setattr(cpsat, "solve", lambda *a, **k: real_solve(*a, **{**k, "time_limit_s": 1e-6}))
    row = instance_sets.bounds_row(inst, time_limit_s=5.0, workers=1, seed=0)
    rule_cmax, rule_start = rules.solve(inst.machines, inst.durations, "fdd_mwkr")
    assert validate.check_schedule(inst.machines, inst.durations, rule_start) == rule_cmax
    assert row == {"upper_bound": rule_cmax, "status": "RULE",
                   "lower_bound": instances.simple_lower_bound(inst.machines, inst.durations)}
    monkeypatch.setattr(cpsat, "solve", real_solve)
    optimal = instance_sets.bounds_row(inst, time_limit_s=5.0, workers=1, seed=0)
    assert optimal["status"] == "OPTIMAL" and optimal["lower_bound"] == optimal["upper_bound"] <= rule_cmax


def test_self_labelling_run_exports_the_best_validated_step(tmp_path):
    """A tiny train_jssp run: validation at steps 0..3, the exported policy is the step of smallest validation
    gap (re-measured from the exported files), and the run's files say so."""
    from event_scalars import assert_events_match_metrics
    from rl.jssp import train
    from training.run import MetricsWriter

    cfg = config_lib.from_flat(TrainJSSPConfig, dict(
        workdir=str(tmp_path / "w"), export_dir=str(tmp_path / "export"), algorithm="self_label", curriculum="4x3:0",
        batch=2, beta=2, rollout_factor=3.0, epochs=1, minibatches=1, lr=0.05, steps=3, eval_every=1, eval_instances=3,
        log_every=1, val_distributions="taillard,flow", window=2, d_model=8, num_heads=2, job_layers=1, mlp_dim=16))
    summary = train.train(cfg)
    rows = [r for r in MetricsWriter.read(tmp_path / "w" / "metrics.jsonl") if "val_gap_lb_pct" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    scalars = assert_events_match_metrics(tmp_path / "w")  # TensorBoard: the same numbers (step 0 included)
    assert [s for s, _ in scalars["val_gap_lb_pct"]] == [0, 1, 2, 3]
    gaps = [r["val_gap_lb_pct"] for r in rows]
    assert len(set(gaps)) > 1  # training moved the policy (lr 0.05), so the selection has a choice
    best = int(np.argmin(gaps))
    assert summary["selected_step"] == best and rows[-1]["best_step"] == best
    model, params, info = policy_io.load_policy(tmp_path / "export")
    val = train.validation_set(cfg)
    cmax = np.asarray(inference.make_batch_greedy(model, info["greedy_noop_threshold"])(
        params, val.machines, val.durations).job_ready).max(-1)
    np.testing.assert_allclose(val.report(cmax)["val_gap_lb_pct"], gaps[best], rtol=1e-6)
    assert info["train_config"]["algorithm"] == "self_label" and "--algorithm=self_label" in info["trained_by"]


def test_a_policy_that_never_waits_samples_no_noop():
    """Threshold 1 (what a self-labelled policy ships with): sampling dispatches J*M times and never waits;
    the flat sampler of a policy that waits takes No-Ops."""
    model = policy_io.make_model(dataclasses.replace(TINY, noop_bias_init=1.0))
    params = policy_io.init_params(model, jax.random.PRNGKey(0))
    inst = instances.random_instance(np.random.default_rng(7), 4, 3)
    for threshold, waits in ((1.0, False), (None, True)):
        solve = inference.make_solver(model, threshold)
        states = solve(params, inst.machines, inst.durations, jax.random.PRNGKey(1), 8)
        assert bool((np.asarray(states.num_steps) > 4 * 3).any()) == waits
        c, s = inference.best_of(states)
        assert validate.check_schedule(inst.machines, inst.durations, s) == c


@pytest.mark.slow  # about 80 s: three tiny runs
def test_self_labelling_run_resumes_bit_for_bit_with_its_selection(tmp_path):
    """Stopped after step 2 and resumed to step 4, a run exports the same parameters, selected step and metrics
    as one that ran 4 steps straight (the kept best parameters travel in the checkpoint)."""
    from event_scalars import assert_events_match_metrics
    from rl.jssp import train
    from training.run import MetricsWriter

    def run(name: str, steps: int) -> dict:
        cfg = config_lib.from_flat(TrainJSSPConfig, dict(
            workdir=str(tmp_path / name), export_dir=str(tmp_path / name / "export"), algorithm="self_label",
            curriculum="4x3:0", batch=2, beta=2, rollout_factor=3.0, epochs=1, minibatches=1, lr=0.05, steps=steps,
            eval_every=1, eval_instances=2, log_every=1, checkpoint_every=1, val_distributions="taillard,short",
            window=2, d_model=8, num_heads=2, job_layers=1, mlp_dim=16))
        return train.train(cfg)

    run("a", 2)
    resumed = run("a", 4)
    straight = run("b", 4)
    assert resumed["resumed_from"] == 2 and resumed["selected_step"] == straight["selected_step"]
    assert ((tmp_path / "a" / "export" / "policy.msgpack").read_bytes()
            == (tmp_path / "b" / "export" / "policy.msgpack").read_bytes())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]  # noqa: E731
    assert strip(MetricsWriter.read(tmp_path / "a" / "metrics.jsonl")) == strip(
        MetricsWriter.read(tmp_path / "b" / "metrics.jsonl"))
