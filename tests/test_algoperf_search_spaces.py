"""Leave-one-workload-out short lists (algoperf/search_spaces.py): the choice, its independence from the held-out
workload, the committed lists, and the suite's use of them."""
import itertools
import json
import math
import pathlib

import numpy as np
import pytest

from algoperf import baselines as baselines_lib
from algoperf import halton, runner, search_spaces, suite
from algoperf import workloads as workloads_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECORD = ROOT / "results" / "algoperf" / "search_spaces.json"


def test_shortfall_by_hand():
    assert search_spaces.shortfall(0.40, 0.41, minimize=True) == 0.0
    assert search_spaces.shortfall(0.451, 0.41, minimize=True) == pytest.approx(0.1)
    assert search_spaces.shortfall(0.95, 0.975, minimize=False) == pytest.approx(0.025 / 0.975)
    assert search_spaces.shortfall(0.99, 0.975, minimize=False) == 0.0
    assert search_spaces.shortfall(math.nan, 0.975, minimize=False) == math.inf


def covering_cost(s: np.ndarray, rows) -> float:
    """The objective, written independently: sum over workloads of the best chosen point's shortfall."""
    return float(sum(min(s[i, j] for i in rows) for j in range(s.shape[1])))


def test_choice_covers_each_workload_with_its_specialist():
    # Two specialists (each at the target on one workload, far off the other) beat the generalists, which a
    # greedy choice would take first.
    s = np.array([[0.05, 0.05], [0.0, 0.5], [0.5, 0.0], [0.04, 0.06]])
    assert sorted(search_spaces.choose_points(s, 2)) == [1, 2]
    assert search_spaces.choose_points(s, 1) == [0]  # one point: the lowest total
    # Every subset covers: the members with the smaller mean shortfall, best generalist first.
    tie = np.array([[0.0, 0.0], [0.0, 0.3], [0.0, 0.1]])
    assert search_spaces.choose_points(tie, 2) == [0, 2]
    assert search_spaces.choose_points(np.zeros((3, 2)), 3) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(5))
def test_choice_is_the_best_subset_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    s = np.maximum(0.0, rng.normal(0.02, 0.05, size=(8, 4)))
    chosen = search_spaces.choose_points(s, 5)
    best = min(covering_cost(s, c) for c in itertools.combinations(range(8), 5))
    assert len(set(chosen)) == 5 and covering_cost(s, chosen) == pytest.approx(best, abs=1e-12)
    totals = [s[i].sum() for i in chosen]
    assert totals == sorted(totals)  # the head of the list is the best generalist


def test_too_many_subsets_is_one_line():
    with pytest.raises(ValueError, match="subsets, more than"):
        search_spaces.choose_points(np.zeros((200, 2)), 5)


def test_diverged_point_is_never_preferred():
    s = np.array([[math.inf, 0.0], [0.01, 0.01]])
    assert search_spaces.choose_points(s, 1) == [1]


def fake_records(values: dict, targets: dict, minimize: dict) -> dict:
    """Target-setting records of one baseline 'nadamw' with points lr=0..n-1 on each workload."""
    records = {}
    for w, vals in values.items():
        trials = [{"baseline": "nadamw", "hyperparameters": {"learning_rate": float(i)}, "best_validation": v}
                  for i, v in enumerate(vals)]
        records[w] = {"trials": trials, "validation_target": targets[w], "minimize": minimize[w],
                      "metric": "validation/loss" if minimize[w] else "validation/accuracy"}
    return records


def test_held_out_workload_never_chooses_its_own_list():
    values = {"a": [0.50, 0.40, 0.45], "b": [0.90, 0.80, 0.99], "c": [0.30, 0.35, 0.31]}
    targets = {"a": 0.40, "b": 0.98, "c": 0.30}
    minimize = {"a": True, "b": False, "c": True}
    base = search_spaces.leave_one_out(fake_records(values, targets, minimize), "nadamw", 1)
    flipped = dict(values, a=[0.40, 0.50, 0.50])  # a now prefers point 0
    moved = search_spaces.leave_one_out(fake_records(flipped, targets, minimize), "nadamw", 1)
    assert moved["a"]["points"] == base["a"]["points"]  # a's own runs do not choose a's list
    assert moved["a"]["shortfall"]["a"] != base["a"]["shortfall"]["a"]  # (recorded, though)
    assert moved["b"]["points"] != base["b"]["points"] or moved["c"]["points"] != base["c"]["points"]
    assert base["a"]["chosen_on"] == ["b", "c"]


