r"""Evaluates mallocGame solvers on a directory of instances (default: the shipped held-out test set).

``run(EvalMallocConfig(...))`` is what ``scripts/eval_malloc.py`` does; :func:`tour_step` is the tour's
small-scale version.

Solvers (rl/malloc/): heuristic (XLA memory-space-assignment order benefit/sqrt(size), best fit), firstfit
(first-fit decreasing size), random (uniform legal mallocGame moves, ``seed``), cpsat (OR-Tools,
``time_limit`` s per instance, ``workers``; reports optimal or its bound), cpsat_game (the same, restricted to
the mallocGame's moves: the best return any game-playing agent can reach), muzero (rl/malloc/muzero/: Gumbel
MuZero search, ``simulations`` per move, over the learned model of the network in ``weights``, default the
shipped one in rl/malloc/trained/), alphazero (the same network and search, but the true game as recurrent
function) and rollout (the true game, the network's prior, rollouts of XLA's heuristic in game moves as
leaf values); all keep the best (true return) of the deterministic episode and ``samples`` - 1 Gumbel-noised
ones. Every placement is checked by the independent validator (rl/malloc/validate.py) before it is reported.
A learned solver's wall time excludes XLA's compilation for the padded size of the first instance only (one
warm-up call): on a set of whole programs, each of its own size, the others' times include their compilation.

``out`` is a JSON list, one record per (instance, solver): instance, solver, benefit, total_benefit,
normalised_benefit, wall_time_s, placement ({buffer name: offset or "slow"}), and for cpsat optimal, bound.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time

import numpy as np

from rl.malloc import baselines, cpsat, instance, validate
from training import run as run_lib

SOLVERS = ("heuristic", "firstfit", "random", "cpsat", "cpsat_game", "muzero", "alphazero", "rollout")
LEARNED = ("muzero", "alphazero", "rollout")
DEFAULT_INSTANCES = pathlib.Path(instance.__file__).parent / "instances" / "test"
NETWORK_FILES = ("muzero.msgpack", "muzero.json")


def require_network_dir(name: str, directory: str) -> None:
    """ValueError naming the setting ``name`` unless ``directory`` holds an exported network."""
    if not all((pathlib.Path(directory).expanduser() / f).is_file() for f in NETWORK_FILES):
        raise ValueError(f"{name}={directory!r} lacks {' / '.join(NETWORK_FILES)}")


@dataclasses.dataclass(frozen=True)
class EvalMallocConfig:
    """One evaluation of mallocGame solvers (:func:`run`).

    solver: Which solver: heuristic, firstfit, random, cpsat, cpsat_game, muzero, alphazero, rollout, or all
      (every one).
    instances: Directory of instance JSON files.
    time_limit: CP-SAT seconds per instance.
    time_limit_from: cpsat/cpsat_game: instead of time_limit, give each instance the wall time a learned
      solver (muzero, alphazero or rollout) took on it, read from this earlier --out file (CP-SAT at the
      agent's time).
    workers: CP-SAT search workers.
    seed: Seed of the random solver (and of the muzero/alphazero search).
    simulations: muzero/alphazero/rollout: search simulations per move.
    samples: muzero/alphazero/rollout: keep the best (true game return) of the deterministic episode and
      samples-1 episodes with Gumbel noise at the root.
    keep_best: rollout: answer with the best whole trajectory the episode's searches evaluated (a searched
      node's moves then XLA's heuristic in game moves), where it beats the episode played (single-player
      MCTS's best sequence). Not a fallback to the heuristic: its first candidate, the heuristic restricted to
      game moves, is below XLA's own placement on 19 of the 23 held-out windows.
    weights: muzero/alphazero/rollout: network directory (muzero.msgpack + muzero.json); default the shipped
      rl/malloc/trained.
    out: Write the per-instance records here (JSON list).
    """
    solver: str = "heuristic"
    instances: str = str(DEFAULT_INSTANCES)
    time_limit: float = 10.0
    time_limit_from: str = ""
    workers: int = 1
    seed: int = 0
    simulations: int = 64
    samples: int = 1
    keep_best: bool = False
    weights: str = ""
    out: str = ""

    def __post_init__(self):  # bad settings: the message alone, before any work
        if self.solver != "all" and self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r}; allowed: {', '.join(SOLVERS)}, all")
        for s in self.solvers:
            if s in LEARNED:  # checked without loading the network
                from rl.malloc import muzero

                muzero.check_search_args(self.simulations, self.samples)
            else:
                make_runner(s, self.time_limit, self.workers, self.seed)
        if self.keep_best and self.solver != "rollout":
            raise ValueError(f"keep_best=True needs solver=rollout; solver={self.solver!r}")
        if self.time_limit_from:
            agent_wall_times(self.time_limit_from)
        if self.weights:  # checked even when no solver uses it: a mistyped path is never silently ignored
            require_network_dir("weights", self.weights)
        run_lib.require_output_file("out", self.out)

    @property
    def solvers(self) -> list[str]:
        return list(SOLVERS) if self.solver == "all" else [self.solver]


def agent_wall_times(path: str) -> dict[str, float]:
    """{instance: wall_time_s} of the learned solver's records in the eval_malloc ``out`` file ``path``;
    ValueError naming the file unless it holds exactly one muzero/alphazero/rollout record per instance."""
    import json

    file = pathlib.Path(path).expanduser()
    try:
        records = json.loads(file.read_text())
        if isinstance(records, dict) and "records" in records:  # a results file: {"provenance", "records"}
            records = records["records"]
        learned = [(r["instance"], float(r["wall_time_s"])) for r in records if r.get("solver") in LEARNED]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"time_limit_from={path!r}: not an eval_malloc `out` file ({type(e).__name__}: {e})")
    times = dict(learned)
    if not times or len(times) != len(learned) or min(times.values()) <= 0:
        raise ValueError(f"time_limit_from={path!r}: needs exactly one muzero/alphazero/rollout record per "
                         f"instance with wall_time_s > 0; found {len(learned)} records for {len(times)} instances")
    return times


def make_runner(solver: str, time_limit: float = 10.0, workers: int = 1, seed: int = 0, simulations: int = 64,
                weights: str = "", samples: int = 1, time_limits: dict[str, float] | None = None,
                keep_best: bool = False):
    """``run(instance) -> (offsets int64 [n] with -1 slow, extra record fields)``; CP-SAT's limit is
    ``time_limits[instance name]`` where given (ValueError for an instance it lacks), else ``time_limit``."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}; allowed: {', '.join(SOLVERS)}, all")
    if solver in LEARNED:
        from rl.malloc import muzero  # local import: the baselines need neither Flax nor mctx

        muzero.check_search_args(simulations, samples)
        model, params, info = muzero.load_network(pathlib.Path(weights).expanduser() if weights else None)
        search_cfg = info.get("search_config", {})
        max_considered, q_scale = int(search_cfg.get("max_considered", 16)), float(search_cfg.get("q_scale", 1.0))
        if solver == "rollout":
            q_scale = float(search_cfg.get("rollout_q_scale", 1.0))

        def run_learned(inst):
            offsets = muzero.solve_batch([inst], model, params, solver, simulations, max_considered, seed,
                                         q_scale=q_scale, samples=samples, keep_best=keep_best)[0]
            return offsets, {"simulations": simulations, "samples": samples, "keep_best": keep_best}
        return run_learned
    if solver in ("cpsat", "cpsat_game"):
        if not time_limit > 0:
            raise ValueError(f"time_limit={time_limit} must be > 0 seconds")
        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")

        def run_cpsat(inst):
            if time_limits is not None and inst.name not in time_limits:
                raise ValueError(f"{inst.where}: no learned-solver wall time for it in time_limit_from")
            limit = time_limits[inst.name] if time_limits is not None else time_limit
            if solver == "cpsat_game":
                sol = cpsat.solve(inst, limit, workers, game_moves=True)
            else:
                sol = cpsat.solve(inst, limit, workers, hint=baselines.xla_heuristic(inst))
            return sol.offsets, {"optimal": sol.optimal, "bound": sol.bound, "status": sol.status,
                                 "time_limit_s": limit}
        return run_cpsat
    if solver == "random":
        return lambda inst: (baselines.random_legal(inst, seed), {})
    fn = baselines.xla_heuristic if solver == "heuristic" else baselines.first_fit_decreasing
    return lambda inst: (fn(inst), {})


