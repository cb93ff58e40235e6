"""Solving with a trained network (deterministic search or best of N Gumbel-noised episodes), the choice
of the search's ``q_scale``, and the shipped network on disk (``rl/malloc/trained``)."""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from models.malloc_muzero import MuZeroNetConfig
from rl import export
from rl.malloc import game
from rl.malloc.instance import Instance
from rl.malloc.muzero.mcts import SEARCHES, check_search_args
from rl.malloc.muzero.training import init_params, make_model, play

TRAINED_DIR = pathlib.Path(__file__).resolve().parents[1] / "trained"


# --------------------------------------------------------------------------- solving

@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8, 9, 10, 11))
def _play_final(model, params, key, inst, kind, num_simulations, max_considered, q_scale, samples=1,
                keep_best=False, window=0, view=0):
    """Final states of the deterministic search (Gumbel noise 0); with ``samples`` > 1, of the best (by the
    true game's return) of that episode and ``samples - 1`` episodes whose root choices carry Gumbel noise
    (Danihelka et al. 2022: sampling without replacement through Gumbel-top-k). ``keep_best``: see
    ``training.play``, as are ``window`` and ``view``."""
    final, _ = play(model, params, key, inst, kind, num_simulations, max_considered, 0.0, q_scale, keep_best,
                    window, view)
    if samples == 1:
        return final
    b = inst.size.shape[0]
    tiled = jax.tree.map(lambda x: jnp.repeat(x, samples - 1, axis=0), inst)
    noisy, _ = play(model, params, jax.random.fold_in(key, 1), tiled, kind, num_simulations, max_considered,
                    1.0, q_scale, keep_best, window, view)
    every = jax.tree.map(lambda d, r: jnp.concatenate([d[:, None], r.reshape(b, samples - 1, *r.shape[1:])], 1),
                         final, noisy)                                  # [B, samples, ...], deterministic first
    best = jnp.argmax(every.ret, axis=1)                                # ties: the deterministic episode
    return jax.tree.map(lambda x: x[jnp.arange(b), best], every)


def padded_size(num_buffers: int, multiple: int = 32) -> int:
    return multiple * max(1, -(-num_buffers // multiple))


def solve_batch(instances: list[Instance], model, params, kind: str = "muzero", num_simulations: int = 64,
                max_considered: int = 16, seed: int = 0, max_buffers: int | None = None,
                q_scale: float = 1.0, samples: int = 1, keep_best: bool = False, window: int = 0,
                view: int = 0) -> list[np.ndarray]:
    """Plays every instance (one batch per padded size) with deterministic search (Gumbel noise 0), or
    keeps the best of that and ``samples - 1`` Gumbel-noised episodes (:func:`_play_final`); ``keep_best``
    (rollout search): each episode answers with the best trajectory its searches evaluated
    (``training.play``); ``window`` / ``view`` (true-game searches on whole programs): rollouts over that many
    buffers, the network on a view of that many slots (``mcts.search``; 0: all). Returns int64 offsets in
    each instance's buffer order (-1 slow)."""
    if kind not in SEARCHES:
        raise ValueError(f"solver kind={kind!r}; allowed: {', '.join(SEARCHES)}")
    check_search_args(num_simulations, samples)
    if keep_best and kind != "rollout":
        raise ValueError(f"keep_best needs the rollout search; solver kind={kind!r}")
    groups: dict[int, list[int]] = {}
    for i, inst in enumerate(instances):
        groups.setdefault(max_buffers or padded_size(inst.num_buffers), []).append(i)
    out: list[np.ndarray | None] = [None] * len(instances)
    for n, idx in groups.items():
        batch = game.pad([instances[i] for i in idx], max_buffers=n)
        final = _play_final(model, params, jax.random.PRNGKey(seed), batch, kind, num_simulations,
                            min(max_considered, game.num_actions(n)), float(q_scale), samples, keep_best,
                            int(window), int(view))
        final = jax.device_get(final)
        for j, i in enumerate(idx):
            one = jax.tree.map(lambda x: x[j], batch)
            out[i] = game.offsets_in_instance_order(one, jax.tree.map(lambda x: x[j], final))
    return out


Q_SCALES = (0.01, 0.03, 0.1, 0.3, 1.0)


def select_q_scale(instances: list[Instance], model, params, num_simulations: int = 32, max_considered: int = 16,
                   candidates=Q_SCALES, kind: str = "muzero") -> tuple[float, dict]:
    """The ``q_scale`` (weight of the search's Q-values against the prior, see :func:`search`) of highest mean
    normalised benefit of the deterministic ``kind`` search on ``instances`` (training ones: the held-out set
    stays unseen; ties: the smaller scale), and that mean for each candidate."""
    from rl.malloc import validate  # local import: validate is NumPy-only and not needed for training

    means = {}
    for q in candidates:
        offsets = solve_batch(instances, model, params, kind, num_simulations, max_considered, q_scale=q)
        means[q] = float(np.mean([validate.normalised_benefit(i, o) for i, o in zip(instances, offsets)]))
    best = max(candidates, key=lambda q: (means[q], -q))
    return best, {str(q): v for q, v in means.items()}


def solve(instance: Instance, params=None, model=None, kind: str = "muzero", num_simulations: int = 64,
          max_considered: int = 16, seed: int = 0) -> np.ndarray:
    """Offsets (int64 [n], -1 slow, in the instance's buffer order) chosen by the search; defaults to the
    shipped network (``rl/malloc/trained``)."""
    if params is None or model is None:
        model, params, _ = load_network()
    return solve_batch([instance], model, params, kind, num_simulations, max_considered, seed)[0]


# --------------------------------------------------------------------------- shipped network

def save_network(directory, params, net_cfg: MuZeroNetConfig, info: dict) -> None:
    """Writes ``muzero.msgpack`` (flax.serialization) and ``muzero.json`` (net config + provenance)."""
    export.save(directory, "muzero", params, "net_config", net_cfg, info)


def load_network(directory=None):
    """(model, params, info) from a directory written by :func:`save_network` (default: the shipped one)."""
    def build(config: dict):
        model = make_model(MuZeroNetConfig(**config))
        return model, init_params(model, jax.random.PRNGKey(0))
    return export.load(pathlib.Path(directory or TRAINED_DIR), "muzero", "net_config", build,
                       "scripts/train_malloc.py")