def test_candidates_must_be_the_same_points_everywhere():
    values = {"a": [0.5, 0.4], "b": [0.9, 0.8]}
    records = fake_records(values, {"a": 0.4, "b": 0.9}, {"a": True, "b": False})
    records["b"]["trials"][1]["hyperparameters"] = {"learning_rate": 7.0}
    with pytest.raises(ValueError, match="same draw"):
        search_spaces.candidate_matrix(records, "nadamw")


def test_candidate_matrix_of_the_committed_target_setting():
    """The shortfalls recomputed from results/algoperf/targets.json by hand: 8 points x 3 workloads per baseline."""
    records = json.loads((ROOT / "results" / "algoperf" / "targets.json").read_text())["workloads"]
    points, workloads, s = search_spaces.candidate_matrix(records, "adamw")
    assert len(points) == 8 and workloads == sorted(records)
    for j, w in enumerate(workloads):
        rec = records[w]
        for t in (t for t in rec["trials"] if t["baseline"] == "adamw"):
            v, target = t["best_validation"], rec["validation_target"]
            expected = max(0.0, ((v - target) if rec["minimize"] else (target - v)) / abs(target))
            assert s[points.index(t["hyperparameters"]), j] == pytest.approx(expected)


def test_committed_lists_are_the_procedure_output_and_run_in_the_suite(tmp_path):
    """The record and the lists in algoperf/baselines/search_spaces/ agree with a rerun of the procedure on the
    record's own target files; each is an upstream list every baseline's submission reads; the suite tunes
    over them with search_spaces='lists'."""
    record = json.loads(RECORD.read_text())
    cfg = search_spaces.ChooseConfig(**dict(record["config"], spaces_dir=str(tmp_path / "lists"),
                                            out=str(tmp_path / "record.json")))
    again = search_spaces.choose_all(cfg)
    assert again["lists"] == record["lists"]
    for baseline, per_workload in record["lists"].items():
        submission = runner.load_submission(baselines_lib.submission_path(baseline))
        for w, chosen in per_workload.items():
            path = baselines_lib.list_search_space_path(baseline, w)
            space = halton.load_search_space(path)
            assert space == chosen["points"] == json.loads((tmp_path / "lists" / baseline / f"{w}.json").read_text())
            assert len(space) == record["config"]["points"]
            runner.check_hyperparameter_names(halton.validate_search_space(space), submission, str(path))
            assert w not in chosen["chosen_on"]
    cfg = suite.SuiteConfig(experiment_dir=str(tmp_path / "exp"), search_spaces="lists", workloads="mnist1d,lm")
    for run_cfg in suite.suite_configs(cfg):
        if run_cfg.tuning_ruleset == "external":
            baseline = pathlib.Path(run_cfg.submission_path).stem
            assert run_cfg.tuning_search_space == str(baselines_lib.list_search_space_path(baseline, run_cfg.workload))
            runner.check_run(run_cfg)


def test_suite_search_space_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="search_spaces='grid'; allowed: lists, boxes"):
        suite.SuiteConfig(experiment_dir=str(tmp_path), search_spaces="grid")
    with pytest.raises(ValueError, match="has no list for mnist"):
        suite.SuiteConfig(experiment_dir=str(tmp_path), search_spaces="lists", workloads="mnist")
    boxes = suite.suite_configs(suite.SuiteConfig(experiment_dir=str(tmp_path), workloads="ctr", self_tuning=False,
                                                  search_spaces="boxes"))
    assert {c.tuning_search_space for c in boxes} == {
        str(baselines_lib.search_space_path(b)) for b in baselines_lib.REFERENCE_BASELINES}


def test_a_missing_targets_file_is_one_line(tmp_path):
    cfg = search_spaces.ChooseConfig(targets=str(tmp_path / "nope.json"), out=str(tmp_path / "r.json"))
    with pytest.raises(ValueError, match="nope.json' is not a file"):
        search_spaces.choose_all(cfg)
    assert not (tmp_path / "r.json").exists()


def test_every_scored_workload_has_a_list():
    record = json.loads(RECORD.read_text())
    assert set(record["workloads"]) >= set(workloads_lib.DEFAULT_BASE_WORKLOADS)
    for baseline in baselines_lib.REFERENCE_BASELINES:
        assert set(record["lists"][baseline]) == set(record["workloads"])
    assert all(workloads_lib.workload_class(w) for w in record["workloads"])
