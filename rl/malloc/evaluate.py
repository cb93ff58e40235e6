r"""Evaluates mallocGame solvers on a directory of instances (default: the shipped held-out test set), or on the
user's own program: a JAX function (``program``) or a scheduled XLA HLO text module (``hlo``; rl/malloc/program.py).

``run(EvalMallocConfig(...))`` is what ``scripts/eval_malloc.py`` does; :func:`tour_step` is the tour's
small-scale version. On a program the default comparison is XLA's heuristic, CP-SAT (with its bound) and the
rollout search keeping its best trajectory (simulations by the program's size, :func:`default_simulations`),
one table on stdout, each placement in ``out`` and the memory maps of the heuristic's and the best solver's
placements in a PNG beside it (rl/malloc/memory_map.py).

Solvers (rl/malloc/): heuristic (XLA memory-space-assignment order benefit/sqrt(size), best fit), firstfit
(first-fit decreasing size), random (uniform legal mallocGame moves, ``seed``), cpsat (OR-Tools,
``time_limit`` s per instance, ``workers``; reports optimal or its bound), cpsat_game (the same, restricted to
the mallocGame's moves: the best return any game-playing agent can reach), muzero (rl/malloc/muzero/: Gumbel
MuZero search, ``simulations`` per move, over the learned model of the network in ``weights``, default the
shipped one in rl/malloc/trained/), alphazero (the same network and search, but the true game as recurrent
function) and rollout (the true game, the network's prior, rollouts of XLA's heuristic in game moves as
leaf values); all keep the best (true return) of the deterministic episode and ``samples`` - 1 Gumbel-noised
ones. Every placement is checked by the independent validator (rl/malloc/validate.py) before it is
reported. A learned solver's wall time excludes XLA's compilation for the padded size of the first instance
only (one warm-up call): on a set of whole programs, each of its own size, the others' times include their
compilation (``warm_up=False``: every time includes it, what a person waits for; always so on a program).

``out`` is a JSON object: ``provenance`` (command, commit, date, machine), ``config``, ``instances`` (name,
buffers, capacity, peak live bytes, total benefit, meta), ``summary`` (per solver, :func:`summarise`) and
``records``, one per (instance, solver): instance, solver, benefit, total_benefit, normalised_benefit,
wall_time_s, placement ({buffer name: offset or "slow"}), and for cpsat optimal, bound. (Files written before
this format are a plain list of records; :func:`read_records` reads both.)
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import numpy as np

from rl.malloc import baselines, cpsat, extract, instance, program, validate
from training import run as run_lib

SOLVERS = ("heuristic", "firstfit", "random", "cpsat", "cpsat_game", "muzero", "alphazero", "rollout")
LEARNED = ("muzero", "alphazero", "rollout")
COMPARE = ("heuristic", "cpsat", "rollout")  # the default on a program
MAX_SIMULATIONS = 64  # the searches' simulations per move on the <= 32-buffer windows
REFERENCE_BUFFERS = 1_781  # the largest held-out whole program (gpt2_small_step), searched at 2 simulations
DEFAULT_INSTANCES = pathlib.Path(instance.__file__).parent / "instances" / "test"
NETWORK_FILES = ("muzero.msgpack", "muzero.json")


def default_simulations(num_buffers: int) -> int:
    """The searches' simulations per move when none are asked for (``simulations=0``): the most, a power of two
    from 2 to 64, whose work stays within that of 2 simulations on the largest held-out program (1,781 buffers,
    4.3-4.5 min on 2 cores with compilation). The work is counted as simulations x buffers^3: an episode makes one
    move per buffer and each move's leaf rollouts place the rest of the program with a best fit over its gaps
    (measured at 2 simulations: 1.26x the buffers took 1.9x the time, 1.9x took 5.7x). A ``<= 32``-buffer window
    gets 64, a small program more simulations than a large one; a search's time grows at most linearly in its
    simulations, so no program's exceeds 32x its own time at 2 (results/malloc/README.md, "Whole programs")."""
    sims = MAX_SIMULATIONS
    while sims > 2 and sims * num_buffers ** 3 > 2 * REFERENCE_BUFFERS ** 3:
        sims //= 2
    return sims


