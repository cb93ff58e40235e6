r"""Evaluating job-shop solvers on Taillard (shipped) or a directory of instances in the standard format
(``scripts/eval_jssp.py``; :class:`EvalConfig`).

Solvers (:func:`make_runner`): the dispatching rules spt, mwkr, mopnr, fdd_mwkr (:mod:`rl.jssp.rules`, in
the JAX environment), cpsat (OR-Tools, ``time_limit`` s per instance, or each instance's ``wall_time_s``
from ``time_limit_from``, e.g. the agent's; ``cpsat_search``: CP-SAT's one-worker tree search or its
interleaved portfolio, :data:`rl.jssp.cpsat.SEARCHES`), agent_cpsat (:func:`hinted_cpsat_runner`) and
agent (the policy in ``policy_dir``, default the shipped one; ``samples=0`` greedy, with the policy's
``greedy_noop_threshold`` from its policy.json, ``B > 0``: B sampled schedules in parallel at the policy's
``sampling_temperature`` (set by :func:`rl.jssp.tuning.tune_sampling`; 1 if absent) or ``temperature``,
the best kept). Every schedule is checked by the independent validator (:mod:`rl.jssp.validate`) before it
is reported (:func:`evaluate`).

:func:`run` is ``scripts/eval_jssp.py``: its records (``out``) are a JSON list, one per instance:
instance (file stem), size, solver, makespan, start_times (jobs x operations, in each job's processing
order), gap (% to the best known upper bound, when known) and wall_time_s (compilation excluded: each shape
is warmed up first); CP-SAT solvers add cpsat_search, agent_cpsat also hint_bound, agent_share and the
agent's part (agent_makespan, agent_schedules: how many it made, agent_wall_time_s). It prints the mean
gap per instance-size group (:func:`group_table`). :func:`tour_step` is the tour's small-scale run.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rl.jssp import cpsat, inference, instances, policy_io, rules, validate
from training import run as run_lib

SOLVERS = rules.RULES + ("cpsat", "agent", "agent_cpsat")


SOLVER_ONLY_SETTINGS = {"cpsat_search": ("cpsat", "agent_cpsat"), "hint_bound": ("agent_cpsat",),
                        "agent_share": ("agent_cpsat",)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One solver on a set of instances (``scripts/eval_jssp.py``).

    solver: Which solver: spt, mwkr, mopnr, fdd_mwkr, cpsat, agent or agent_cpsat (the agent's best schedule
      as CP-SAT's hint, and its makespan as CP-SAT's upper bound if hint_bound, both within time_limit in all).
    instances: 'taillard' (the shipped 80) or a directory of instance files.
    sizes: Only these size groups, e.g. 15x15,20x15 (empty: all).
    samples: Agent: 0 greedy, B > 0 sample B schedules and keep the best. agent_cpsat: the greedy schedule,
      then rounds of B samples within agent_share of the time limit.
    time_limit: CP-SAT seconds per instance.
    time_limit_from: CP-SAT: per-instance limits = wall_time_s of this eval JSON.
    workers: CP-SAT search workers.
    cpsat_search: CP-SAT's search: default (one worker: a single tree search) or portfolio (its subsolvers,
      LNS included, interleaved on the workers).
    hint_bound: agent_cpsat: the agent's makespan is also CP-SAT's upper bound.
    agent_share: agent_cpsat: the agent's share of each instance's time limit (sampling rounds stop before
      it would be exceeded; CP-SAT gets the rest).
    policy_dir: Agent: directory with policy.msgpack + policy.json.
    seed: Sampling seed.
    temperature: Agent sampling temperature (default: the policy's sampling_temperature, else 1).
    bounds: Best-known bounds for the gaps: a JSON or CSV file of instance, upper_bound (lower_bound
      optional); empty: the shipped Taillard bounds for instances=taillard, none otherwise.
    out: Write the per-instance records here (JSON list).
    """
    solver: str = "spt"
    instances: str = "taillard"
    sizes: str = ""
    samples: int = 0
    time_limit: float = 10.0
    time_limit_from: str = ""
    workers: int = 1
    cpsat_search: str = "default"
    hint_bound: bool = True
    agent_share: float = 0.2
    policy_dir: str = str(policy_io.TRAINED_DIR)
    seed: int = 0
    temperature: float | None = None
    bounds: str = ""
    out: str = ""

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r}; allowed: {', '.join(SOLVERS)}")
        run_lib.require_positive(self, "samples", "workers", allow_zero=("samples",))
        cpsat.check_search(self.cpsat_search, "cpsat_search")
        if not 0 < self.agent_share < 1:
            raise ValueError(f"agent_share={self.agent_share!r} must be in (0, 1) (the agent's share of the time "
                             "limit; CP-SAT gets the rest)")
        if not self.solver.startswith("agent") and (self.samples or self.temperature is not None):
            raise ValueError(f"samples={self.samples} / temperature={self.temperature} apply only to "
                             "solver=agent or agent_cpsat")
        for name, solvers in SOLVER_ONLY_SETTINGS.items():  # a non-default value the solver would ignore
            value, default = getattr(self, name), next(f.default for f in dataclasses.fields(self) if f.name == name)
            if value != default and self.solver not in solvers:
                raise ValueError(f"{name}={value!r} applies only to solver={' or '.join(solvers)}, not "
                                 f"solver={self.solver}")
        run_lib.require_output_file("out", self.out)


