"""AlgoPerf runner: timing rules under a fake clock, bad input, logs, resume, and a real baseline run."""
import csv
import dataclasses
import json
import logging
import pathlib
import subprocess
import sys

import flax.linen as nn
import numpy as np
import pytest

from algoperf import runner, spec
from upstream_algoperf import upstream_scoring_walk
from algoperf.workloads.base import BaseWorkload

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASELINES = ROOT / "algoperf" / "baselines"


class FakeClock:
    def __init__(self, start=100.0):
        self.t = start

    def __call__(self):
        return self.t

    def advance(self, dt):
        self.t += dt


class TinyWorkload(BaseWorkload):
    """A linear classifier on 64 random points; evaluation returns scripted accuracies."""
    workload_name = "tiny"
    default_batch_size = 16
    _eval_batch_size = 32
    _validation_target = 0.9
    _test_target = 0.0
    _max_runtime = 10
    _eval_period = 5
    _step_hint = 50

    def __init__(self, clock, eval_cost=10.0, accuracies=(0.1,), **kw):
        super().__init__(**kw)
        self.clock, self.eval_cost, self.accuracies, self.evals = clock, eval_cost, list(accuracies), 0

    def build_model(self):
        return nn.Dense(2, name="output")

    def load_splits(self, data_dir):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 3)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int32)
        return {s: {"inputs": x, "targets": y} for s in ("train", "validation", "test")}

    def eval_model(self, *args, **kwargs):
        self.clock.advance(self.eval_cost)
        acc = self.accuracies[min(self.evals, len(self.accuracies) - 1)]
        self.evals += 1
        return {"validation/accuracy": acc, "test/accuracy": acc, "train/accuracy": acc}


def fake_submission(clock, select_cost=0.5, update_cost=1.0, prepare_cost=None, raise_at=None,
                    with_train_state=False):
    seen = {}

    def get_batch_size(name):
        return 16

    def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
        return {"count": 0}

    def data_selection(workload, input_queue, optimizer_state, current_param_container, model_state,
                       hyperparameters, global_step, rng):
        clock.advance(select_cost)
        return next(input_queue)

    def update_params(workload, current_param_container, current_params_types, model_state, hyperparameters,
                      batch, loss_type, optimizer_state, eval_results, global_step, rng, **kw):
        seen.setdefault("train_state_keys", set()).update(kw)
        clock.advance(update_cost)
        if raise_at is not None and global_step == raise_at:
            raise spec.TrainingCompleteError()
        return {"count": optimizer_state["count"] + 1}, current_param_container, model_state

    def prepare_for_eval(workload, current_param_container, current_params_types, model_state,
                         hyperparameters, loss_type, optimizer_state, eval_results, global_step, rng):
        clock.advance(prepare_cost)
        return optimizer_state, current_param_container, model_state

    update = update_params
    if with_train_state:
        def update(workload, current_param_container, current_params_types, model_state, hyperparameters,
                   batch, loss_type, optimizer_state, eval_results, global_step, rng, train_state=None):
            assert train_state is not None and "accumulated_submission_time" in train_state
            return update_params(workload, current_param_container, current_params_types, model_state,
                                 hyperparameters, batch, loss_type, optimizer_state, eval_results, global_step,
                                 rng, train_state=train_state)
    sub = runner.Submission("fake", None, get_batch_size, init_optimizer_state, update, data_selection,
                            prepare_for_eval if prepare_cost is not None else None, with_train_state)
    return sub, seen


def run(clock, workload, sub, **kw):
    return runner.train_once(workload, sub, None, 0, global_batch_size=16, clock=clock, **kw)


