r"""Benchmarks the mallocGame and the mallocMuZero search (``scripts/bench_malloc.py``: ``run(BenchMallocConfig())``).

Figures (medians of ``repeats`` timed runs; the first, compiling call is excluded, ``jax.block_until_ready``):
- game steps per second: whole random-legal episodes of the shipped held-out instances (tiled to ``batch``
  episodes, padded to N = 32) with the JAX game (``game.rollout``, jitted, vmapped over the batch) versus
  the plain-Python implementation of the same rules (``rl/malloc/pygame_ref.py``), one step = one decided
  buffer (padding no-ops not counted), measured side by side in this process;
- MCTS simulations per second: one ``mctx.gumbel_muzero_policy`` call per root for a batch of
  ``search_batch`` root positions, ``simulations`` each, with the learned model (muzero) and with the true
  game (alphazero), using the shipped network.
"""
from __future__ import annotations

import dataclasses
import pathlib
import random
import statistics
import time

import jax

from rl.malloc import game, instance, muzero, pygame_ref
from training import run as run_lib


@dataclasses.dataclass(frozen=True)
class BenchMallocConfig:
    """The sizes of the mallocGame / search benchmark (:func:`run`).

    batch: Episodes per JAX game call (vmapped).
    python_episodes: Episodes played by the Python game per repeat.
    search_batch: Root positions per search call.
    simulations: Simulations per search.
    repeats: Timed repeats (the median is reported).
    out: Write the JSON results here.
    """
    batch: int = 1024
    python_episodes: int = 46
    search_batch: int = 32
    simulations: int = 64
    repeats: int = 5
    out: str = ""

    def __post_init__(self):
        run_lib.require_positive(self, "batch", "python_episodes", "search_batch", "simulations", "repeats")
        run_lib.require_output_file("out", self.out)


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(batch: int, python_episodes: int, search_batch: int, simulations: int, repeats: int) -> dict:
    """The figures (see the module docstring)."""
    insts = instance.load_dir(pathlib.Path(instance.__file__).parent / "instances" / "test")
    tiled = [insts[i % len(insts)] for i in range(batch)]
    padded = game.pad(tiled, 32)
    real_steps = int(sum(i.num_buffers for i in tiled))

    rollout = jax.jit(jax.vmap(game.random_rollout))
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    t_jax = _median_time(lambda: rollout(padded, keys)[0].ret, repeats)

    rng = random.Random(0)
    py_insts = [insts[i % len(insts)] for i in range(python_episodes)]
    games = [pygame_ref.PyMallocGame(i) for i in py_insts]
    py_steps = sum(g.n for g in games)

    def py_run():
        for g in games:
            g.reset()
            while not g.done:
                legal = [a for a, ok in enumerate(g.legal_actions()) if ok]
                g.step(rng.choice(legal))
        return 0

    t_py = _median_time(py_run, repeats)
    out = {"jax_game_steps_per_s": real_steps / t_jax, "python_game_steps_per_s": py_steps / t_py,
           "jax_batch": batch, "jax_call_s": t_jax, "python_steps": py_steps, "python_call_s": t_py}
    out["jax_over_python"] = out["jax_game_steps_per_s"] / out["python_game_steps_per_s"]

    model, params, info = muzero.load_network()
    roots = [insts[i % len(insts)] for i in range(search_batch)]
    rp = game.pad(roots, 32)
    state = jax.vmap(game.init)(rp)
    q_scale = float(info.get("search_config", {}).get("q_scale", 1.0))
    max_considered = int(info.get("search_config", {}).get("max_considered", 16))
    for kind in ("muzero", "alphazero"):
        fn = jax.jit(lambda p, k, s, kind=kind: muzero.search(model, p, k, rp, s, kind, simulations, max_considered,
                                                              1.0, q_scale).action)
        t = _median_time(lambda fn=fn: fn(params, jax.random.PRNGKey(1), state), repeats)
        out[f"{kind}_simulations_per_s"] = search_batch * simulations / t
        out[f"{kind}_search_call_s"] = t
    return out


def run(cfg: BenchMallocConfig) -> dict:
    """Runs :func:`bench`, prints the table and, with ``cfg.out``, writes the JSON (config, machine, figures)."""
    sizes = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
    figures = bench(**sizes)
    print(f"{'figure':<32} {'value':>14}")
    for k, v in figures.items():
        print(f"{k:<32} {v:>14.4g}")
    if cfg.out:
        run_lib.write_json_atomic(pathlib.Path(cfg.out), {
            "config": sizes, "machine": run_lib.machine_info(), "figures": figures,
            "notes": "medians of repeats, warm-up excluded; one step = one decided buffer; simulations counted "
                     "over the whole batch"})
    return figures
