r"""Trains mallocMuZero (rl/malloc/muzero/, models/malloc_muzero.py) by self-play on the mallocGame.

``train(TrainMallocConfig(...))`` runs the iterations (``scripts/train_malloc.py`` is its command line).
Each step is one iteration: ``muzero.batch`` instances (``shipped_fraction`` of them drawn from the shipped
training instances rl/malloc/instances/train, the rest fresh ``instance.random_instance`` ones with
5..N buffers), all padded to ``muzero.max_buffers``, are played to the end with ``mctx.gumbel_muzero_policy``
(``num_simulations`` per move over the learned model, or the true game with ``search="alphazero"``); the
episodes enter a FIFO replay, then ``updates_per_iter`` MuZero gradient steps on K-step unrolls follow. By
default pure RL: no demonstrations.

``demos=M`` (not in the paper; rl/malloc/demos.py) first solves the shipped training instances and M random
ones with CP-SAT restricted to the game's moves (``demo_time_limit`` s each) and keeps these expert episodes
beside the replay (in the checkpoint): the first ``pretrain_iters`` iterations learn from them alone, later
ones draw ``demo_fraction`` of every batch from them.

Every ``eval_every`` steps the search (deterministic, ``eval_simulations``) plays the held-out test instances
(rl/malloc/instances/test), reported against the XLA heuristic (rl/malloc/baselines.py). These numbers are
only logged; nothing is selected on them (the exported network is the final one).

Writes config.json, metrics.jsonl (and TensorBoard event files), curves.png, summary.json, Orbax checkpoints
of the whole training state (parameters, optimiser, replay, key: re-running resumes bit-for-bit; SIGTERM
checkpoints and exits 0) and, with ``export_dir``, the final network as muzero.msgpack + muzero.json (with the
command line that trains it and the search's ``q_scale``, chosen by ``muzero.select_q_scale`` on the shipped
training instances).
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import jax
import numpy as np
from absl import logging

from models.malloc_muzero import MuZeroNetConfig
from parallel import checkpoint as ckpt_lib
from rl.malloc import baselines, demos, game, instance, muzero, validate
from rl.malloc import evaluate as evaluate_lib
from training import config as config_lib
from training import run as run_lib
from training.config import group

# steps is NOT ignored: the learning-rate schedule spans the whole run, so resume with the same steps.
RESUME_IGNORE = ("log_every", "export_dir", "eval_every", "eval_simulations")
INSTANCE_DIR = pathlib.Path(instance.__file__).parent / "instances"


def _self_play_defaults() -> muzero.MuZeroConfig:
    """This experiment's defaults of the search and learning settings (fewer simulations, more updates)."""
    return muzero.MuZeroConfig(num_simulations=16, max_considered=8, updates_per_iter=8)


@dataclasses.dataclass(frozen=True)
class TrainMallocConfig(run_lib.RunConfig):
    """mallocMuZero self-play training; search and learning settings: ``muzero`` (``muzero.MuZeroConfig``),
    the network: ``net`` (``MuZeroNetConfig``), both under their own field names.

    export_dir: Write the final network here (muzero.msgpack + muzero.json).
    steps: Self-play + learning iterations.
    shipped_fraction: Share of each batch drawn from the shipped training instances (the rest:
      random_instance).
    init_from: Start from this exported network (muzero.msgpack + muzero.json, same network settings)
      instead of random parameters; fresh optimiser.
    demos: Random instances solved by CP-SAT (game moves) as demonstrations, besides the shipped training
      ones (0: pure self-play RL).
    demo_time_limit: CP-SAT seconds per demonstration.
    eval_every: Evaluate on the held-out instances every N steps and at the end (0: never).
    eval_simulations: Search simulations per move in evaluation.
    log_every: Log training metrics every N steps.
    """
    RENAMED = {"simulations": "num_simulations", "pretrain_steps": "pretrain_iters"}
    checkpoint_every: int = 100
    export_dir: str = ""
    steps: int = 600
    shipped_fraction: float = 0.5
    init_from: str = ""
    demos: int = 0
    demo_time_limit: float = 1.0
    eval_every: int = 100
    eval_simulations: int = 32
    log_every: int = 10
    muzero: muzero.MuZeroConfig = group(_self_play_defaults)
    net: MuZeroNetConfig = group(MuZeroNetConfig)

    def __post_init__(self):
        run_lib.RunConfig.__post_init__(self)
        run_lib.require_positive(self, "steps", "eval_every", "eval_simulations", "log_every",
                                 allow_zero=("eval_every",))
        mcfg = self.muzero
        if not 0.0 <= self.shipped_fraction <= 1.0:
            raise ValueError(f"shipped_fraction={self.shipped_fraction} must be in [0, 1]")
        if self.demos < 0 or not self.demo_time_limit > 0:
            raise ValueError(f"demos={self.demos} must be >= 0 and demo_time_limit={self.demo_time_limit} > 0")
        if (mcfg.pretrain_iters or mcfg.demo_fraction) and not self.demos:
            raise ValueError(f"pretrain_iters={mcfg.pretrain_iters} / demo_fraction={mcfg.demo_fraction} "
                             "need demonstrations: set demos to 1 or more")
        if self.init_from:
            evaluate_lib.require_network_dir("init_from", self.init_from)
        if mcfg.pretrain_iters > self.steps:
            raise ValueError(f"pretrain_iters={mcfg.pretrain_iters} must be <= steps={self.steps}")
        if mcfg.max_buffers < 5:
            raise ValueError(f"max_buffers={mcfg.max_buffers} must be >= 5 (training instances have 5.."
                             "max_buffers buffers; shipped ones with more are left out)")


