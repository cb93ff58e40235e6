"""The vocabulary of AlgoPerf targets: which way a metric improves, when a value meets its target, a target.

Shared by the workloads (``has_reached_validation_target``), the registry (``workloads.validation_targets``),
target setting (:mod:`algoperf.targets`) and scoring (:mod:`algoperf.scoring`); it imports none of them, so
none of them imports another for these words.

The direction of a metric follows upstream's ``scoring/performance_profile.py`` (its MIN/MAX metric
registries, matched on the metric's name without its split prefix), plus the metrics of our workloads.
"""
from __future__ import annotations

import dataclasses
import math

# Upstream's MIN/MAX registries, plus the metrics of our workloads.
MIN_METRICS = ("ce_loss", "error_rate", "ctc_loss", "wer", "l1_loss", "loss", "bits_per_byte")
MAX_METRICS = ("mean_average_precision", "ssim", "accuracy", "bleu", "auc")


def is_minimized(metric: str) -> bool:
    """Whether a (possibly split-prefixed) metric improves downwards, from its name as upstream."""
    name = metric.split("/")[-1]
    for prefix in ("best_", "final_"):
        name = name.removeprefix(prefix)
    if name in MIN_METRICS:
        return True
    if name in MAX_METRICS:
        return False
    for candidates, minimized in ((MIN_METRICS, True), (MAX_METRICS, False)):
        if any(c in name for c in candidates):
            return minimized
    raise ValueError(f"metric {metric!r}: direction unknown; known: min {MIN_METRICS}, max {MAX_METRICS}")


def meets_target(value: float, target: float, minimize: bool) -> bool:
    """Whether ``value`` reaches ``target`` (at or below it when ``minimize``, else at or above); a missing
    or non-finite value never does."""
    if value is None or not math.isfinite(value):
        return False
    return value <= target if minimize else value >= target


@dataclasses.dataclass(frozen=True)
class Target:
    """A workload's validation target: the metric (e.g. 'validation/accuracy'), its value and direction."""
    metric: str
    value: float
    minimize: bool