def evaluate(insts: list[instance.Instance], run, solver: str) -> list[dict]:
    """One validated record per instance of ``run`` (:func:`make_runner`), timed (compilation excluded)."""
    records = []
    if solver in LEARNED and insts:  # compile outside the timed loop (one shape per padded size)
        run(insts[0])
    for inst in insts:
        t0 = time.perf_counter()
        offsets, extra = run(inst)
        wall = time.perf_counter() - t0
        value = validate.benefit(inst, offsets)  # raises on an invalid placement
        total = inst.total_benefit
        records.append({"instance": inst.name, "solver": solver, "benefit": value, "total_benefit": total,
                        "normalised_benefit": value / total if total > 0 else 0.0, "wall_time_s": wall,
                        **extra, "placement": validate.to_json_placement(inst, offsets)})
    return records


def summarise(records: list[dict]) -> dict:
    """Per solver: mean normalised benefit, mean wall time, and (when cpsat ran) the mean gap to the CP-SAT
    optimum on the instances it proved optimal, share of instances where the solver reaches it; for CP-SAT
    runs, the mean gap of their placements to their own proven bounds (where the time limit left one open)."""
    by = {}
    for r in records:
        by.setdefault(r["solver"], {})[r["instance"]] = r
    opt = {k: r for k, r in by.get("cpsat", {}).items() if r.get("optimal")}
    out = {}
    for solver, recs in by.items():
        row = {"instances": len(recs),
               "mean_normalised_benefit": float(np.mean([r["normalised_benefit"] for r in recs.values()])),
               "mean_wall_time_s": float(np.mean([r["wall_time_s"] for r in recs.values()]))}
        common_opt = [k for k in recs if k in opt and opt[k]["benefit"] > 0]
        if common_opt:
            gaps = [1 - recs[k]["benefit"] / opt[k]["benefit"] for k in common_opt]
            row.update(cpsat_optimal_instances=len(common_opt), mean_gap_to_optimum_pct=100 * float(np.mean(gaps)),
                       share_at_optimum=float(np.mean([g <= 1e-9 for g in gaps])))
        bounded = [r for r in recs.values() if "bound" in r and r["bound"] > 0]
        if bounded:
            row["mean_gap_to_own_bound_pct"] = 100 * float(np.mean([1 - r["benefit"] / r["bound"] for r in bounded]))
        heur = by.get("heuristic", {})
        both = [k for k in recs if k in heur]
        if both and solver != "heuristic":
            diff = np.array([recs[k]["benefit"] - heur[k]["benefit"] for k in both])
            tol = 1e-9 * max(1.0, max(abs(heur[k]["benefit"]) for k in both))
            row.update(share_ge_heuristic=float(np.mean(diff >= -tol)), share_gt_heuristic=float(np.mean(diff > tol)))
        out[solver] = row
    return out


