r"""Benchmarks the mallocGame and the mallocMuZero search.

    python -m scripts.bench_malloc --out=/tmp/bench_malloc.json

Figures (medians of ``--repeats`` timed runs; the first, compiling call is excluded, ``jax.block_until_ready``):
- game steps per second: whole random-legal episodes of the shipped held-out instances (tiled to
  ``--batch`` episodes, padded to N = 32) with the JAX game (``game.rollout``, jitted, vmapped over the batch)
  versus the plain-Python implementation of the same rules (``rl/malloc/pygame_ref.py``), one step = one
  decided buffer (padding no-ops not counted), measured side by side in this process;
- MCTS simulations per second: one ``mctx.gumbel_muzero_policy`` call per root for a batch of
  ``--search_batch`` root positions, ``--simulations`` each, with the learned model (muzero) and with the
  true game (alphazero), using the shipped network.
"""
from __future__ import annotations

import pathlib
import random
import statistics
import time

import jax
from absl import app, flags

from rl.malloc import game, instance, muzero, pygame_ref
from scripts import common

flags.DEFINE_integer("batch", 1024, "Episodes per JAX game call (vmapped).")
flags.DEFINE_integer("python_episodes", 46, "Episodes played by the Python game per repeat.")
flags.DEFINE_integer("search_batch", 32, "Root positions per search call.")
flags.DEFINE_integer("simulations", 64, "Simulations per search.")
flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
flags.DEFINE_string("out", "", "Write the JSON results here.")


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(batch: int, python_episodes: int, search_batch: int, simulations: int, repeats: int) -> dict:
    for name, v in (("batch", batch), ("python_episodes", python_episodes), ("search_batch", search_batch),
                    ("simulations", simulations), ("repeats", repeats)):
        if v < 1:
            raise ValueError(f"--{name}={v} must be >= 1")
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    F = flags.FLAGS
    common.quiet_library_logs()
    cfg = {k: F[k].value for k in ("batch", "python_episodes", "search_batch", "simulations", "repeats")}
    try:
        figures = bench(**cfg)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(f"{'figure':<32} {'value':>14}")
    for k, v in figures.items():
        print(f"{k:<32} {v:>14.4g}")
    if F.out:
        out = pathlib.Path(F.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        common.write_json_atomic(out, {"config": cfg, "machine": common.machine_info(), "figures": figures,
                                       "notes": "medians of repeats, warm-up excluded; one step = one "
                                                "decided buffer; simulations counted over the whole batch"})


if __name__ == "__main__":
    app.run(main)
