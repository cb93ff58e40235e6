"""Agent + CP-SAT (the agent's schedule as CP-SAT's hint and upper bound) and eval_jssp's --bounds files."""
import json

import numpy as np
import pytest

from rl.jssp import cpsat, evaluate, instances, policy_io, validate


def small_instances(seed=3, sizes=((6, 4), (5, 5))):
    rng = np.random.default_rng(seed)
    return [instances.random_instance(rng, J, M, name=f"r{i}") for i, (J, M) in enumerate(sizes)]


def test_cpsat_upper_bound_keeps_only_better_schedules():
    inst = small_instances()[0]
    best = cpsat.solve(inst.machines, inst.durations, time_limit_s=10.0)
    assert best.optimal
    hinted = cpsat.solve(inst.machines, inst.durations, time_limit_s=10.0, upper_bound=best.makespan)
    assert hinted.makespan == best.makespan
    with pytest.raises(RuntimeError, match="found no schedule"):  # below the optimum: no schedule exists
        cpsat.solve(inst.machines, inst.durations, time_limit_s=5.0, upper_bound=best.makespan - 1)


def test_agent_cpsat_is_never_worse_than_the_agent_and_reaches_the_optimum():
    insts = small_instances(sizes=((6, 4), (6, 4)))  # one shape: one compilation of the policy
    agent_run = evaluate.make_runner("agent", samples=0)
    pair = evaluate.make_runner("agent_cpsat", samples=0, time_limit=5.0)
    for inst in insts:
        agent_cmax, _, agent_wall = agent_run(inst)
        cmax, start, wall, agent_part = pair(inst)
        assert agent_part["agent_makespan"] == agent_cmax and agent_part["agent_schedules"] == 1  # greedy only
        assert validate.check_schedule(inst.machines, inst.durations, start) == cmax
        assert cmax <= agent_cmax
        assert cmax == cpsat.solve(inst.machines, inst.durations, time_limit_s=10.0).makespan  # tiny: optimal
        assert wall < 5.0 + 1.0  # the pair keeps to the one budget


def test_agent_cpsat_falls_back_to_the_agent_schedule_when_cpsat_finds_nothing(monkeypatch):
    inst = small_instances()[0]
    agent_cmax, agent_start, _ = evaluate.make_runner("agent")(inst)
    real_solve = cpsat.solve

    def no_time(*args, **kwargs):  # 1 microsecond: CP-SAT stops before its first solution
        return real_solve(*args, **{**kwargs, "time_limit_s": 1e-6})
    monkeypatch.setattr(cpsat, "solve", no_time)
    cmax, start, *_ = evaluate.make_runner("agent_cpsat", time_limit=1.0)(inst)
    assert cmax <= agent_cmax and validate.check_schedule(inst.machines, inst.durations, start) == cmax


@pytest.mark.parametrize("search", cpsat.SEARCHES)
def test_both_cpsat_searches_reach_the_optimum_of_a_small_instance(search):
    inst = small_instances()[1]
    # each search proves its optimum (its own lower bound meets it), the other search agrees, the validator too
    res = cpsat.solve(inst.machines, inst.durations, time_limit_s=10.0, search=search)
    assert res.optimal and res.lower_bound == res.makespan
    assert validate.check_schedule(inst.machines, inst.durations, res.start_times) == res.makespan
    assert res.makespan == cpsat.solve(inst.machines, inst.durations, time_limit_s=10.0,
                                       search=cpsat.SEARCHES[1 - cpsat.SEARCHES.index(search)]).makespan
    with pytest.raises(ValueError, match="search='lns'; allowed: default, portfolio"):
        cpsat.solve(inst.machines, inst.durations, search="lns")


def test_cpsat_without_a_schedule_in_its_time_limit_names_the_setting():
    inst = small_instances()[0]
    with pytest.raises(ValueError, match=r"time_limit=1e-06: 1e-06 s for r0 \(6x4\) is too short, CP-SAT found no"):
        evaluate.make_runner("cpsat", time_limit=1e-6)(inst)


def test_agent_cpsat_without_the_bound_keeps_the_agent_schedule_when_cpsat_ends_worse(monkeypatch):
    inst = small_instances()[0]
    agent_cmax, agent_start, _ = evaluate.make_runner("agent")(inst)
    J, M = inst.durations.shape
    serial = np.cumsum(np.concatenate([[0], inst.durations.ravel()[:-1]])).reshape(J, M)  # one op at a time
    worse = int(inst.durations.sum())
    assert validate.check_schedule(inst.machines, inst.durations, serial) == worse > agent_cmax
    seen = {}

    def ends_worse(*args, **kwargs):
        seen.update(kwargs)
        return cpsat.CPResult(worse, serial, False, 0, 0.0, "FEASIBLE")
    monkeypatch.setattr(cpsat, "solve", ends_worse)
    cmax, start, *_ = evaluate.make_runner("agent_cpsat", time_limit=1.0, hint_bound=False,
                                           cpsat_search="portfolio")(inst)
    assert seen["upper_bound"] is None and seen["search"] == "portfolio"
    assert cmax == agent_cmax and np.array_equal(start, agent_start)


@pytest.mark.parametrize("name, text", [
    ("b.csv", "instance,jobs,machines,lower_bound,upper_bound\nr0,6,4,10,500\nr1,5,5,,400\n"),
    ("b.json", json.dumps({"r0": {"upper_bound": 500, "lower_bound": 10}, "r1": 400})),
    ("c.json", json.dumps([{"instance": "r0", "upper_bound": 500, "lower_bound": 10},
                           {"instance": "r1", "upper_bound": "400"}])),
])
def test_read_bounds_forms(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    got = instances.read_bounds(tmp_path / name)
    assert {k: (v["lower_bound"], v["upper_bound"]) for k, v in got.items()} == {"r0": (10, 500), "r1": (None, 400)}


@pytest.mark.parametrize("name, text, says", [
    ("b.csv", "name,ub\nr0,5\n", "columns 'instance' and 'upper_bound'"),
    ("b.json", "{not json", "is not a bounds file"),
    ("b.json", json.dumps({"r0": "many"}), "instance 'r0' has no integer upper_bound"),
    ("b.json", json.dumps({"r0": {"upper_bound": 5, "lower_bound": 9}}), "lower_bound=9"),
])
def test_read_bounds_refuses_bad_files_naming_them(tmp_path, name, text, says):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=f"bounds='{tmp_path / name}'.*{says}".replace("(", r"\(")):
        instances.read_bounds(tmp_path / name)
    with pytest.raises(ValueError, match="does not exist"):
        instances.read_bounds(tmp_path / "missing.csv")


def test_eval_reports_gaps_against_a_bounds_file(tmp_path):
    d = tmp_path / "insts"
    d.mkdir()
    for inst in small_instances():
        (d / f"{inst.name}.txt").write_text(instances.format_instance(inst))
    (tmp_path / "b.csv").write_text("instance,upper_bound\nr0,100\n")
    records = evaluate.run(evaluate.EvalConfig(solver="mwkr", instances=str(d), bounds=str(tmp_path / "b.csv")))
    by_name = {r["instance"]: r for r in records}
    assert by_name["r0"]["gap"] == pytest.approx(100 * (by_name["r0"]["makespan"] - 100) / 100)
    assert by_name["r1"]["gap"] is None
    assert policy_io.TRAINED_DIR.is_dir()