def print_table(summary: dict) -> None:
    print(f"{'solver':<10} {'n':>4} {'mean norm. benefit':>19} {'gap to opt %':>13} {'at opt':>7} "
          f"{'>= heur':>8} {'> heur':>7} {'mean s':>8} {'gap to own bound %':>19}")
    fmt = lambda row, key, spec: format(row[key], spec) if key in row else "-"
    for solver, row in summary.items():
        print(f"{solver:<10} {row['instances']:>4} {row['mean_normalised_benefit']:>19.4f} "
              f"{fmt(row, 'mean_gap_to_optimum_pct', '.2f'):>13} {fmt(row, 'share_at_optimum', '.2f'):>7} "
              f"{fmt(row, 'share_ge_heuristic', '.2f'):>8} {fmt(row, 'share_gt_heuristic', '.2f'):>7} "
              f"{row['mean_wall_time_s']:>8.3f} {fmt(row, 'mean_gap_to_own_bound_pct', '.2f'):>19}")


def run_solvers(insts, solvers, time_limit=10.0, workers=1, seed=0, simulations=64, weights="",
                samples=1, time_limits=None, keep_best=False) -> list[dict]:
    runners = [(s, make_runner(s, time_limit, workers, seed, simulations, weights, samples, time_limits,
                               keep_best))
               for s in solvers]  # all settings checked first
    return [r for s, run in runners for r in evaluate(insts, run, s)]


def run(cfg: EvalMallocConfig) -> list[dict]:
    """Evaluates ``cfg.solvers`` on ``cfg.instances``, prints the comparison table, writes ``cfg.out``."""
    insts = instance.load_dir(pathlib.Path(cfg.instances).expanduser())
    if set(cfg.solvers) & set(LEARNED):  # the JAX game's limits, before the network is loaded
        from rl.malloc import game

        for inst in insts:
            game.check_fits(inst)
    time_limits = agent_wall_times(cfg.time_limit_from) if cfg.time_limit_from else None
    if time_limits is not None:
        missing = [i.name for i in insts if i.name not in time_limits]
        if missing and set(cfg.solvers) & {"cpsat", "cpsat_game"}:
            raise ValueError(f"time_limit_from={cfg.time_limit_from!r} has no learned-solver record for "
                             f"{len(missing)} of the instances (first: {missing[0]!r})")
    records = run_solvers(insts, cfg.solvers, cfg.time_limit, cfg.workers, cfg.seed, cfg.simulations,
                          cfg.weights, cfg.samples, time_limits, cfg.keep_best)
    print_table(summarise(records))
    if cfg.out:
        run_lib.write_json_atomic(pathlib.Path(cfg.out), records)
    return records


