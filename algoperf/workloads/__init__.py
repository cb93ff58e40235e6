"""Registry of the workloads: name -> class (imported lazily), base workload of each held-out variant."""
from __future__ import annotations

import importlib

from algoperf.metrics import Target, is_minimized

# name -> "module:Class"
WORKLOADS = {
    "mnist1d": "algoperf.workloads.mnist1d:Mnist1dWorkload",
    "mnist1d_tanh": "algoperf.workloads.mnist1d:Mnist1dTanhWorkload",
    "lm": "algoperf.workloads.lm:LMWorkload",
    "lm_gelu": "algoperf.workloads.lm:LMGeluWorkload",
    "ctr": "algoperf.workloads.ctr:CTRWorkload",
    "ctr_layernorm": "algoperf.workloads.ctr:CTRLayerNormWorkload",
    "molgraph": "algoperf.workloads.molgraph:MolGraphWorkload",
    "mri": "algoperf.workloads.mri:MRIWorkload",
    "mnist": "algoperf.workloads.mnist:MnistWorkload",
    "mnist_relu": "algoperf.workloads.mnist:MnistReluWorkload",
}
# held-out variant -> its base workload (upstream's rule: missing the variant's target voids the base)
VARIANTS = {"mnist1d_tanh": "mnist1d", "lm_gelu": "lm", "ctr_layernorm": "ctr", "mnist_relu": "mnist"}
BASE_WORKLOADS = [w for w in WORKLOADS if w not in VARIANTS]
# what the suite scores and target setting covers unless told otherwise (mnist, the real MNIST, needs --data_dir)
DEFAULT_BASE_WORKLOADS = ("mnist1d", "ctr", "lm", "molgraph", "mri")


def split_names(value) -> list[str]:
    """A comma-separated setting (``"mnist1d,lm"``, as the command line gives it) or a sequence of names, as a
    list (empty for ``""``)."""
    items = value.split(",") if isinstance(value, str) else value
    return [n.strip() for n in items if n.strip()]


def check_workload_names(field: str, value) -> list[str]:
    """``split_names(value)``; ValueError naming ``field`` if a name is not a registered workload."""
    names = split_names(value)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"{field}={','.join(names)!r}: {unknown} unknown; allowed: {', '.join(WORKLOADS)}")
    return names


def get_base_workload_name(name: str) -> str:
    return VARIANTS.get(name, name)


def workload_class(name: str):
    if name not in WORKLOADS:
        raise ValueError(f"workload={name!r} is unknown; allowed: {', '.join(WORKLOADS)}")
    module, cls = WORKLOADS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_workload(name: str, data_dir: str | None = None):
    """An instance of workload ``name`` (ValueError listing the known names for an unknown one)."""
    return workload_class(name)(data_dir=data_dir)


def untargeted_workloads(names) -> list[str]:
    """Those of ``names`` whose targets target setting has not set yet (class attributes, no data loaded)."""
    return [n for n in names if workload_class(n)._validation_target is None or workload_class(n)._test_target is None]


def check_targets_set(field: str, names) -> None:
    """ValueError naming ``field`` if a workload of ``names`` has no targets yet (it could not be scored)."""
    unset = untargeted_workloads(names)
    if unset:
        raise ValueError(f"{field}={','.join(names)!r}: {unset} have no targets yet (they run, but cannot be scored); "
                         "set them with scripts/set_algoperf_targets.py")


def validation_targets() -> dict:
    """{workload: metrics.Target} for every registered workload whose targets are set (class attributes, no
    data loaded)."""
    out = {}
    for name in WORKLOADS:
        cls = workload_class(name)
        if cls._validation_target is None:
            continue
        metric = f"validation/{cls._target_metric_name}"
        out[name] = Target(metric, cls._validation_target, is_minimized(metric))
    return out