def require_network_dir(name: str, directory: str) -> None:
    """ValueError naming the setting ``name`` unless ``directory`` holds an exported network."""
    if not all((pathlib.Path(directory).expanduser() / f).is_file() for f in NETWORK_FILES):
        raise ValueError(f"{name}={directory!r} lacks {' / '.join(NETWORK_FILES)}")


@dataclasses.dataclass(frozen=True)
class EvalMallocConfig:
    """One evaluation of mallocGame solvers (:func:`run`).

    solver: Which solvers, comma-separated: heuristic, firstfit, random, cpsat, cpsat_game, muzero, alphazero,
      rollout; all (every one); compare (heuristic,cpsat,rollout). Empty: compare on a --program / --hlo,
      heuristic on an instance directory.
    instances: Directory of instance JSON files.
    program: Play your own JAX program instead: package.module:function, a function returning (the callable,
      a tuple of example arguments); it is jitted and compiled on the default backend and its scheduled HLO read.
    hlo: Play a scheduled XLA HLO text module instead (any frontend): what jax.jit(f).lower(...).compile()
      .as_text() prints, or the *after_optimizations.txt file of XLA_FLAGS=--xla_dump_to=DIR.
    capacity_fraction: --program / --hlo: fast memory = this fraction of the program's peak live bytes.
    capacity_bytes: --program / --hlo: fast memory in bytes instead (0: use capacity_fraction).
    slow_bw: --program / --hlo: the cost model's slow-memory bandwidth, bytes/s (benefits are roofline time saved).
    fast_bw: --program / --hlo: the cost model's fast-memory bandwidth, bytes/s.
    flop_rate: --program / --hlo: the cost model's compute rate, FLOP/s.
    time_limit: CP-SAT seconds per instance.
    time_limit_from: cpsat/cpsat_game: instead of time_limit, give each instance the wall time a learned
      solver (muzero, alphazero or rollout) took on it, read from this earlier --out file (CP-SAT at the
      agent's time).
    workers: CP-SAT search workers.
    seed: Seed of the random solver (and of the muzero/alphazero search).
    simulations: muzero/alphazero/rollout: search simulations per move (0: by the instance's size, 64 up to
      560 buffers, 8 at 937, 2 from 1,414; :func:`default_simulations`).
    samples: muzero/alphazero/rollout: keep the best (true game return) of the deterministic episode and
      samples-1 episodes with Gumbel noise at the root.
    keep_best: rollout: answer with the best whole trajectory the episode's searches evaluated (a searched
      node's moves then XLA's heuristic in game moves), where it beats the episode played (single-player
      MCTS's best sequence). Not a fallback to the heuristic: its first candidate, the heuristic restricted to
      game moves, is below XLA's own placement on 19 of the 23 held-out windows. Always on for a --program /
      --hlo.
    view: alphazero/rollout: the network sees this many slots around the current buffer (0: all of them, the
      default; a window instance never has more than 32, so any view >= 32 is the whole window). On the
      held-out whole programs a 64-slot view is faster and ranks moves worse (results/malloc/README.md).
    window: rollout: each leaf's heuristic rollout places only the next this many buffers (0: to the end).
    weights: muzero/alphazero/rollout: network directory (muzero.msgpack + muzero.json); default the shipped
      rl/malloc/trained.
    warm_up: An instance directory: a learned solver's first instance is played once untimed, so that its
      compilation is left out of the times (--nowarm_up: every time includes its compilation, what a person
      waits for; always so for a --program / --hlo).
    memory_maps: Also for an instance directory, write each instance's memory-map PNG beside --out (always
      for a --program / --hlo).
    out: Write the records here (JSON).
    """
    solver: str = ""
    instances: str = str(DEFAULT_INSTANCES)
    program: str = ""
    hlo: str = ""
    capacity_fraction: float = 0.25
    capacity_bytes: int = 0
    slow_bw: float = extract.CostModel.slow_bw
    fast_bw: float = extract.CostModel.fast_bw
    flop_rate: float = extract.CostModel.flop_rate
    time_limit: float = 10.0
    time_limit_from: str = ""
    workers: int = 1
    seed: int = 0
    simulations: int = 0
    samples: int = 1
    keep_best: bool = False
    view: int = 0
    window: int = 0
    weights: str = ""
    warm_up: bool = True
    memory_maps: bool = False
    out: str = ""

    def __post_init__(self):  # bad settings: the message alone, before any work
        for s in self.solvers:
            if s not in SOLVERS:
                raise ValueError(f"solver={self.solver!r}; allowed: {', '.join(SOLVERS)}, all, compare, or a "
                                 "comma-separated list")
        self._check_program_settings()
        for name in ("view", "window"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0 (0: all)")
        if not isinstance(self.simulations, int) or self.simulations < 0:
            raise ValueError(f"simulations={self.simulations!r} must be an integer >= 1 (or 0: by size)")
        for s in self.solvers:
            if s in LEARNED:  # checked without loading the network
                from rl.malloc import muzero

                muzero.check_search_args(self.simulations or MAX_SIMULATIONS, self.samples)
            else:
                make_runner(s, self.time_limit, self.workers, self.seed)
        if self.keep_best and "rollout" not in self.solvers:
            raise ValueError(f"keep_best=True needs solver=rollout; solver={self.solver!r}")
        if self.time_limit_from:
            agent_wall_times(self.time_limit_from)
        if self.weights:  # checked even when no solver uses it: a mistyped path is never silently ignored
            require_network_dir("weights", self.weights)
        run_lib.require_output_file("out", self.out)

    def _check_program_settings(self) -> None:
        """A program's settings: one source, not with instances; the capacity and cost settings only for it."""
        if self.program and self.hlo:
            raise ValueError(f"give one of program={self.program!r} and hlo={self.hlo!r}, not both")
        defaults = EvalMallocConfig.__dataclass_fields__
        if self.whole_program and self.instances != defaults["instances"].default:
            raise ValueError(f"instances={self.instances!r} cannot be combined with "
                             f"{'program' if self.program else 'hlo'}=: one source of instances")
        program.check_capacity_settings(self.capacity_fraction, self.capacity_bytes)
        for name in ("slow_bw", "fast_bw", "flop_rate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}={v!r} must be a finite number > 0")
        if not self.whole_program:
            changed = [n for n in ("capacity_fraction", "capacity_bytes", "slow_bw", "fast_bw", "flop_rate")
                       if getattr(self, n) != defaults[n].default]
            if changed:
                raise ValueError(f"{changed[0]}={getattr(self, changed[0])!r} applies to program= or hlo= only (an "
                                 "instance file carries its own capacity and benefits)")

    @property
    def whole_program(self) -> bool:
        return bool(self.program or self.hlo)

    @property
    def solvers(self) -> list[str]:
        if self.solver == "all":
            return list(SOLVERS)
        if self.solver == "compare" or (not self.solver and self.whole_program):
            return list(COMPARE)
        if not self.solver:
            return ["heuristic"]
        return [s.strip() for s in self.solver.split(",") if s.strip()] or [self.solver]

    @property
    def cost(self) -> extract.CostModel:
        return extract.CostModel(slow_bw=self.slow_bw, fast_bw=self.fast_bw, flop_rate=self.flop_rate)


def read_records(data) -> list[dict]:
    """The records of an eval_malloc --out file's parsed JSON: the ``records`` of the object, or the plain
    list that files written before the object format hold."""
    return data["records"] if isinstance(data, dict) and "records" in data else data


def agent_wall_times(path: str) -> dict[str, float]:
    """{instance: wall_time_s} of the learned solver's records in the eval_malloc ``out`` file ``path``;
    ValueError naming the file unless it holds exactly one muzero/alphazero/rollout record per instance."""
    import json

    file = pathlib.Path(path).expanduser()
    try:
        records = read_records(json.loads(file.read_text()))  # a results file {provenance, records} or a list
        learned = [(r["instance"], float(r["wall_time_s"])) for r in records if r.get("solver") in LEARNED]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"time_limit_from={path!r}: not an eval_malloc `out` file ({type(e).__name__}: {e})")
    times = dict(learned)
    if not times or len(times) != len(learned) or min(times.values()) <= 0:
        raise ValueError(f"time_limit_from={path!r}: needs exactly one muzero/alphazero/rollout record per "
                         f"instance with wall_time_s > 0; found {len(learned)} records for {len(times)} instances")
    return times