def move_set_ceiling(insts: list[instance.Instance], time_limit: float = 10.0) -> dict:
    """How much the mallocGame's move set loses: per instance, CP-SAT's optimum under the game's moves and
    unrestricted (both must be proven), and the share of instances where they are equal."""
    rows = []
    for inst in insts:
        free, game_only = cpsat.solve(inst, time_limit), cpsat.solve(inst, time_limit, game_moves=True)
        if not (free.optimal and game_only.optimal):
            raise RuntimeError(f"{inst.where}: CP-SAT proved no optimum in {time_limit} s")
        rows.append({"instance": inst.name, "optimum": free.benefit, "game_optimum": game_only.benefit})
    lost = [r for r in rows if r["game_optimum"] < r["optimum"] - 1e-9 * max(1.0, r["optimum"])]
    return {"instances": len(rows), "game_below_optimum": len(lost),
            "share_equal": 1 - len(lost) / max(len(rows), 1), "below": lost}


@dataclasses.dataclass(frozen=True)
class MoveSetCheckConfig:
    """How often the game's move set misses the unrestricted optimum (:func:`check_move_set`).

    count: Random small instances (instance.tiny_contended_instance).
    seed: Their seed.
    out: Write the JSON summary here.
    """
    count: int = 1000
    seed: int = 0
    out: str = ""

    def __post_init__(self):
        run_lib.require_positive(self, "count")
        run_lib.require_output_file("out", self.out)


def check_move_set(cfg: MoveSetCheckConfig) -> dict:
    """:func:`move_set_ceiling` on ``cfg.count`` random small instances; prints the count, writes ``cfg.out``."""
    rng = np.random.default_rng(cfg.seed)
    insts = [instance.tiny_contended_instance(rng, f"tiny_{k:05d}") for k in range(cfg.count)]
    summary = {**move_set_ceiling(insts), "seed": cfg.seed,
               "generator": "rl.malloc.instance.tiny_contended_instance"}
    print(f"game optimum == unrestricted optimum on {summary['instances'] - summary['game_below_optimum']} of "
          f"{summary['instances']} instances")
    if cfg.out:
        run_lib.write_json_atomic(pathlib.Path(cfg.out).expanduser(), summary)
    return summary


PROGRAMS_DIR = DEFAULT_INSTANCES.parent / "programs"


def tour_step(workdir: pathlib.Path) -> dict:
    """Small-scale tour: every baseline, CP-SAT (2 s; unrestricted and under the game's moves) and the shipped
    mallocMuZero network (32 simulations; MuZero search, one episode and best of 16, and the rollout search,
    also keeping the best trajectory it evaluated)
    on the first 6 held-out instances; then
    the smallest held-out whole program: heuristic, CP-SAT (5 s, with its bound) and the network (4 simulations)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    insts = instance.load_dir(DEFAULT_INSTANCES)[:6]
    records = run_solvers(insts, ("heuristic", "firstfit", "random", "cpsat", "cpsat_game", "muzero", "rollout"),
                          time_limit=2.0, workers=1, simulations=32)
    best = evaluate(insts, make_runner("muzero", simulations=32, samples=16), "muzero")
    records += [dict(r, solver="muzero_best16") for r in best]
    kept = evaluate(insts, make_runner("rollout", simulations=32, keep_best=True), "rollout")
    records += [dict(r, solver="rollout_keep_best") for r in kept]
    program = min(instance.load_dir(PROGRAMS_DIR / "test"), key=lambda i: i.num_buffers)
    whole = run_solvers([program], ("heuristic", "cpsat", "muzero"), time_limit=5.0, simulations=4)
    run_lib.write_json_atomic(workdir / "malloc_eval.json", records + whole)
    summary = summarise(records)
    out = {f"{s}_mean_normalised_benefit": round(row["mean_normalised_benefit"], 4) for s, row in summary.items()}
    out.update({f"{s}_gap_to_optimum_pct": round(row["mean_gap_to_optimum_pct"], 2)
                for s, row in summary.items() if "mean_gap_to_optimum_pct" in row})
    out["instances"] = len(insts)
    out[f"program_{program.name}_buffers"] = program.num_buffers
    for r in whole:
        out[f"program_{r['solver']}_normalised_benefit"] = round(r["normalised_benefit"], 4)
    out["program_cpsat_bound_normalised"] = round(float(whole[1]["bound"]) / program.total_benefit, 4)
    return out