def training_batch(cfg: TrainMallocConfig, shipped: list[instance.Instance], step: int) -> game.Padded:
    """The instances of iteration ``step`` (a pure function of seed and step, so a resume replays them)."""
    rng = np.random.default_rng([cfg.seed, step, 7])
    batch, max_buffers = cfg.muzero.batch, cfg.muzero.max_buffers
    n_shipped = int(round(cfg.shipped_fraction * batch)) if shipped else 0
    insts = [shipped[i] for i in rng.integers(0, len(shipped), n_shipped)] if n_shipped else []
    insts += [random_training_instance(rng, max_buffers) for _ in range(batch - n_shipped)]
    return game.pad(insts, max_buffers)


def random_training_instance(rng: np.random.Generator, max_buffers: int) -> instance.Instance:
    """5..max_buffers buffers, horizon 1..8x the buffer count, sizes up to 16/64/256, capacity 20-50% of peak."""
    n = int(rng.integers(5, max_buffers + 1))
    return instance.random_instance(rng, num_buffers=n, horizon=int(rng.integers(n, 8 * n + 1)),
                                    max_size=int(rng.choice([16, 64, 256])),
                                    capacity_fraction=float(rng.uniform(0.2, 0.5)))


def initial_params(cfg: TrainMallocConfig, optimizer) -> dict:
    """Parameters of the exported network in ``cfg.init_from`` (same architecture), fresh optimiser state."""
    _, params, info = muzero.load_network(pathlib.Path(cfg.init_from).expanduser())
    if MuZeroNetConfig(**info["net_config"]) != cfg.net:
        raise ValueError(f"init_from={cfg.init_from!r} has network {info['net_config']}, not the configured "
                         f"{dataclasses.asdict(cfg.net)}")
    logging.info("initialised from %s (%s)", cfg.init_from, info.get("trained_by", "?"))
    params = jax.device_put(params)  # flax.serialization returns NumPy arrays; the train state holds jax.Arrays
    return {"params": params, "opt_state": optimizer.init(params)}


def make_demonstrations(cfg: TrainMallocConfig, shipped: list[instance.Instance]) -> muzero.Replay:
    """Expert episodes (rl/malloc/demos.py) on the shipped training instances and ``cfg.demos`` random ones."""
    rng = np.random.default_rng([cfg.seed, 11])
    max_buffers = cfg.muzero.max_buffers
    insts = shipped + [random_training_instance(rng, max_buffers) for _ in range(cfg.demos)]
    t0 = time.perf_counter()
    episodes, returns = demos.demonstration_episodes(insts, max_buffers, cfg.demo_time_limit)
    logging.info("%d demonstrations (CP-SAT, game moves) in %.0f s, mean return %.4f", len(insts),
                 time.perf_counter() - t0, float(returns.mean()))
    return muzero.demo_replay(episodes)


def evaluate(insts, heur, model, params, cfg: TrainMallocConfig, kind: str = "muzero") -> dict:
    """Mean normalised benefit of the deterministic search on ``insts`` and its shares >= / > ``heur``."""
    offsets = muzero.solve_batch(insts, model, params, kind, cfg.eval_simulations, cfg.muzero.max_considered,
                                 q_scale=cfg.muzero.q_scale)
    got = np.array([validate.normalised_benefit(i, o) for i, o in zip(insts, offsets)])
    return {f"eval_{kind}": float(got.mean()), f"eval_{kind}_ge_heuristic": float(np.mean(got >= heur - 1e-9)),
            f"eval_{kind}_gt_heuristic": float(np.mean(got > heur + 1e-9))}


@functools.lru_cache(maxsize=4)
def _components(mcfg: muzero.MuZeroConfig, ncfg: MuZeroNetConfig, total_updates: int):
    """(model, optimizer, iteration): one function object per configuration, so that a second ``train`` in
    the same process (a resume, a test) reuses JAX's trace and compilation caches."""
    model = muzero.make_model(ncfg)
    optimizer = muzero.make_optimizer(mcfg, total_updates)
    return model, optimizer, muzero.make_train_iteration(model, optimizer, mcfg)


