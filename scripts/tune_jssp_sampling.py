r"""Chooses the sampling temperature of a trained JSSP policy on random validation instances and stores it
in its policy.json (``sampling_temperature``; ``eval_jssp --samples=B`` then samples at it).

    python -m scripts.tune_jssp_sampling --policy_dir=rl/jssp/trained --size=15x15 --instances=16 --samples=128

The instances are fresh random ones (``rl/jssp/instances.random_instance``, seed ``--seed``), never Taillard;
each candidate temperature gets the mean best-of-``--samples`` makespan (``agent.select_sampling_temperature``),
the smallest wins (ties: the earlier candidate).
"""
from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from rl.jssp import agent, instances
from scripts import common

FLAGS = flags.FLAGS


def parse_size(size: str) -> tuple[int, int]:
    dims = size.split("x")
    if len(dims) != 2 or not all(d.isdigit() and int(d) >= 1 for d in dims):
        raise ValueError(f"--size={size!r} is not JOBSxMACHINES (e.g. 15x15)")
    return int(dims[0]), int(dims[1])


def tune(policy_dir: str, size: str, num_instances: int, samples: int, seed: int,
         candidates=agent.SAMPLING_TEMPERATURES) -> dict:
    """Selects the temperature and writes it (with the table) into ``policy_dir``/policy.json."""
    jobs, machines = parse_size(size)
    if num_instances < 1 or samples < 1:
        raise ValueError(f"--instances={num_instances} and --samples={samples} must be >= 1")
    model, params, info = agent.load_policy(policy_dir)
    rng = np.random.default_rng([seed, 777])
    insts = [instances.random_instance(rng, jobs, machines) for _ in range(num_instances)]
    m = jnp.asarray(np.stack([i.machines for i in insts]))
    d = jnp.asarray(np.stack([i.durations for i in insts]))
    choice, means = agent.select_sampling_temperature(model, params, m, d, samples, candidates)
    info.update(sampling_temperature=choice, sampling_temperature_tuning={
        "size": size, "instances": num_instances, "samples": samples, "seed": seed,
        "mean_best_makespan_by_temperature": means})
    common.write_json_atomic(pathlib.Path(policy_dir) / "policy.json", info)
    return info["sampling_temperature_tuning"] | {"sampling_temperature": choice}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.quiet_library_logs()
    try:
        parse_size(FLAGS.size)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    out = tune(FLAGS.policy_dir, FLAGS.size, FLAGS.instances, FLAGS.samples, FLAGS.seed)
    logging.info("%s", json.dumps(out))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    flags.DEFINE_string("policy_dir", str(agent.TRAINED_DIR), "Policy directory (policy.msgpack + policy.json).")
    flags.DEFINE_string("size", "15x15", "Validation instance size JOBSxMACHINES.")
    flags.DEFINE_integer("instances", 16, "Validation instances.")
    flags.DEFINE_integer("samples", 128, "Samples per instance (best kept).")
    flags.DEFINE_integer("seed", 0, "Seed of the validation instances and of the sampling.")
    app.run(main)
