r"""Evaluates a job-shop solver on Taillard (shipped) or a directory of instances in the standard format.

    python -m scripts.eval_jssp --solver=spt --out=results/jssp_eval_spt.json
    python -m scripts.eval_jssp --solver=agent --samples=128 --sizes=15x15,20x15 --out=/tmp/agent128.json
    python -m scripts.eval_jssp --solver=cpsat --time_limit_from=/tmp/agent128.json --out=/tmp/cpsat.json
    python -m scripts.eval_jssp --solver=cpsat --time_limit=60 --instances=~/my_instances

Solvers: the dispatching rules spt, mwkr, mopnr, fdd_mwkr (rl/jssp/rules.py, in the JAX environment),
cpsat (OR-Tools, ``--time_limit`` s per instance, or each instance's ``wall_time_s`` from
``--time_limit_from``, e.g. the agent's) and agent (the policy in ``--policy_dir``, default the shipped
one; ``--samples=0`` greedy, with the policy's ``greedy_noop_threshold`` from its policy.json,
``B > 0``: B sampled schedules in parallel at the policy's ``sampling_temperature`` (set by
scripts/tune_jssp_sampling.py; 1 if absent) or ``--temperature``, the best kept).
Every schedule is checked by the independent validator (rl/jssp/validate.py) before it is reported.

``--out`` is a JSON list, one record per instance: instance (file stem), size, solver, makespan,
start_times (jobs x operations, in each job's processing order), gap (% to the best known upper bound,
when known) and wall_time_s (compilation excluded: each shape is warmed up first). A table of the
mean gap per instance-size group is printed.
"""
from __future__ import annotations

import collections
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from rl.jssp import agent, cpsat, instances, rules, validate
from scripts import common

SOLVERS = rules.RULES + ("cpsat", "agent")

FLAGS = flags.FLAGS


def load_instances(spec: str, sizes: str = "") -> list[instances.Instance]:
    wanted = tuple(s.strip() for s in sizes.split(",") if s.strip())
    for s in wanted:
        if not (len(s.split("x")) == 2 and all(p.isdigit() for p in s.split("x"))):
            raise ValueError(f"--sizes={sizes!r}: {s!r} is not JOBSxMACHINES (e.g. 15x15)")
    insts = instances.load_taillard() if spec == "taillard" else instances.read_directory(
        pathlib.Path(spec).expanduser())
    if wanted:
        insts = [i for i in insts if i.size in wanted]
        if not insts:
            raise ValueError(f"--sizes={sizes!r} matches none of the instances' sizes")
    return insts


def make_runner(solver: str, samples: int = 0, time_limit: float = 10.0, limits: dict | None = None,
                workers: int = 1, policy_dir: str | None = None, seed: int = 0, temperature: float | None = None):
    """``run(instance) -> (makespan, start_times, wall_time_s)`` for ``solver`` (compilation excluded)."""
    if solver not in SOLVERS:
        raise ValueError(f"--solver={solver!r}; allowed: {', '.join(SOLVERS)}")
    if solver == "cpsat":
        if not time_limit > 0:
            raise ValueError(f"--time_limit={time_limit} must be > 0 seconds")

        def run_cp(inst):
            limit = max(float(limits[inst.name]), 0.05) if limits is not None else time_limit
            t0 = time.perf_counter()
            res = cpsat.solve(inst.machines, inst.durations, time_limit_s=limit, workers=workers, seed=seed)
            return res.makespan, res.start_times, time.perf_counter() - t0
        return run_cp

    warmed: set = set()
    if solver in rules.RULES:
        def fn(m, d):
            state = rules.solve_batch(m[None], d[None], solver)
            return jax.tree.map(lambda x: x[0][None], state)
    else:
        model, params, info = agent.load_policy(policy_dir or agent.TRAINED_DIR)
        if temperature is None:
            temperature = float(info.get("sampling_temperature", 1.0))
        solve = agent.make_solver(model, info.get("greedy_noop_threshold"), temperature)
        key = jax.random.PRNGKey(seed)
        fn = lambda m, d: solve(params, m, d, key, samples)  # noqa: E731

    def run(inst):
        m, d = jnp.asarray(inst.machines), jnp.asarray(inst.durations)
        if inst.machines.shape not in warmed:  # compile outside the clock
            jax.block_until_ready(fn(m, d))
            warmed.add(inst.machines.shape)
        t0 = time.perf_counter()
        states = jax.block_until_ready(fn(m, d))
        wall = time.perf_counter() - t0
        cmax, start = agent.best_of(states)
        return cmax, start, wall
    return run


def evaluate(insts, run, solver: str, bounds: dict) -> list[dict]:
    records = []
    for inst in insts:
        cmax, start, wall = run(inst)
        checked = validate.check_schedule(inst.machines, inst.durations, start)
        if checked != cmax:
            raise RuntimeError(f"{inst.name}: solver reports makespan {cmax}, validator recomputes {checked}")
        ub = bounds.get(inst.name, {}).get("upper_bound")
        rec = {"instance": inst.name, "size": inst.size, "solver": solver, "makespan": int(cmax),
               "start_times": np.asarray(start).astype(int).tolist(),
               "gap": None if ub is None else 100.0 * (cmax - ub) / ub, "wall_time_s": wall}
        records.append(rec)
        logging.info("%s %s: makespan %d gap %s (%.2fs)", solver, inst.name, cmax,
                     "n/a" if ub is None else f"{rec['gap']:.2f}%", wall)
    return records


