"""Quasi-random hyperparameter search: a tuning search space (JSON) -> Halton-sampled namedtuples.

The search space has the upstream AlgoPerf format, either

* a dict ``{name: {"min": a, "max": b, "scaling": "linear"|"log"}}`` or ``{name: {"feasible_points":
  [...]}}``, sampled quasi-randomly, or
* a list of fixed points ``[{name: value, ...}, ...]`` used in order (at most ``num_trials`` of them).

Samples come from a scrambled, shifted Halton sequence (Bousquet et al. 2017, "Critical
Hyper-Parameters: No Random, No Cry", arXiv:1706.03200, section 3): dimension d is the radical
inverse in a prime base b_d, x_i = sum_k sigma_d(a_k(i)) b_d^{-(k+1)} where a_k(i) are the base-b_d
digits of i and sigma_d a random permutation of the digits fixing 0, plus a random shift modulo 1.
The first ``skip`` points are dropped and the points shuffled, as upstream does. Everything is drawn
from ``numpy.random.RandomState(seed)``, so a search is a pure function of (space, num_trials, seed).
"""
from __future__ import annotations

import collections
import json
import keyword
import math
import pathlib
from typing import Any, Sequence

import numpy as np
from absl import logging

SCALINGS = ("linear", "log")


def first_primes(n: int, start: int = 2) -> list[int]:
    """The first ``n`` primes >= ``start``."""
    primes, candidate = [], max(start, 2)
    while len(primes) < n:
        if all(candidate % p for p in range(2, int(candidate ** 0.5) + 1)):
            primes.append(candidate)
        candidate += 1
    return primes


def radical_inverse(index: int, base: int, permutation: Sequence[int]) -> float:
    """sum_k permutation[a_k] / base^(k+1) over the base-``base`` digits a_k of ``index``."""
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += permutation[digit] * scale
        scale /= base
    return value


def halton_points(num_points: int, num_dims: int, seed: int = 0, skip: int = 100,
                  shuffle: bool = True) -> np.ndarray:
    """``[num_points, num_dims]`` scrambled, shifted Halton points in [0, 1)."""
    if num_points < 0 or num_dims < 0 or skip < 0:
        raise ValueError(f"num_points={num_points}, num_dims={num_dims}, skip={skip} must be >= 0")
    rng = np.random.RandomState(seed)
    points = np.zeros((num_points, num_dims))
    for d, base in enumerate(first_primes(num_dims, start=11)):
        permutation = np.concatenate([[0], 1 + rng.permutation(base - 1)])
        shift = rng.random_sample()
        column = [radical_inverse(i, base, permutation) for i in range(skip + 1, skip + num_points + 1)]
        points[:, d] = np.fmod(np.asarray(column) + shift, 1.0)
    if shuffle and num_points > 1:
        points = points[rng.permutation(num_points)]
    return points


def _check_dimension(name: str, space: Any) -> None:
    where = f"tuning search space entry {name!r}"
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{where}: the name must be a Python identifier")
    if not isinstance(space, dict):
        raise ValueError(f"{where}={space!r}: expected a dict with 'feasible_points' or 'min', 'max', 'scaling'")
    if "feasible_points" in space:
        points = space["feasible_points"]
        if not isinstance(points, list) or not points:
            raise ValueError(f"{where}: 'feasible_points'={points!r} must be a non-empty list")
        return
    missing = [k for k in ("min", "max", "scaling") if k not in space]
    if missing:
        raise ValueError(f"{where}={space!r} lacks {missing}; allowed forms: {{'feasible_points': [...]}} "
                         "or {'min': a, 'max': b, 'scaling': 'linear'|'log'}")
    lo, hi, scaling = space["min"], space["max"], space["scaling"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
        raise ValueError(f"{where}: min={lo!r}, max={hi!r} must be finite numbers")
    if lo > hi:
        raise ValueError(f"{where}: min={lo} must not exceed max={hi}")
    if scaling not in SCALINGS:
        raise ValueError(f"{where}: scaling={scaling!r}; allowed: {', '.join(SCALINGS)}")
    if scaling == "log" and lo <= 0:
        raise ValueError(f"{where}: log scaling needs min > 0, got min={lo}")


def validate_search_space(search_space: Any) -> list[str]:
    """Raises ValueError for a malformed or empty space; returns the hyperparameter names."""
    if isinstance(search_space, dict):
        if not search_space:
            raise ValueError("the tuning search space is empty (a dict with no hyperparameters)")
        for name, space in search_space.items():
            _check_dimension(name, space)
        return list(search_space)
    if isinstance(search_space, list):
        if not search_space:
            raise ValueError("the tuning search space is empty (a list with no points)")
        if not all(isinstance(p, dict) and p for p in search_space):
            raise ValueError("a list tuning search space must hold non-empty dicts {name: value}")
        names = list(search_space[0])
        for i, point in enumerate(search_space):
            if set(point) != set(names):
                raise ValueError(f"tuning search space point {i} has keys {sorted(point)}, point 0 has {sorted(names)}")
        for name in names:
            if not name.isidentifier() or keyword.iskeyword(name):
                raise ValueError(f"tuning search space name {name!r} must be a Python identifier")
        return names
    raise ValueError(f"the tuning search space must be a dict or a list, got {type(search_space).__name__}")


def load_search_space(path: str | pathlib.Path) -> Any:
    """Reads and validates a search-space JSON file (ValueError naming the file on any problem)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"tuning_search_space={str(path)!r} is not a file")
    text = path.read_text()
    if not text.strip():
        raise ValueError(f"tuning_search_space={str(path)!r} is empty")
    try:
        space = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"tuning_search_space={str(path)!r} is not valid JSON: {e}") from None
    try:
        validate_search_space(space)
    except ValueError as e:
        raise ValueError(f"tuning_search_space={str(path)!r}: {e}") from None
    return space


def scale_point(space: dict, u: float) -> Any:
    """Maps u in [0, 1) to a value of one dimension (linear, log, or a feasible point)."""
    if "feasible_points" in space:
        points = space["feasible_points"]
        return points[min(int(math.floor(u * len(points))), len(points) - 1)]
    lo, hi = float(space["min"]), float(space["max"])
    if space["scaling"] == "log":
        return lo * math.exp(u * math.log(hi / lo))
    return lo + u * (hi - lo)


def generate_search(search_space: Any, num_trials: int, seed: int = 0) -> list:
    """``num_trials`` ``Hyperparameters`` namedtuples from ``search_space`` (see the module doc)."""
    if not isinstance(num_trials, int) or isinstance(num_trials, bool) or num_trials < 1:
        raise ValueError(f"num_tuning_trials={num_trials!r} must be an integer >= 1")
    names = validate_search_space(search_space)
    hyperparameters = collections.namedtuple("Hyperparameters", names)
    if isinstance(search_space, list):
        if num_trials != len(search_space):
            logging.info("num_tuning_trials=%d but the search space lists %d point(s); running %d",
                         num_trials, len(search_space), min(num_trials, len(search_space)))
        return [hyperparameters(**p) for p in search_space[:num_trials]]
    points = halton_points(num_trials, len(names), seed=seed)
    return [hyperparameters(**{n: scale_point(search_space[n], u) for n, u in zip(names, row)})
            for row in points]


def hyperparameters_from_dict(values: dict):
    """A ``Hyperparameters`` namedtuple from a plain dict (e.g. a trial's ``hparams.json``)."""
    return collections.namedtuple("Hyperparameters", list(values))(**values)