def load_instances(spec: str, sizes: str = "") -> list[instances.Instance]:
    wanted = tuple(s.strip() for s in sizes.split(",") if s.strip())
    for s in wanted:
        if not (len(s.split("x")) == 2 and all(p.isdigit() for p in s.split("x"))):
            raise ValueError(f"sizes={sizes!r}: {s!r} is not JOBSxMACHINES (e.g. 15x15)")
    insts = instances.load_taillard() if spec == "taillard" else instances.read_directory(
        pathlib.Path(spec).expanduser())
    if wanted:
        insts = [i for i in insts if i.size in wanted]
        if not insts:
            raise ValueError(f"sizes={sizes!r} matches none of the instances' sizes")
    return insts


def make_runner(solver: str, samples: int = 0, time_limit: float = 10.0, limits: dict | None = None,
                workers: int = 1, policy_dir: str | None = None, seed: int = 0, temperature: float | None = None,
                cpsat_search: str = "default", hint_bound: bool = True, agent_share: float = 0.2):
    """``run(instance) -> (makespan, start_times, wall_time_s)`` for ``solver`` (compilation excluded);
    agent_cpsat's adds a fourth item, the agent's part of the record (:func:`hinted_cpsat_runner`)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}; allowed: {', '.join(SOLVERS)}")
    if solver in ("cpsat", "agent_cpsat") and not time_limit > 0:
        raise ValueError(f"time_limit={time_limit} must be > 0 seconds")
    if solver == "agent_cpsat":
        return hinted_cpsat_runner(anytime_agent_runner(samples, policy_dir, seed, temperature), time_limit,
                                   limits, workers, seed, cpsat_search, hint_bound, agent_share)
    if solver == "cpsat":

        def run_cp(inst):
            limit = max(float(limits[inst.name]), 0.05) if limits is not None else time_limit
            t0 = time.perf_counter()
            try:
                res = cpsat.solve(inst.machines, inst.durations, time_limit_s=limit, workers=workers, seed=seed,
                                  search=cpsat_search)
            except cpsat.NoScheduleFound:  # a limit too short for this instance: the user's setting
                setting = "time_limit_from: its" if limits is not None else f"time_limit={limit}:"
                raise ValueError(f"{setting} {limit} s for {inst.name} ({inst.size}) is too short, CP-SAT found no "
                                 "schedule in it; allowed: a limit long enough for a first schedule") from None
            return res.makespan, res.start_times, time.perf_counter() - t0
        return run_cp

    warmed: set = set()
    if solver in rules.RULES:
        def fn(m, d):
            state = rules.solve_batch(m[None], d[None], solver)
            return jax.tree.map(lambda x: x[0][None], state)
    else:
        solve = policy_solver(policy_dir, temperature)
        key = jax.random.PRNGKey(seed)
        fn = lambda m, d: solve(m, d, key, samples)  # noqa: E731

    def run(inst):
        m, d = jnp.asarray(inst.machines), jnp.asarray(inst.durations)
        if inst.machines.shape not in warmed:  # compile outside the clock
            jax.block_until_ready(fn(m, d))
            warmed.add(inst.machines.shape)
        t0 = time.perf_counter()
        states = jax.block_until_ready(fn(m, d))
        wall = time.perf_counter() - t0
        cmax, start = inference.best_of(states)
        return cmax, start, wall
    return run


def policy_solver(policy_dir: str | None, temperature: float | None):
    """``solve(machines, durations, key, samples) -> final states`` of the policy in ``policy_dir`` (default:
    the shipped one) at ``temperature`` (default: its policy.json's sampling_temperature, else 1)."""
    model, params, info = policy_io.load_policy(policy_dir or policy_io.TRAINED_DIR)
    if temperature is None:
        temperature = float(info.get("sampling_temperature", 1.0))
    solve = inference.make_solver(model, info.get("greedy_noop_threshold"), temperature)
    return lambda m, d, key, samples: solve(params, m, d, key, samples)


def anytime_agent_runner(samples: int, policy_dir: str | None = None, seed: int = 0,
                         temperature: float | None = None):
    """``run(instance, allowance_s) -> (makespan, start_times, wall_time_s, schedules)``: the greedy schedule,
    then rounds of ``samples`` sampled ones (none if 0) while the next round is predicted to end within
    ``allowance_s``; the best of all. A round is predicted to last as long as the previous one; the first as
    long as one timed per instance shape while warming up (outside the clock, like the compilation), so the
    agent's share of a budget holds from 15x15 (many rounds) to 100x20 (greedy alone)."""
    solve = policy_solver(policy_dir, temperature)
    round_s: dict = {}

    def run(inst, allowance_s: float):
        m, d = jnp.asarray(inst.machines), jnp.asarray(inst.durations)
        if inst.machines.shape not in round_s:
            jax.block_until_ready(solve(m, d, jax.random.PRNGKey(seed), 0))
            round_s[inst.machines.shape] = 0.0
            if samples:
                for _ in range(2):  # compile, then time
                    t = time.perf_counter()
                    jax.block_until_ready(solve(m, d, jax.random.PRNGKey(seed), samples))
                    round_s[inst.machines.shape] = time.perf_counter() - t
        key = jax.random.PRNGKey(seed)
        t0 = time.perf_counter()
        best = inference.best_of(solve(m, d, key, 0))
        predicted, rounds = round_s[inst.machines.shape], 0
        while samples and time.perf_counter() - t0 + predicted <= allowance_s:
            t = time.perf_counter()
            cmax, start = inference.best_of(solve(m, d, jax.random.fold_in(key, rounds), samples))
            predicted, rounds = time.perf_counter() - t, rounds + 1
            if cmax < best[0]:
                best = (cmax, start)
        return best[0], best[1], time.perf_counter() - t0, 1 + rounds * samples
    return run


def hinted_cpsat_runner(agent_run, time_limit: float, limits: dict | None, workers: int, seed: int,
                        search: str = "default", hint_bound: bool = True, agent_share: float = 0.2):
    """Agent + CP-SAT within one budget per instance (``time_limit``, or the instance's entry of ``limits``):
    the agent's best schedule within ``agent_share`` of the budget (:func:`anytime_agent_runner`), then
    CP-SAT (``search``) for the rest of the budget with that schedule as its hint (and, if ``hint_bound``,
    its makespan as an upper bound), so the result is never worse than the agent's and the pair spends what
    CP-SAT alone would (Tassel et al., ICAPS'23, Sec. 4, use the solver to refine the agent's solutions).
    With the portfolio search the hint is where CP-SAT's LNS starts."""
    def run(inst):
        budget = float(limits[inst.name]) if limits is not None else time_limit
        agent_cmax, agent_start, agent_wall, schedules = agent_run(inst, agent_share * budget)
        logging.info("%s: agent %d from %d schedules in %.2fs", inst.name, agent_cmax, schedules, agent_wall)
        left = max(budget - agent_wall, 0.05)
        t0 = time.perf_counter()
        res = cpsat.solve(inst.machines, inst.durations, time_limit_s=left, hint=agent_start, workers=workers,
                          seed=seed, upper_bound=agent_cmax if hint_bound else None, search=search)
        wall = agent_wall + time.perf_counter() - t0
        agent_part = {"agent_makespan": int(agent_cmax), "agent_schedules": schedules,
                      "agent_wall_time_s": agent_wall}
        if res.makespan > agent_cmax:  # without the bound CP-SAT may end on a worse schedule than its hint
            return agent_cmax, agent_start, wall, agent_part
        return res.makespan, res.start_times, wall, agent_part
    return run


def evaluate(insts, run, solver: str, bounds: dict) -> list[dict]:
    """One record per instance (see the module docstring), each schedule checked by the validator; a runner
    may return a fourth item, a dict of extra fields for the record (agent_cpsat: the agent's part)."""
    records = []
    for inst in insts:
        cmax, start, wall, *extra = run(inst)
        checked = validate.check_schedule(inst.machines, inst.durations, start)
        if checked != cmax:
            raise RuntimeError(f"{inst.name}: solver reports makespan {cmax}, validator recomputes {checked}")
        ub = bounds.get(inst.name, {}).get("upper_bound")
        rec = {"instance": inst.name, "size": inst.size, "solver": solver, "makespan": int(cmax),
               "start_times": np.asarray(start).astype(int).tolist(),
               "gap": None if ub is None else 100.0 * (cmax - ub) / ub, "wall_time_s": wall,
               **(extra[0] if extra else {})}
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


def read_time_limits(path: str, insts) -> dict[str, float]:
    """``{instance: wall_time_s}`` of an eval JSON (``time_limit_from``), covering every one of ``insts``."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"time_limit_from={path!r} does not exist")
    records = json.loads(file.read_text())
    if isinstance(records, dict) and "records" in records:  # a results file: {"provenance", "records"}
        records = records["records"]
    limits = {r["instance"]: r["wall_time_s"] for r in records}
    missing = [i.name for i in insts if i.name not in limits]
    if missing:
        raise ValueError(f"time_limit_from={path!r} has no wall_time_s for {missing[:5]}")
    return limits


def run(cfg: EvalConfig) -> list[dict]:
    """Evaluates ``cfg.solver`` on ``cfg.instances``, prints the group table, writes ``cfg.out``; the records.
    Bad inputs raise a ValueError naming the setting before any work."""
    insts = load_instances(cfg.instances, cfg.sizes)
    bounds = instances.read_bounds(cfg.bounds) if cfg.bounds else (
        instances.load_bounds() if cfg.instances == "taillard" else {})
    limits = read_time_limits(cfg.time_limit_from, insts) if cfg.time_limit_from else None
    runner = make_runner(cfg.solver, cfg.samples, cfg.time_limit, limits, cfg.workers, cfg.policy_dir, cfg.seed,
                         cfg.temperature, cfg.cpsat_search, cfg.hint_bound, cfg.agent_share)
    records = evaluate(insts, runner, cfg.solver, bounds)
    if "cpsat" in cfg.solver:
        for r in records:
            r.update(cpsat_search=cfg.cpsat_search, **({"hint_bound": cfg.hint_bound, "agent_share": cfg.agent_share}
                                                       if cfg.solver == "agent_cpsat" else {}))
    _, table = group_table(records)
    label = cfg.solver + (f" (samples={cfg.samples})" if cfg.solver.startswith("agent") else "")
    print(f"{label} on {cfg.instances}\n{table}")
    if cfg.out:
        run_lib.write_json_atomic(pathlib.Path(cfg.out), records)
    return records


def tour_step(workdir: pathlib.Path) -> dict:
    """Small-scale tour on ta01-ta02: SPT, MWKR, the shipped agent (greedy, 8 samples), CP-SAT (2 s) and the
    agent's schedule as the hint of CP-SAT's one-worker portfolio search (2 s in all)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    insts = [i for i in instances.load_taillard(("15x15",)) if i.name in ("ta01", "ta02")]
    bounds = instances.load_bounds()
    out = {}
    for name, runner in (("spt", make_runner("spt")), ("mwkr", make_runner("mwkr")),
                         ("agent_greedy", make_runner("agent")), ("agent_8_samples", make_runner("agent", 8)),
                         ("cpsat_2s", make_runner("cpsat", time_limit=2.0, workers=2)),
                         ("agent_cpsat_2s", make_runner("agent_cpsat", 8, time_limit=2.0, cpsat_search="portfolio",
                                                        hint_bound=False))):
        records = evaluate(insts, runner, name, bounds)
        run_lib.write_json_atomic(workdir / f"{name}.json", records)
        out[f"{name}_mean_gap_pct"] = round(float(np.mean([r["gap"] for r in records])), 2)
    return out