def shipped_training_instances(max_buffers: int) -> list[instance.Instance]:
    """The shipped training instances (rl/malloc/instances/train) with at most ``max_buffers`` buffers."""
    return [i for i in instance.load_dir(INSTANCE_DIR / "train") if i.num_buffers <= max_buffers]


def train(cfg: TrainMallocConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    workdir = run_lib.begin(cfg)
    mcfg, ncfg = cfg.muzero, cfg.net
    model, optimizer, iteration = _components(mcfg, ncfg, cfg.steps * mcfg.updates_per_iter)
    shipped = shipped_training_instances(mcfg.max_buffers)
    num_demos = len(shipped) + cfg.demos if cfg.demos else None
    state = muzero.init_train_state(model, optimizer, mcfg, cfg.seed, num_demos=num_demos)  # restore template
    run = run_lib.open_run(cfg, workdir, ckpt_lib.abstract_like(state), resume_ignore=RESUME_IGNORE)
    if run.restored is not None:
        state = run.restored.state
    else:
        if cfg.init_from:
            state = state._replace(**initial_params(cfg, optimizer))
        if cfg.demos:
            state = state._replace(demos=make_demonstrations(cfg, shipped))

    test = instance.load_dir(INSTANCE_DIR / "test")
    heur = np.array([validate.normalised_benefit(i, baselines.xla_heuristic(i)) for i in test])
    example_batch = training_batch(cfg, shipped, 1)
    train_step = ckpt_lib.DonationSafeStep(iteration, run.checkpointer,
                                           (ckpt_lib.abstract_like(state), example_batch))

    def save(step):
        return run.checkpointer.save(step, state, run.meta())

    origin = f"resumed at step {run.start_step}" if run.restored else (
        f"from {cfg.init_from}" if cfg.init_from else "from scratch")
    logging.info("training %s, %d parameters", origin, sum(x.size for x in jax.tree.leaves(state.params)))
    last_eval: dict = {}

    def one_step(step: int) -> dict:
        nonlocal state, last_eval
        state, step_metrics = train_step(state, training_batch(cfg, shipped, step))
        row = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            row.update({k: float(v) for k, v in step_metrics.items()})
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            last_eval = evaluate(test, heur, model, state.params, cfg)
            last_eval["eval_heuristic"] = float(heur.mean())
            row.update(last_eval)
        return row

    end = run.loop(one_step, save, last_step=cfg.steps, total_steps=cfg.steps,
                   progress_keys=("loss", "selfplay_return", "eval_muzero"))
    summary = {"step": end.step, "preempted": end.preempted, "wall_time_s": end.wall_s,
               "resumed_from": run.resumed_from, **last_eval}
    run.finish(summary, [("curves.png", ("selfplay_return", "eval_muzero", "eval_heuristic", "loss"),
                          "mallocMuZero: self-play return, held-out benefit, loss", "value")],
               done="preempted" if end.preempted else "done")
    if cfg.export_dir and not end.preempted:
        export(cfg, model, state.params, shipped, summary)
    return summary


ROLLOUT_Q_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0)  # the rollout search's values are reachable returns: larger weights


def export(cfg: TrainMallocConfig, model, params, shipped: list[instance.Instance], summary: dict) -> None:
    """Writes the network to ``cfg.export_dir`` with its provenance and the searches' ``q_scale`` (MuZero /
    AlphaZero, and the rollout search's)."""
    q_scale, by_q, rollout_q, by_rollout_q = cfg.muzero.q_scale, {}, 1.0, {}
    if shipped:  # the search's Q weight, chosen on the training instances (the held-out ones stay unseen)
        q_scale, by_q = muzero.select_q_scale(shipped, model, params, cfg.eval_simulations,
                                              cfg.muzero.max_considered)
        rollout_q, by_rollout_q = muzero.select_q_scale(shipped, model, params, cfg.eval_simulations,
                                                        cfg.muzero.max_considered, ROLLOUT_Q_SCALES, "rollout")
    logging.info("search q_scale %s, rollout search %s (mean benefit on the training instances per q_scale: %s, "
                 "%s)", q_scale, rollout_q, by_q, by_rollout_q)
    muzero.save_network(cfg.export_dir, params, cfg.net, {
        "trained_by": run_lib.command_line("scripts.train_malloc", cfg),
        "search_config": {"max_considered": cfg.muzero.max_considered, "q_scale": q_scale,
                          "simulations": cfg.eval_simulations, "train_benefit_by_q_scale": by_q,
                          "rollout_q_scale": rollout_q, "train_benefit_by_rollout_q_scale": by_rollout_q},
        "train_config": config_lib.to_flat(cfg), "summary": summary})
    logging.info("exported the network to %s", cfg.export_dir)
