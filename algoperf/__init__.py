"""AlgoPerf-compatible workload layer: datasets, workloads, submission runner, tuning and scoring.

Public API (each a submodule, imported on first use, so ``from algoperf import spec`` -- what upstream
submissions do -- loads the submission API alone, not the suite):

* :mod:`algoperf.spec` -- the v0.6 submission API (``Workload``, ``LossType``, ``ParameterType``, ...);
* :mod:`algoperf.jax_sharding_utils` -- upstream's sharding helpers (replicate, shard along the batch);
* :mod:`algoperf.metrics` -- the target vocabulary (``is_minimized``, ``meets_target``, ``Target``);
* :mod:`algoperf.workloads` -- the workload registry (``get_workload``, ``WORKLOADS``, ``VARIANTS``);
* :mod:`algoperf.baselines` -- reference submissions and their search spaces;
* :mod:`algoperf.halton` -- quasi-random search over a tuning search space;
* :mod:`algoperf.runner` -- load a submission, tune, train, time, log, resume (``ExperimentConfig``, ``run``);
* :mod:`algoperf.scoring` -- time to target, performance profiles, benchmark scores (``ScoreConfig``, ``score``);
* :mod:`algoperf.suite` -- every baseline on every workload, then scored (``SuiteConfig``, ``run_suite``);
* :mod:`algoperf.targets` -- upstream's target-setting procedure (``TargetsConfig``, ``set_all_targets``);
* :mod:`algoperf.bench` -- the runner's per-step overhead against a hand-written loop (``BenchConfig``).
"""
import importlib

__all__ = ["spec", "jax_sharding_utils", "metrics", "workloads", "baselines", "halton", "runner", "scoring", "suite",
           "targets", "bench"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
