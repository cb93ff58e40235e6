"""Files written for upstream AlgoPerf's workloads run on this suite (issue 35, item 4).

A submission in the style of upstream's published baselines (``tests/upstream_style/``: its
``get_batch_size`` knows only upstream's workload names and raises ``ValueError`` for any other) with a list
search space like upstream's ``tuning_search_space.json`` runs a few steps on every base workload whose data
is generated (``mnist`` needs the real MNIST files); the runner falls back to the workload's default batch
size with one warning naming the submission, the workload and the size.
"""
import json
import logging
import math
import pathlib

import pytest

from algoperf import runner
from algoperf import workloads as workloads_lib

HERE = pathlib.Path(__file__).resolve().parent / "upstream_style"
SUBMISSION = HERE / "jax_nadamw_upstream_style.py"
SPACE = HERE / "tuning_search_space.json"
GENERATED = [w for w in workloads_lib.BASE_WORKLOADS if w != "mnist"]  # mnist reads the real MNIST files
STEPS = 3
SLOW = {"lm", "molgraph", "mri"}  # compile + evaluate > ~20 s on 2 cores


def test_every_generated_base_workload_is_covered():
    assert {"mnist1d", "lm", "ctr", "molgraph", "mri"} <= set(GENERATED)


@pytest.mark.parametrize("name", [pytest.param(w, marks=pytest.mark.slow) if w in SLOW else w for w in GENERATED])
def test_upstream_style_submission_runs(name, tmp_path, caplog):
    points = json.loads(SPACE.read_text())
    cfg = runner.ExperimentConfig(workload=name, submission_path=str(SUBMISSION), tuning_search_space=str(SPACE),
                                  num_tuning_trials=len(points), experiment_dir=str(tmp_path / "exp"),
                                  max_global_steps=STEPS, save_checkpoints=False)
    with caplog.at_level(logging.WARNING):
        summary = runner.run_experiment(cfg)
    default = workloads_lib.workload_class(name).default_batch_size
    fallbacks = [r.getMessage() for r in caplog.records if "default batch size" in r.getMessage()]
    assert fallbacks == [f"submission {SUBMISSION}: get_batch_size({name!r}) raised ValueError: Unsupported workload "
                         f"name: {name}.; using workload {name}'s default batch size {default}"]
    assert summary["batch_size"] == default
    assert [t["global_step"] for t in summary["trials"]] == [STEPS] * len(points)
    workload = workloads_lib.get_workload(name)
    for i, (trial, point) in enumerate(zip(summary["trials"], points), start=1):
        assert math.isfinite(trial["final"][f"validation/{workload.target_metric_name}"])
        hparams = json.loads((tmp_path / "exp" / f"{name}_jax" / f"trial_{i}" / "hparams.json").read_text())
        assert hparams == point  # the list's points, in order


def test_search_space_names_the_submission_never_reads(tmp_path):
    from algoperf import baselines

    for name in baselines.REFERENCE_BASELINES:  # every baseline's space names only what it reads
        runner.check_run(runner.ExperimentConfig(
            workload="mnist1d", submission_path=str(baselines.submission_path(name)),
            tuning_search_space=str(baselines.search_space_path(name)), experiment_dir=str(tmp_path / name)))
    points = json.loads(SPACE.read_text())
    typo = tmp_path / "space.json"
    typo.write_text(json.dumps([{("lerning_rate" if k == "learning_rate" else k): v for k, v in p.items()}
                                for p in points]))
    cfg = runner.ExperimentConfig(workload="mnist1d", submission_path=str(SUBMISSION), tuning_search_space=str(typo),
                                  experiment_dir=str(tmp_path / "exp"))
    with pytest.raises(ValueError, match=r"hyperparameter 'lerning_rate' is read nowhere in submission_path="):
        runner.check_run(cfg)
    # "nesterov" occurs in optax (an installed package the submission uses), never in the submission: unknown
    typo.write_text(json.dumps([{**p, "nesterov": True} for p in points]))
    with pytest.raises(ValueError, match=r"hyperparameter 'nesterov' is read nowhere"):
        runner.check_run(cfg)