def make_runner(solver: str, time_limit: float = 10.0, workers: int = 1, seed: int = 0, simulations: int = 0,
                weights: str = "", samples: int = 1, time_limits: dict[str, float] | None = None,
                keep_best: bool = False, view: int = 0, window: int = 0):
    """``run(instance) -> (offsets int64 [n] with -1 slow, extra record fields)``; CP-SAT's limit is
    ``time_limits[instance name]`` where given (ValueError for an instance it lacks), else ``time_limit``;
    a search's ``simulations`` per move (0: :func:`default_simulations` of each instance's size), ``view`` /
    ``window``: its network view and rollout window (``muzero.solve_batch``)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}; allowed: {', '.join(SOLVERS)}, all")
    if solver in LEARNED:
        from rl.malloc import muzero  # local import: the baselines need neither Flax nor mctx

        muzero.check_search_args(simulations or MAX_SIMULATIONS, samples)  # 0: by size
        model, params, info = muzero.load_network(pathlib.Path(weights).expanduser() if weights else None)
        search_cfg = info.get("search_config", {})
        max_considered, q_scale = int(search_cfg.get("max_considered", 16)), float(search_cfg.get("q_scale", 1.0))
        if solver == "rollout":
            q_scale = float(search_cfg.get("rollout_q_scale", 1.0))

        def run_learned(inst):
            sims = simulations or default_simulations(inst.num_buffers)
            offsets = muzero.solve_batch([inst], model, params, solver, sims, max_considered, seed,
                                         q_scale=q_scale, samples=samples, keep_best=keep_best, window=window,
                                         view=view)[0]
            return offsets, {"simulations": sims, "samples": samples, "keep_best": keep_best, "view": view,
                             "window": window}
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


def evaluate(insts: list[instance.Instance], run, solver: str, warm_up: bool = True) -> list[dict]:
    """One validated record per instance of ``run`` (:func:`make_runner`), timed; with ``warm_up`` a learned
    solver's compilation for the first instance's padded size is excluded (one untimed call), without it (a
    program a person waits for: its wall time is what they wait) it is included."""
    records = []
    if warm_up and solver in LEARNED and insts:  # compile outside the timed loop (one shape per padded size)
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


def run_solvers(insts, solvers, time_limit=10.0, workers=1, seed=0, simulations=0, weights="",
                samples=1, time_limits=None, keep_best=False, view=0, window=0, warm_up=True) -> list[dict]:
    runners = [(s, make_runner(s, time_limit, workers, seed, simulations, weights, samples, time_limits,
                               keep_best and s == "rollout", view, window))
               for s in solvers]  # all settings checked first
    return [r for s, run in runners for r in evaluate(insts, run, s, warm_up)]


def load_instances(cfg: EvalMallocConfig) -> list[instance.Instance]:
    """The instances ``cfg`` names: its program or HLO module (rl/malloc/program.py), else its directory."""
    if cfg.whole_program:
        return [program.program_instance(program.ProgramSource(cfg.program, cfg.hlo, cfg.capacity_fraction,
                                                               cfg.capacity_bytes, cfg.cost))]
    return instance.load_dir(pathlib.Path(cfg.instances).expanduser())


def run(cfg: EvalMallocConfig) -> list[dict]:
    """Evaluates ``cfg.solvers`` on ``cfg``'s instances, prints the comparison table(s), writes ``cfg.out`` and,
    for a program (or with ``memory_maps``), the memory maps beside it."""
    insts = load_instances(cfg)
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
                          cfg.weights, cfg.samples, time_limits, cfg.keep_best or cfg.whole_program, cfg.view,
                          cfg.window, warm_up=cfg.warm_up and not cfg.whole_program)
    summary = summarise(records)
    print_table(summary)
    if cfg.whole_program or len(insts) <= 8:
        for inst in insts:
            print_comparison(inst, [r for r in records if r["instance"] == inst.name])
    if cfg.out:
        out = pathlib.Path(cfg.out).expanduser()  # write_json_atomic makes the missing folders
        command = run_lib.command_line("scripts.eval_malloc", cfg, skip=())
        run_lib.write_json_atomic(out, {"provenance": run_lib.provenance(command), "config": dataclasses.asdict(cfg),
                                        "instances": [describe(i) for i in insts], "summary": summary,
                                        "records": records})
        if cfg.whole_program or cfg.memory_maps:
            for inst in insts:
                path = memory_map_path(out, inst.name, single=len(insts) == 1)
                write_memory_map(inst, [r for r in records if r["instance"] == inst.name], path)
                print(f"memory map: {path}")
    return records


def describe(inst: instance.Instance) -> dict:
    """What a results file says about an instance besides its placements."""
    return {"name": inst.name, "buffers": inst.num_buffers, "capacity": inst.capacity,
            "peak_live_bytes": inst.peak_live_bytes(), "total_benefit": inst.total_benefit, "meta": inst.meta}


def offsets_of(inst: instance.Instance, record: dict) -> np.ndarray:
    """int64 [n] offsets (-1 slow) of a record's placement ({buffer name: offset or "slow"})."""
    p = record["placement"]
    return validate.as_offsets(inst, [None if p[name] == "slow" else p[name] for name in inst.buffer_names])


