"""Choosing a trained policy's inference settings on validation instances (never Taillard's).

* The greedy No-Op threshold (:func:`rl.jssp.inference.greedy_action`): one jitted greedy per candidate
  (:func:`make_threshold_sweep`), the smallest mean makespan wins (:func:`best_noop_threshold`); training
  stores the choice in the exported policy.json (``greedy_noop_threshold``).
* The sampling temperature: each candidate gets the mean best-of-``samples`` makespan
  (:func:`select_sampling_temperature`), the smallest wins (ties: the earlier candidate).
  :func:`tune_sampling` is ``scripts/tune_jssp_sampling.py``: it draws fresh random instances and stores the
  choice in the policy's policy.json (``sampling_temperature``; ``eval_jssp --samples=B`` then samples at it).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from models.jssp_policy import JobShopPolicy
from rl.jssp import inference, instances, policy_io
from training import run as run_lib


NOOP_THRESHOLDS = (None, 0.5, 0.7, 0.9, 1.0)


def make_threshold_sweep(model: JobShopPolicy, candidates=NOOP_THRESHOLDS):
    """``sweep(params, machines [B,J,M], durations [B,J,M]) -> {threshold: greedy makespans [B]}``, one jitted
    greedy per candidate No-Op threshold (:func:`rl.jssp.inference.greedy_action`), compiled once and reused
    across calls."""
    greedy = {c: inference.make_batch_greedy(model, c) for c in candidates}

    def sweep(params, machines, durations) -> dict:
        return {c: np.asarray(g(params, machines, durations).job_ready).max(-1) for c, g in greedy.items()}

    return sweep


def best_noop_threshold(makespans: dict) -> tuple[float | None, dict]:
    """The threshold of smallest mean makespan in a sweep's ``{threshold: makespans}`` (ties: the earlier
    candidate), and the mean makespan of each candidate."""
    means = {c: float(v.mean()) for c, v in makespans.items()}
    return min(means, key=lambda c: means[c]), {str(c): v for c, v in means.items()}


def select_noop_threshold(model: JobShopPolicy, params, machines, durations,
                          candidates=NOOP_THRESHOLDS) -> tuple[float | None, dict]:
    """The greedy No-Op threshold (:func:`rl.jssp.inference.greedy_action`) of smallest mean makespan on
    validation instances ([B, J, M]; ties: the earlier candidate), and the mean makespan of each candidate."""
    return best_noop_threshold(make_threshold_sweep(model, candidates)(params, machines, durations))


SAMPLING_TEMPERATURES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def select_sampling_temperature(model: JobShopPolicy, params, machines, durations, samples: int,
                                candidates=SAMPLING_TEMPERATURES, seed: int = 0,
                                noop_threshold: float | None = None) -> tuple[float, dict]:
    """The sampling temperature of smallest mean best-of-``samples`` makespan on validation instances
    ([B, J, M]; ties: the earlier candidate), and that mean for each candidate. A sharp policy's samples
    differ little and a higher temperature buys diversity; a diffuse one wastes samples on poor moves and a
lower one helps (the PPO policy's case: ``tune_jssp_sampling`` picks below 1)."""
    means = {}
    for t in candidates:
        solve = inference.make_solver(model, noop_threshold, temperature=t)
        best = [inference.best_of(solve(params, m, d, jax.random.PRNGKey(seed), samples))[0]
                for m, d in zip(machines, durations)]
        means[t] = float(np.mean(best))
    choice = min(candidates, key=lambda t: means[t])
    return choice, {str(t): v for t, v in means.items()}


# ----------------------------------------------------------------------------- scripts/tune_jssp_sampling.py
@dataclasses.dataclass(frozen=True)
class TuneSamplingConfig:
    """Choosing a trained policy's sampling temperature (``scripts/tune_jssp_sampling.py``).

    policy_dir: Policy directory (policy.msgpack + policy.json); its policy.json receives the choice.
    size: Validation instance size JOBSxMACHINES.
    instances: Validation instances.
    samples: Samples per instance (best kept).
    seed: Seed of the validation instances and of the sampling.
    """
    policy_dir: str = str(policy_io.TRAINED_DIR)
    size: str = "15x15"
    instances: int = 16
    samples: int = 128
    seed: int = 0

    def __post_init__(self):
        instances.parse_size(self.size)
        run_lib.require_positive(self, "instances", "samples")


def tune_sampling(cfg: TuneSamplingConfig, candidates=SAMPLING_TEMPERATURES) -> dict:
    """Selects the temperature and writes it (with the table) into ``cfg.policy_dir``/policy.json."""
    jobs, machines = instances.parse_size(cfg.size)
    model, params, info = policy_io.load_policy(cfg.policy_dir)
    rng = np.random.default_rng([cfg.seed, 777])
    insts = [instances.random_instance(rng, jobs, machines) for _ in range(cfg.instances)]
    m = jnp.asarray(np.stack([i.machines for i in insts]))
    d = jnp.asarray(np.stack([i.durations for i in insts]))
    choice, means = select_sampling_temperature(model, params, m, d, cfg.samples, candidates,
                                                noop_threshold=info.get("greedy_noop_threshold"))
    info.update(sampling_temperature=choice, sampling_temperature_tuning={
        "size": cfg.size, "instances": cfg.instances, "samples": cfg.samples, "seed": cfg.seed,
        "mean_best_makespan_by_temperature": means})
    run_lib.write_json_atomic(pathlib.Path(cfg.policy_dir) / "policy.json", info)
    out = info["sampling_temperature_tuning"] | {"sampling_temperature": choice}
    logging.info("%s", json.dumps(out))
    return out