def test_timing_rules_with_fake_clock():
    # Hand trace (start t=100, select 0.5 + update 1.0 per step, eval 10, period 5, budget 10):
    # step 1 ends t=101.5 (acc 1.5) -> eval (101.5 - 0 >= 5), ends 111.5; steps 2-4 no eval (gap < 5);
    # step 5: acc 7.5, gap 6 -> eval, ends 127.5; step 9: acc 13.5, gap 6 -> budget spent, no eval, stop.
    clock = FakeClock()
    sub, _ = fake_submission(clock)
    result = run(clock, TinyWorkload(clock), sub)
    assert result.global_step == 9
    assert result.score == pytest.approx(13.5)  # update + selection time only; eval time excluded
    assert [s for s, _ in result.eval_results] == [1, 5]
    assert result.train_state["accumulated_eval_time"] == pytest.approx(20.0)
    assert [r["score"] for _, r in result.eval_results] == pytest.approx([1.5, 7.5])
    assert [r["total_duration"] for _, r in result.eval_results] == pytest.approx([11.5, 27.5])
    assert not result.reached_validation_target and not result.train_state["is_time_remaining"]


def test_prepare_for_eval_is_timed_and_self_tuning_gets_its_budget():
    clock = FakeClock()
    sub, _ = fake_submission(clock, prepare_cost=0.25)
    result = run(clock, TinyWorkload(clock), sub)
    # as above plus 0.25 at each eval check (steps 1, 5, 9): 13.5 + 0.75
    assert result.score == pytest.approx(14.25) and result.global_step == 9
    clock = FakeClock()
    sub, _ = fake_submission(clock)
    result = run(clock, TinyWorkload(clock), sub, tuning_ruleset="self", rules="v0.5")
    # v0.5, 3x budget 30: evals at steps 1, 5, 9, 13, 17 (acc 25.5); step 21: acc 31.5 >= 30 -> stop
    assert result.global_step == 21 and result.score == pytest.approx(31.5)
    assert [s for s, _ in result.eval_results] == [1, 5, 9, 13, 17]
    clock = FakeClock()
    sub, _ = fake_submission(clock)
    result = run(clock, TinyWorkload(clock), sub, tuning_ruleset="self")
    # v0.6, 1.5x budget 15: evals at steps 1, 5, 9 (acc 13.5); step 13: acc 19.5 >= 15 -> stop
    assert result.global_step == 13 and result.score == pytest.approx(19.5)
    assert [s for s, _ in result.eval_results] == [1, 5, 9]


def test_stops_at_target_training_complete_and_max_steps():
    clock = FakeClock()
    sub, _ = fake_submission(clock)
    result = run(clock, TinyWorkload(clock, accuracies=(0.5, 0.95)), sub)
    assert result.reached_validation_target and result.global_step == 5 and result.score == pytest.approx(7.5)
    clock = FakeClock()
    sub, _ = fake_submission(clock, raise_at=2)  # TrainingCompleteError at global_step 2 -> step 3, free eval
    result = run(clock, TinyWorkload(clock), sub)
    assert result.global_step == 3 and [s for s, _ in result.eval_results] == [1, 3]
    clock = FakeClock()
    sub, seen = fake_submission(clock, with_train_state=True)
    result = run(clock, TinyWorkload(clock), sub, max_global_steps=2)
    assert result.global_step == 2 and [s for s, _ in result.eval_results] == [1, 2]
    assert seen["train_state_keys"] == {"train_state"}
    clock = FakeClock()
    sub, seen = fake_submission(clock)
    run(clock, TinyWorkload(clock), sub, max_global_steps=1)
    assert seen.get("train_state_keys", set()) == set()  # not passed when the signature lacks it