def best_record(records: list[dict], exclude: str = "heuristic") -> dict | None:
    """The record of highest benefit among the solvers other than ``exclude`` (ties: the first)."""
    others = [r for r in records if r["solver"] != exclude]
    return max(others, key=lambda r: r["benefit"]) if others else None


def memory_map_path(out: pathlib.Path, name: str, single: bool) -> pathlib.Path:
    """``out`` with .png for a single instance, else ``<out stem>.<instance>.png``, beside ``out``."""
    stem = out.name[:-5] if out.name.endswith(".json") else out.name
    return out.with_name(f"{stem}.png" if single else f"{stem}.{name}.png")


def write_memory_map(inst: instance.Instance, records: list[dict], path: pathlib.Path) -> None:
    """The heuristic's and the best other solver's memory maps side by side (rl/malloc/memory_map.py)."""
    from rl.malloc import memory_map

    chosen = [r for r in records if r["solver"] == "heuristic"][:1]
    best = best_record(records)
    chosen += [best] if best is not None else []
    memory_map.save_comparison(inst, [(r["solver"], offsets_of(inst, r)) for r in chosen or records[:1]], path)


def print_comparison(inst: instance.Instance, records: list[dict]) -> None:
    """One instance's table: each solver's normalised benefit, its change against XLA's heuristic, its gap to
    the best CP-SAT bound (an upper bound on every solver's benefit), its wall time and settings."""
    bounds = [r["bound"] for r in records if r.get("bound")]
    bound = min(bounds) if bounds else None
    heur = next((r["benefit"] for r in records if r["solver"] == "heuristic"), None)
    total = inst.total_benefit if inst.total_benefit > 0 else 1.0
    print(f"\n{inst.name}: {inst.num_buffers} buffers, fast memory {inst.capacity} bytes "
          f"({inst.capacity / max(inst.peak_live_bytes(), 1):.0%} of the peak live bytes), total benefit "
          f"{inst.total_benefit:.6g} ns" + (f", CP-SAT bound {bound / total:.4f}" if bound else ""))
    print(f"{'solver':<10} {'benefit':>8} {'vs heuristic':>13} {'gap to bound':>13} {'time s':>9}  settings")
    for r in records:
        vs = f"{100 * (r['benefit'] / heur - 1):+.2f} %" if heur and r["solver"] != "heuristic" else "-"
        gap = f"{100 * (1 - r['benefit'] / bound):.2f} %" if bound else "-"
        keys = ("status", "time_limit_s", "simulations", "keep_best", "view", "window")
        settings = " ".join(f"{k}={r[k]}" for k in keys if k in r)
        print(f"{r['solver']:<10} {r['normalised_benefit']:>8.4f} {vs:>13} {gap:>13} {r['wall_time_s']:>9.2f}  "
              f"{settings}")


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
