"""The dispatching policy as an artifact: its network built from a :class:`models.jssp_policy.PolicyConfig`,
its initial parameters, and its exported files (``policy.msgpack`` + ``policy.json``, :mod:`rl.export`).
``TRAINED_DIR`` is the shipped policy (``rl/jssp/trained``).
"""
from __future__ import annotations

import pathlib

import jax

from models.jssp_policy import JobShopPolicy, PolicyConfig
from rl import export
from rl.jssp import env, instances

TRAINED_DIR = pathlib.Path(__file__).resolve().parent / "trained"


def make_model(policy_cfg: PolicyConfig) -> JobShopPolicy:
    """The policy network of ``policy_cfg`` (unbound: its parameters come from :func:`init_params` or a file)."""
    return JobShopPolicy(policy_cfg)


def init_params(model: JobShopPolicy, key: jax.Array, num_jobs: int = 3, num_machines: int = 3) -> dict:
    """Fresh parameters of ``model`` (the network is size-agnostic: any instance size gives the same tree)."""
    m, d = instances.random_batch_jax(key, 1, num_jobs, num_machines)
    problem = env.Problem(m[0], d[0])
    obs = env.observe(problem, env.reset(problem), model.cfg.window)
    return model.init(key, obs)["params"]


def save_policy(directory, params, policy_cfg: PolicyConfig, info: dict) -> None:
    """Writes ``policy.msgpack`` (Flax serialization) and ``policy.json`` (config + provenance)."""
    export.save(directory, "policy", params, "policy_config", policy_cfg, info)


def load_policy(directory) -> tuple[JobShopPolicy, dict, dict]:
    """(model, params, info) from a directory written by :func:`save_policy`."""
    def build(config: dict):
        model = make_model(PolicyConfig(**config))
        return model, init_params(model, jax.random.PRNGKey(0))
    return export.load(directory, "policy", "policy_config", build, "scripts/train_jssp.py")