def group_table(records: list[dict]) -> tuple[list[dict], str]:
    """Mean gap, makespan and wall time per size group (rows) and the printed table."""
    groups = collections.OrderedDict()
    for r in sorted(records, key=lambda r: tuple(int(x) for x in r["size"].split("x"))):
        groups.setdefault(r["size"], []).append(r)
    rows = []
    for size, rs in groups.items():
        gaps = [r["gap"] for r in rs if r["gap"] is not None]
        rows.append({"size": size, "n": len(rs), "mean_gap": float(np.mean(gaps)) if gaps else None,
                     "mean_makespan": float(np.mean([r["makespan"] for r in rs])),
                     "mean_wall_time_s": float(np.mean([r["wall_time_s"] for r in rs]))})
    lines = [f"{'size':>8} {'n':>3} {'mean gap %':>11} {'mean Cmax':>10} {'wall s':>8}"]
    for row in rows:
        gap = "n/a" if row["mean_gap"] is None else f"{row['mean_gap']:.2f}"
        lines.append(f"{row['size']:>8} {row['n']:>3} {gap:>11} {row['mean_makespan']:>10.1f} "
                     f"{row['mean_wall_time_s']:>8.3f}")
    return rows, "\n".join(lines)


def define_flags() -> None:
    """Defined only when run as a script, so that tour_step and the helpers import cleanly."""
    flags.DEFINE_enum("solver", "spt", list(SOLVERS), "Which solver.")
    flags.DEFINE_string("instances", "taillard", "'taillard' (the shipped 80) or a directory of instance files.")
    flags.DEFINE_string("sizes", "", "Only these size groups, e.g. 15x15,20x15 (empty: all).")
    flags.DEFINE_integer("samples", 0, "Agent: 0 greedy, B > 0 sample B schedules and keep the best.", lower_bound=0)
    flags.DEFINE_float("time_limit", 10.0, "CP-SAT seconds per instance.")
    flags.DEFINE_string("time_limit_from", "", "CP-SAT: per-instance limits = wall_time_s of this eval JSON.")
    flags.DEFINE_integer("workers", 1, "CP-SAT search workers.", lower_bound=1)
    flags.DEFINE_string("policy_dir", str(agent.TRAINED_DIR), "Agent: directory with policy.msgpack + policy.json.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_float("temperature", None, "Agent sampling temperature (default: the policy's "
                       "sampling_temperature, else 1).")
    flags.DEFINE_string("out", "", "Write the per-instance records here (JSON list).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.quiet_library_logs()
    try:  # bad flags or inputs: the message alone, before any work
        insts = load_instances(FLAGS.instances, FLAGS.sizes)
        limits = None
        if FLAGS.time_limit_from:
            path = pathlib.Path(FLAGS.time_limit_from)
            if not path.is_file():
                raise ValueError(f"--time_limit_from={FLAGS.time_limit_from!r} does not exist")
            limits = {r["instance"]: r["wall_time_s"] for r in json.loads(path.read_text())}
            missing = [i.name for i in insts if i.name not in limits]
            if missing:
                raise ValueError(f"--time_limit_from={FLAGS.time_limit_from!r} has no wall_time_s for {missing[:5]}")
        if FLAGS.solver != "agent" and (FLAGS.samples or FLAGS.temperature is not None):
            raise ValueError(f"--samples={FLAGS.samples} / --temperature={FLAGS.temperature} apply only to "
                             "--solver=agent")
        if FLAGS.out:
            pathlib.Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
        run = make_runner(FLAGS.solver, FLAGS.samples, FLAGS.time_limit, limits, FLAGS.workers, FLAGS.policy_dir,
                          FLAGS.seed, FLAGS.temperature)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    bounds = instances.load_bounds() if FLAGS.instances == "taillard" else {}
    records = evaluate(insts, run, FLAGS.solver, bounds)
    _, table = group_table(records)
    label = FLAGS.solver + (f" (samples={FLAGS.samples})" if FLAGS.solver == "agent" else "")
    print(f"{label} on {FLAGS.instances}\n{table}")
    if FLAGS.out:
        common.write_json_atomic(pathlib.Path(FLAGS.out), records)


def tour_step(workdir: pathlib.Path) -> dict:
    """Small-scale tour: SPT, MWKR, the shipped agent (greedy, 8 samples) and CP-SAT (2 s) on ta01-ta02."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    insts = [i for i in instances.load_taillard(("15x15",)) if i.name in ("ta01", "ta02")]
    bounds = instances.load_bounds()
    out = {}
    for name, runner in (("spt", make_runner("spt")), ("mwkr", make_runner("mwkr")),
                         ("agent_greedy", make_runner("agent")), ("agent_8_samples", make_runner("agent", 8)),
                         ("cpsat_2s", make_runner("cpsat", time_limit=2.0, workers=2))):
        records = evaluate(insts, runner, name, bounds)
        common.write_json_atomic(workdir / f"{name}.json", records)
        out[f"{name}_mean_gap_pct"] = round(float(np.mean([r["gap"] for r in records])), 2)
    return out


if __name__ == "__main__":
    define_flags()
    app.run(main)