def test_logs_in_upstream_layout_and_resume(tmp_path):
    clock = FakeClock()
    sub, _ = fake_submission(clock)
    workload = TinyWorkload(clock)
    log_dir = tmp_path / "study_0" / "tiny_jax" / "trial_1"
    result = run(clock, workload, sub, log_dir=log_dir, max_global_steps=6, config={"a": 1})
    with open(log_dir / "eval_measurements.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["global_step"]) for r in table] == [1, 5, 6]
    required = {"accumulated_eval_time", "accumulated_logging_time", "accumulated_submission_time",
                "global_step", "preemption_count", "score", "total_duration", "validation/accuracy"}
    assert required <= set(table[0]) and list(table[0]) == sorted(table[0])
    meta = json.loads((log_dir / "meta_data_0.json").read_text())
    assert meta["workload.target_metric_name"] == "accuracy" and meta["workload.validation_target_value"] == 0.9
    assert float(table[-1]["score"]) == pytest.approx(result.score)
    # a finished trial is not rerun
    again = run(clock, workload, sub, log_dir=log_dir, max_global_steps=6, config={"a": 1})
    assert again.resumed_from == 6 and again.global_step == 6
    with pytest.raises(ValueError, match="different configuration"):
        run(clock, workload, sub, log_dir=log_dir, max_global_steps=6, config={"a": 2})


def test_bad_submission_and_workload(tmp_path):
    bad = tmp_path / "bad_submission.py"
    bad.write_text("def get_batch_size(name):\n    return 8\n\ndef update_params(**kw):\n    pass\n")
    with pytest.raises(ValueError, match=r"lacks the submission function\(s\) "
                                         r"\['init_optimizer_state', 'data_selection'\]"):
        runner.load_submission(bad)
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ValueError, match="importing it failed"):
        runner.load_submission(broken)
    with pytest.raises(ValueError, match="not a Python file"):
        runner.load_submission(tmp_path / "nope.py")
    with pytest.raises(ValueError, match="^workload='imagenet' is unknown"):
        runner.ExperimentConfig(workload="imagenet", submission_path="x.py", experiment_dir=str(tmp_path),
                                tuning_search_space="s.json")
    with pytest.raises(ValueError, match="^tuning_search_space=None: a search-space JSON is required"):
        runner.check_run(runner.ExperimentConfig(workload="mnist1d", submission_path="x.py",
                                                 experiment_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="^experiment_dir='' is required"):
        runner.check_run(runner.ExperimentConfig(workload="mnist1d", submission_path="x.py",
                                                 tuning_search_space="s.json"))
    with pytest.raises(ValueError, match="^num_studies=0 must be an integer >= 1"):
        runner.ExperimentConfig(num_studies=0)
    with pytest.raises(ValueError, match="tuning_ruleset"):
        runner.ExperimentConfig(workload="mnist1d", submission_path="x.py", experiment_dir=str(tmp_path),
                                tuning_ruleset="internal")
    empty = tmp_path / "space.json"
    empty.write_text("[]")
    cfg = runner.ExperimentConfig(workload="mnist1d", submission_path=str(BASELINES / "nadamw.py"),
                                  experiment_dir=str(tmp_path / "exp"), tuning_search_space=str(empty))
    with pytest.raises(ValueError, match="empty"):
        runner.run_experiment(cfg)  # fails before any data is generated or model built
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow  # about 10 s; tests/test_bad_input.py's run_algoperf rows cover the same cases by default
def test_cli_missing_or_malformed_search_space_is_one_line(tmp_path):
    """scripts.run_algoperf: a bad --tuning_search_space ends with one line on stderr, exit 1, before any work."""
    bad = tmp_path / "bad.json"
    bad.write_text("{'lr': 1")
    command = [sys.executable, "-m", "scripts.run_algoperf", "--workload=mnist1d",
               f"--submission_path={BASELINES / 'nadamw.py'}", f"--experiment_dir={tmp_path / 'exp'}"]
    for extra, expected in (
            ([], "error: --tuning_search_space=None: a search-space JSON is required with --tuning_ruleset='external'"),
            ([f"--tuning_search_space={bad}"], f"error: --tuning_search_space='{bad}' is not valid JSON"),
            ([f"--tuning_search_space={tmp_path / 'nope.json'}"],
             f"error: --tuning_search_space='{tmp_path / 'nope.json'}' is not a file"),
            (["--tuning_ruleset=self", f"--tuning_search_space={bad}"], "error: --tuning_search_space='")):
        out = subprocess.run(command + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith(expected), out.stderr
    assert not (tmp_path / "exp").exists()  # nothing was started


def test_batch_size_hooks_as_upstream(caplog):
    clock = FakeClock()
    sub, _ = fake_submission(clock)

    def only_base(name):
        if name != "lm":
            raise ValueError(f"unsupported {name}")
        return 32
    sub = runner.Submission(**{**sub.__dict__, "get_batch_size": only_base})
    assert runner.resolve_batch_size(sub, "lm_gelu") == 32  # a held-out variant falls back to its base
    with caplog.at_level(logging.WARNING):
        assert runner.resolve_batch_size(sub, "mnist1d") == 128  # upstream-style refusal: the workload's default
        assert runner.resolve_batch_size(sub, "tiny", default_batch_size=16) == 16  # an unregistered workload
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per resolution, not one per name tried
    assert warnings[0] == ("submission fake: get_batch_size('mnist1d') raised ValueError: unsupported mnist1d; "
                           "using workload mnist1d's default batch size 128")
    with pytest.raises(ValueError, match="the default batch size of\\('tiny'\\) returned 0"):
        runner.resolve_batch_size(sub, "tiny", default_batch_size=0)
    sub = runner.Submission(**{**sub.__dict__, "get_batch_size": lambda name: 12})
    with pytest.raises(ValueError, match="returned 12, which the 8 devices do not divide"):
        runner.resolve_batch_size(sub, "mnist1d")
    workload = TinyWorkload(clock)
    assert runner.resolve_eval_batch_size(sub, "mnist1d", workload) == workload.eval_batch_size
    sub = runner.Submission(**{**sub.__dict__, "get_eval_batch_size": lambda name: 0})
    with pytest.raises(ValueError, match=r"get_eval_batch_size\('mnist1d'\) returned 0"):
        runner.resolve_eval_batch_size(sub, "mnist1d", workload)


def test_upstream_runner_flags_layout_resume_overwrite(tmp_path, monkeypatch):
    clock = FakeClock()
    sub, _ = fake_submission(clock)
    sub = runner.Submission(**{**sub.__dict__, "get_eval_batch_size": lambda name: 8})
    monkeypatch.setattr(runner, "load_submission", lambda path: sub)
    space = tmp_path / "space.json"
    space.write_text(json.dumps([{"learning_rate": 0.1}, {"learning_rate": 0.2}, {"learning_rate": 0.3}]))
    batches = []

    class Recording(TinyWorkload):
        def eval_model(self, global_batch_size, *args, **kwargs):
            batches.append(global_batch_size)
            return super().eval_model(global_batch_size, *args, **kwargs)

    cfg = runner.ExperimentConfig(workload="mnist1d", submission_path="fake.py",
                                  experiment_dir=str(tmp_path / "exp"), experiment_name="scored/nadamw",
                                  tuning_search_space=str(space), num_tuning_trials=3, num_studies=2,
                                  hparam_start_index=1, max_global_steps=2)
    summary = runner.run(cfg, clock, workload=Recording(clock))
    assert [(t["study"], t["trial"]) for t in summary["trials"]] == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert set(batches) == {8}  # the submission's get_eval_batch_size
    # upstream's scorer reads the tree: only directories where it expects them, summaries beside the trials
    assert upstream_scoring_walk(tmp_path / "exp" / "scored") == [
        ("nadamw", f"study_{k}", "mnist1d_jax", f"trial_{n}", 2) for k in (0, 1) for n in (2, 3)]
    study_summary = json.loads((tmp_path / "exp/scored/nadamw/study_1/mnist1d_jax/summary.json").read_text())
    assert [t["trial"] for t in study_summary["trials"]] == [2, 3]
    hparams = json.loads((tmp_path / "exp/scored/nadamw/study_0/mnist1d_jax/trial_2/hparams.json").read_text())
    assert hparams == {"learning_rate": 0.2}  # trial_N keeps the point's global index, as upstream
    with pytest.raises(ValueError, match="holds trials already; `resume_last_run` resumes them"):
        runner.run(cfg, clock, workload=Recording(clock))
    resumed = runner.run_experiment(dataclasses.replace(cfg, resume_last_run=True), clock, workload=Recording(clock))
    assert [t["global_step"] for t in resumed["trials"]] == [2, 2, 2, 2]  # finished trials are not rerun
    (tmp_path / "exp/scored/nadamw/study_0/mnist1d_jax/stale").mkdir()
    runner.run(dataclasses.replace(cfg, overwrite=True), clock, workload=Recording(clock))
    assert not (tmp_path / "exp/scored/nadamw/study_0/mnist1d_jax/stale").exists()
    runner.run(dataclasses.replace(cfg, num_studies=1), clock, workload=Recording(clock))
    assert sorted(p.name for p in (tmp_path / "exp/scored/nadamw/mnist1d_jax").iterdir()) == [
        "summary.json", "trial_2", "trial_3"]  # one study: upstream's submission_runner layout
    for bad, says in (({"framework": "pytorch"}, "this runner runs JAX submissions only"),
                      ({"hparam_end_index": 4}, "need 0 <= start < end <= num_tuning_trials=3"),
                      ({"hparam_start_index": 3}, "need 0 <= start < end"),
                      ({"overwrite": True, "resume_last_run": True}, "contradict"),
                      ({"rules": "v0.4"}, "allowed: v0.6, v0.5")):
        with pytest.raises(ValueError, match=says):
            dataclasses.replace(cfg, **bad)


@pytest.mark.slow  # about 50 s; the targets' provenance is results/algoperf/targets.json
def test_target_setting_baseline_reaches_mnist1d_target(tmp_path):
    """The configuration that set the mnist1d target (results/algoperf/targets.json) reaches it again.

    Same baseline, hyperparameters and seed as the target-setting rerun that reached it; training is
    deterministic and the learning rate decays to zero by 75 % of step_hint, so the final parameters (and
    their validation accuracy) do not depend on when the time-based evaluations happen.
    """
    from algoperf import halton
    from algoperf.workloads.mnist1d import Mnist1dWorkload

    record = json.loads((ROOT / "results" / "algoperf" / "targets.json").read_text())["workloads"]["mnist1d"]
    assert record["validation_target"] == Mnist1dWorkload._validation_target  # the class cites this file
    rerun = max(range(len(record["reruns"])), key=lambda r: record["reruns"][r]["best_validation"])

    class Generous(Mnist1dWorkload):  # a loaded machine must not make the test flaky
        _max_runtime = 300

    submission = runner.load_submission(BASELINES / f"{record['best']['baseline']}.py")
    hparams = halton.hyperparameters_from_dict(record["best"]["hyperparameters"])
    workload = Generous()
    result = runner.train_once(workload, submission, hparams, record["reruns"][rerun]["seed"],
                               global_batch_size=runner.resolve_batch_size(submission, "mnist1d"),
                               log_dir=tmp_path / "trial", max_global_steps=workload.step_hint)
    best = max(r["validation/accuracy"] for _, r in result.eval_results)
    assert result.reached_validation_target, (best, Mnist1dWorkload._validation_target)
    csv_path = tmp_path / "trial" / "eval_measurements.csv"
    assert csv_path.is_file()


# measured on mnist1d at 2 steps without the clearing: 142 more maps after each trial (1,329 -> 2,325 over 8)
GROWTH_PER_TRIAL_WITHOUT_CLEARING = 142


def _memory_maps() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


@pytest.mark.skipif(not pathlib.Path("/proc/self/maps").exists(), reason="counts memory maps through Linux's /proc")
def test_trials_do_not_accumulate_compiled_programs(tmp_path):
    """Each trial traces fresh jitted functions; without clearing JAX's caches after it, their executables
    stay mapped, and a whole suite in one process (300+ trials) ran out of memory maps in LLVM's JIT (a
    segfault). Six trials after the second may add fewer maps than one trial leaked without the clearing."""
    from algoperf import baselines

    counts = []
    cfg = runner.ExperimentConfig(workload="mnist1d", submission_path=str(baselines.submission_path("nadamw")),
                                  tuning_search_space=str(baselines.search_space_path("nadamw")),
                                  num_tuning_trials=8, experiment_dir=str(tmp_path / "exp"), max_global_steps=2,
                                  save_checkpoints=False)
    runner.run_experiment(cfg, after_trial=lambda _: counts.append(_memory_maps()))
    assert len(counts) == 8
    assert counts[-1] - counts[1] < GROWTH_PER_TRIAL_WITHOUT_CLEARING, counts  # six trials: less than one leaked
