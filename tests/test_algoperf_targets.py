"""Target setting (algoperf.targets) with scripted runs in place of training; the suite's validation."""
import math

import pytest

from algoperf import baselines as baselines_lib
from algoperf import suite
from algoperf import targets as st


def test_target_is_median_of_reruns_of_the_best_configuration(monkeypatch):
    calls = []

    def fake_run_trial(workload, submission, hparams, seed, steps):
        lr = hparams.learning_rate
        calls.append((submission.path, lr, seed, steps))
        rerun = seed in reruns_seeds
        # accuracy grows with lr inside each baseline; reruns of the chosen point give scripted values
        k = reruns_seeds.index(seed) if rerun else 0
        best = rerun_values[k] if rerun else min(0.5 + lr, 0.99)
        runtime = rerun_runtimes[k] if rerun else 4.0
        curve = [{"step": 1, "time": 1.0, "validation": 0.1, "test": 0.1},
                 {"step": 9, "time": runtime, "validation": best, "test": best - 0.02}]
        return {"seed": seed, "best_validation": best, "test_at_best": best - 0.02, "best_test": best - 0.02,
                "curve": curve, "steps": steps, "submission_time": runtime}

    reruns_seeds = [st.runner.trial_seed(1000, 0, r) for r in (1, 2, 3, 4, 5)]
    rerun_values = [0.90, 0.80, 0.85, 0.95, 0.70]
    rerun_runtimes = [4.0, 5.0, 6.0, 7.0, 8.0]
    monkeypatch.setattr(st, "run_trial", fake_run_trial)
    res = st.set_targets("mnist1d", ["nadamw", "sgd_nesterov"], trials_per_baseline=2, reruns=5,
                         budget_factor=4 / 3, rng_seed=0)
    tuning = [t for t in res["trials"]]
    assert len(tuning) == 4 and len(res["reruns"]) == 5
    best = max(tuning, key=lambda t: t["best_validation"])
    assert res["best"]["hyperparameters"] == best["hyperparameters"]
    assert res["best"]["baseline"] == best["baseline"]
    assert res["validation_target"] == pytest.approx(0.85)  # median of the reruns, not of the tuning trials
    # upstream: the worst test value among the reruns reaching the validation target (0.90, 0.85, 0.95)
    assert res["test_target"] == pytest.approx(0.83)
    assert res["rerun_times_to_target_s"] == [4.0, math.inf, 6.0, 7.0, math.inf]
    assert res["target_setting_runtime_s"] == 6.0  # the median runtime of the reruns
    assert res["max_runtime_s"] == 8  # 4/3 x 6 s
    assert all(steps == res["step_hint"] for *_, steps in calls)


def test_worst_test_of_reaching_respects_direction():
    reruns = [{"best_validation": 2.0, "best_test": 2.1}, {"best_validation": 2.5, "best_test": 2.2},
              {"best_validation": 1.9, "best_test": 2.3}]
    assert st.worst_test_of_reaching(reruns, 2.0, minimize=True) == 2.3  # losses: the largest of the reaching
    assert st.worst_test_of_reaching(reruns, 2.0, minimize=False) == 2.1  # accuracies: the smallest


def test_first_time_reaching_respects_direction():
    curve = [{"time": 1.0, "validation": 3.0}, {"time": 2.0, "validation": 2.0}]
    assert st.first_time_reaching(curve, 2.5, minimize=True) == 2.0
    assert st.first_time_reaching(curve, 2.5, minimize=False) == 1.0
    assert st.first_time_reaching(curve, 1.0, minimize=True) == math.inf


def test_untargeted_workload_never_reaches_and_has_no_budget():
    w = st.untargeted("lm")
    assert w.validation_target_value == math.inf * -1 and w.max_allowed_runtime_sec >= 10 ** 9
    assert not w.has_reached_validation_target({"validation/bits_per_byte": 0.0})


def test_suite_validates_before_running(tmp_path):
    with pytest.raises(ValueError, match="baselines='nadamw,nope': 'nope' has no search space"):
        suite.SuiteConfig(experiment_dir=str(tmp_path), baselines="nadamw,nope", workloads="mnist1d")
    with pytest.raises(ValueError, match=r"workloads='imagenet': \['imagenet'\] unknown"):
        suite.SuiteConfig(experiment_dir=str(tmp_path), baselines="nadamw", workloads="imagenet")
    with pytest.raises(ValueError, match="experiment_dir='' is required"):
        suite.suite_configs(suite.SuiteConfig())
    configs = suite.suite_configs(suite.SuiteConfig(experiment_dir=str(tmp_path), baselines="nadamw,adamw",
                                                    workloads="mnist1d,ctr", self_tuning=True))
    assert len(configs) == 6 and {c.tuning_ruleset for c in configs} == {"external", "self"}
    assert [(c.workload, c.submission_path.rsplit("/", 1)[1]) for c in configs[:2]] == [
        ("mnist1d", "nadamw.py"), ("mnist1d", "adamw.py")]  # workload-major
    assert all(c.resume_last_run and c.num_studies == 3 and c.rules == "v0.6" for c in configs)
    assert not any(tmp_path.iterdir())  # nothing written
    v06 = suite.SuiteConfig(experiment_dir=str(tmp_path))  # v0.6: base workloads, 3 studies x 5 trials, self-tuning
    assert (v06.workload_names, v06.studies, v06.num_tuning_trials, v06.self_tuning) == (
        ["mnist1d", "ctr", "lm", "molgraph", "mri"], 3, 5, True)
    assert len(suite.suite_configs(v06)) == 25 and suite.out_dir(v06) == tmp_path / "scores"
    v05 = suite.SuiteConfig(experiment_dir=str(tmp_path), rules="v0.5")
    assert v05.studies == 5 and v05.workload_names == ["mnist1d", "ctr", "lm", "molgraph", "mri", "mnist1d_tanh",
                                                       "lm_gelu", "ctr_layernorm"]
    variant = {c.workload: c.tuning_search_space for c in suite.suite_configs(v05) if "nadamw.py" in c.submission_path
               and c.tuning_ruleset == "external"}
    assert variant["lm_gelu"] == variant["lm"] == str(baselines_lib.list_search_space_path("nadamw", "lm"))
    with pytest.raises(ValueError, match=r"\['lm_gelu'\] are held-out variants, which v0.6 does not score"):
        suite.SuiteConfig(experiment_dir=str(tmp_path), workloads="lm,lm_gelu")
    with pytest.raises(ValueError, match="lies inside the scored tree"):
        suite.SuiteConfig(experiment_dir=str(tmp_path), out_dir=str(tmp_path / "external" / "scores"))


def test_targets_config_validates_before_running():
    with pytest.raises(ValueError, match="unknown"):
        st.TargetsConfig(workloads="mnist1d,imagenet")
    with pytest.raises(ValueError, match="reruns=0 must be an integer >= 1"):
        st.TargetsConfig(reruns=0)
    with pytest.raises(ValueError, match="reruns=3 must be >= 5"):
        st.TargetsConfig(reruns=3)
    with pytest.raises(ValueError, match="out='' is required"):
        st.set_all_targets(st.TargetsConfig(workloads="mnist1d"))
