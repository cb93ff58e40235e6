r"""Trains mallocMuZero (rl/malloc/muzero.py, models/malloc_muzero.py) by self-play on the mallocGame.

    python -m scripts.train_malloc --workdir=/tmp/malloc --steps=200
    python -m scripts.train_malloc --workdir=/tmp/malloc --export_dir=rl/malloc/trained   # the shipped network

Each step is one iteration: ``--batch`` instances (half drawn from the shipped training instances
rl/malloc/instances/train, half fresh ``instance.random_instance`` ones with 5..N buffers), all padded to
``--max_buffers``, are played to the end with ``mctx.gumbel_muzero_policy`` (``--simulations`` per move over
the learned model, or the true game with ``--search=alphazero``); the episodes enter a FIFO replay, then
``--updates_per_iter`` MuZero gradient steps on K-step unrolls follow. By default pure RL: no demonstrations.

``--demos=M`` (not in the paper; rl/malloc/demos.py) first solves the shipped training instances and M
random ones with CP-SAT restricted to the game's moves (``--demo_time_limit`` s each) and keeps these expert
episodes beside the replay (in the checkpoint): the first ``--pretrain_steps`` iterations learn from them
alone, later ones draw ``--demo_fraction`` of every batch from them.

Every ``--eval_every`` steps the search (deterministic, ``--eval_simulations``) plays the held-out test
instances (rl/malloc/instances/test), reported against the XLA heuristic (rl/malloc/baselines.py). These
numbers are only logged; nothing is selected on them (the exported network is the final one).

Writes config.json, metrics.jsonl, curves.png, summary.json, Orbax checkpoints of the whole training
state (parameters, optimiser, replay, key: re-running resumes bit-for-bit; SIGTERM checkpoints and exits 0)
and, with ``--export_dir``, the final network as muzero.msgpack + muzero.json (with this command line and the
search's ``q_scale``, chosen by ``muzero.select_q_scale`` on the shipped training instances).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time

import jax
import numpy as np
from absl import app, flags, logging

from models.malloc_muzero import MuZeroNetConfig
from parallel import checkpoint as ckpt_lib
from rl.malloc import baselines, demos, game, instance, muzero, validate
from scripts import common

# --steps is NOT ignored: the learning-rate schedule spans the whole run, so resume with the same --steps.
RESUME_IGNORE = common.RUN_RESUME_IGNORE + ("log_every", "export_dir", "eval_every", "eval_simulations")
INSTANCE_DIR = pathlib.Path(instance.__file__).parent / "instances"


@dataclasses.dataclass(frozen=True)
class TrainMallocConfig(common.RunConfig):
    checkpoint_every: int = 100
    export_dir: str = ""
    steps: int = 600
    max_buffers: int = 32
    batch: int = 32
    simulations: int = 16
    max_considered: int = 8
    search: str = "muzero"
    q_scale: float = 1.0
    unroll: int = 5
    n_step: int = 32
    replay_episodes: int = 2048
    train_batch: int = 128
    updates_per_iter: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shipped_fraction: float = 0.5
    width: int = 64
    num_heads: int = 4
    mlp_dim: int = 128
    repr_layers: int = 2
    dyn_layers: int = 1
    pred_layers: int = 0
    init_from: str = ""
    demos: int = 0
    demo_time_limit: float = 1.0
    demo_fraction: float = 0.0
    pretrain_steps: int = 0
    eval_every: int = 100
    eval_simulations: int = 32
    log_every: int = 10

    def __post_init__(self):
        super().__post_init__()
        common.require_positive(self, "steps", "eval_every", "eval_simulations", "log_every",
                                allow_zero=("eval_every",))
        if not 0.0 <= self.shipped_fraction <= 1.0:
            raise ValueError(f"--shipped_fraction={self.shipped_fraction} must be in [0, 1]")
        if self.demos < 0 or not self.demo_time_limit > 0:
            raise ValueError(f"--demos={self.demos} must be >= 0 and --demo_time_limit={self.demo_time_limit} > 0")
        if (self.pretrain_steps or self.demo_fraction) and not self.demos:
            raise ValueError(f"--pretrain_steps={self.pretrain_steps} / --demo_fraction={self.demo_fraction} "
                             "need demonstrations: set --demos >= 1")
        if self.init_from and not all((pathlib.Path(self.init_from).expanduser() / f).is_file()
                                      for f in ("muzero.msgpack", "muzero.json")):
            raise ValueError(f"--init_from={self.init_from!r} lacks muzero.msgpack / muzero.json")
        if self.pretrain_steps > self.steps:
            raise ValueError(f"--pretrain_steps={self.pretrain_steps} must be <= --steps={self.steps}")
        if self.max_buffers < 5:
            raise ValueError(f"--max_buffers={self.max_buffers} must be >= 5 (training instances have 5.."
                             "max_buffers buffers; shipped ones with more are left out)")
        self.muzero_config()
        self.net_config()

    def muzero_config(self) -> muzero.MuZeroConfig:
        return muzero.MuZeroConfig(
            max_buffers=self.max_buffers, batch=self.batch, num_simulations=self.simulations,
            max_considered=self.max_considered, search=self.search, q_scale=self.q_scale, unroll=self.unroll,
            n_step=self.n_step, replay_episodes=self.replay_episodes, train_batch=self.train_batch,
            updates_per_iter=self.updates_per_iter, lr=self.lr, weight_decay=self.weight_decay,
            demo_fraction=self.demo_fraction, pretrain_iters=self.pretrain_steps)

    def net_config(self) -> MuZeroNetConfig:
        try:
            return MuZeroNetConfig(width=self.width, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                   repr_layers=self.repr_layers, dyn_layers=self.dyn_layers,
                                   pred_layers=self.pred_layers)
        except ValueError as e:
            raise ValueError(f"model flags: {e}") from None


def training_batch(cfg: TrainMallocConfig, shipped: list[instance.Instance], step: int) -> game.Padded:
    """The instances of iteration ``step`` (a pure function of seed and step, so a resume replays them)."""
    rng = np.random.default_rng([cfg.seed, step, 7])
    n_shipped = int(round(cfg.shipped_fraction * cfg.batch)) if shipped else 0
    insts = [shipped[i] for i in rng.integers(0, len(shipped), n_shipped)] if n_shipped else []
    insts += [random_training_instance(rng, cfg.max_buffers) for _ in range(cfg.batch - n_shipped)]
    return game.pad(insts, cfg.max_buffers)


def random_training_instance(rng: np.random.Generator, max_buffers: int) -> instance.Instance:
    """5..max_buffers buffers, horizon 1..8x the buffer count, sizes up to 16/64/256, capacity 20-50% of peak."""
    n = int(rng.integers(5, max_buffers + 1))
    return instance.random_instance(rng, num_buffers=n, horizon=int(rng.integers(n, 8 * n + 1)),
                                    max_size=int(rng.choice([16, 64, 256])),
                                    capacity_fraction=float(rng.uniform(0.2, 0.5)))


def initial_params(cfg: TrainMallocConfig, ncfg: MuZeroNetConfig, optimizer) -> dict:
    """Parameters of the exported network in ``cfg.init_from`` (same architecture), fresh optimiser state."""
    _, params, info = muzero.load_network(pathlib.Path(cfg.init_from).expanduser())
    if MuZeroNetConfig(**info["net_config"]) != ncfg:
        raise ValueError(f"--init_from={cfg.init_from!r} has network {info['net_config']}, not the model flags' "
                         f"{dataclasses.asdict(ncfg)}")
    logging.info("initialised from %s (%s)", cfg.init_from, info.get("trained_by", "?"))
    params = jax.device_put(params)  # flax.serialization returns NumPy arrays; the train state holds jax.Arrays
    return {"params": params, "opt_state": optimizer.init(params)}


def make_demonstrations(cfg: TrainMallocConfig, shipped: list[instance.Instance]) -> muzero.Replay:
    """Expert episodes (rl/malloc/demos.py) on the shipped training instances and ``cfg.demos`` random ones."""
    rng = np.random.default_rng([cfg.seed, 11])
    insts = shipped + [random_training_instance(rng, cfg.max_buffers) for _ in range(cfg.demos)]
    t0 = time.perf_counter()
    episodes, returns = demos.demonstration_episodes(insts, cfg.max_buffers, cfg.demo_time_limit)
    logging.info("%d demonstrations (CP-SAT, game moves) in %.0f s, mean return %.4f", len(insts),
                 time.perf_counter() - t0, float(returns.mean()))
    return muzero.demo_replay(episodes)


def evaluate(insts, heur, model, params, cfg: TrainMallocConfig, kind: str = "muzero") -> dict:
    offsets = muzero.solve_batch(insts, model, params, kind, cfg.eval_simulations, cfg.max_considered,
                                 q_scale=cfg.q_scale)
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


def train(cfg: TrainMallocConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    common.maybe_initialize_distributed(cfg.multihost)
    workdir = common.require_workdir(cfg.workdir)
    mcfg, ncfg = cfg.muzero_config(), cfg.net_config()
    model, optimizer, iteration = _components(mcfg, ncfg, cfg.steps * cfg.updates_per_iter)
    shipped = [i for i in instance.load_dir(INSTANCE_DIR / "train") if i.num_buffers <= cfg.max_buffers]
    num_demos = len(shipped) + cfg.demos if cfg.demos else None
    state = muzero.init_train_state(model, optimizer, mcfg, cfg.seed, num_demos=num_demos)  # restore template
    config_dict = dataclasses.asdict(cfg)
    checkpointer, restored = ckpt_lib.open_for_run(
        workdir / "checkpoints", config_dict, ckpt_lib.abstract_like(state), keep=cfg.keep_checkpoints,
        mode=cfg.checkpoint_mode, overwrite=cfg.overwrite, resume_ignore=RESUME_IGNORE)
    start_step = 0
    if restored is not None:
        state, start_step = restored.state, restored.step
    else:
        if cfg.init_from:
            state = state._replace(**initial_params(cfg, ncfg, optimizer))
        if cfg.demos:
            state = state._replace(demos=make_demonstrations(cfg, shipped))
    common.write_json_atomic(workdir / "config.json", config_dict)
    metrics = common.MetricsWriter(workdir / "metrics.jsonl", resume_step=start_step if restored else None)

    test = instance.load_dir(INSTANCE_DIR / "test")
    heur = np.array([validate.normalised_benefit(i, baselines.xla_heuristic(i)) for i in test])
    example_batch = training_batch(cfg, shipped, 1)
    train_step = ckpt_lib.DonationSafeStep(iteration, checkpointer,
                                           (ckpt_lib.abstract_like(state), example_batch))

    def save(step):
        return checkpointer.save(step, state, {"config": config_dict})

    origin = f"resumed at step {start_step}" if restored else (f"from {cfg.init_from}" if cfg.init_from else
                                                                 "from scratch")
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

    end = common.run_checkpointed_steps(
        start_step, cfg.steps, one_step, save=save, checkpointer=checkpointer,
        checkpoint_every=cfg.checkpoint_every, total_steps=cfg.steps, metrics=metrics,
        progress=common.Progress(cfg.steps, start_step), progress_keys=("loss", "selfplay_return", "eval_muzero"))
    step, preempted, wall_s = end.step, end.preempted, end.wall_s
    summary = {"step": step, "preempted": preempted, "wall_time_s": wall_s,
               "resumed_from": start_step if restored else None, **last_eval}
    common.write_json_atomic(workdir / "summary.json", summary)
    common.plot_curves(workdir / "curves.png", metrics.rows,
                       ("selfplay_return", "eval_muzero", "eval_heuristic", "loss"),
                       "mallocMuZero: self-play return, held-out benefit, loss", ylabel="value")
    if cfg.export_dir and not preempted:
        q_scale, by_q = cfg.q_scale, {}
        if shipped:  # the search's Q weight, chosen on the training instances (the held-out ones stay unseen)
            q_scale, by_q = muzero.select_q_scale(shipped, model, state.params, cfg.eval_simulations,
                                                  cfg.max_considered)
        logging.info("search q_scale %s (mean benefit on the training instances per q_scale: %s)", q_scale, by_q)
        muzero.save_network(cfg.export_dir, state.params, ncfg, {
            "trained_by": common.command_line("scripts.train_malloc", cfg),
            "search_config": {"max_considered": cfg.max_considered, "q_scale": q_scale,
                              "simulations": cfg.eval_simulations, "train_benefit_by_q_scale": by_q},
            "train_config": config_dict, "summary": summary})
        logging.info("exported the network to %s", cfg.export_dir)
    logging.info("%s at step %d: %s", "preempted" if preempted else "done", step, json.dumps(summary))
    return summary


def define_flags() -> None:
    common.define_common_flags()
    d = TrainMallocConfig()
    flags.DEFINE_string("export_dir", d.export_dir, "Write the final network here (muzero.msgpack + muzero.json).")
    flags.DEFINE_integer("steps", d.steps, "Self-play + learning iterations.")
    flags.DEFINE_integer("max_buffers", d.max_buffers, "Padded buffer count N of every batch (actions: N + 2).")
    flags.DEFINE_integer("batch", d.batch, "Self-play episodes (instances) per iteration.")
    flags.DEFINE_integer("simulations", d.simulations, "Search simulations per move in self-play.")
    flags.DEFINE_integer("max_considered", d.max_considered, "Gumbel-top-k actions considered at the root.")
    flags.DEFINE_enum("search", d.search, ["muzero", "alphazero"],
                      "Recurrent function of self-play: learned model (muzero) or the true game (alphazero).")
    flags.DEFINE_float("q_scale", d.q_scale, "Scale of the completed Q-values in the improved policy.")
    flags.DEFINE_integer("unroll", d.unroll, "K, the unroll steps of the MuZero loss.")
    flags.DEFINE_integer("n_step", d.n_step, "n of the value targets (>= max_buffers: Monte-Carlo return).")
    flags.DEFINE_integer("replay_episodes", d.replay_episodes, "Replay capacity in episodes (FIFO).")
    flags.DEFINE_integer("train_batch", d.train_batch, "Positions per gradient step.")
    flags.DEFINE_integer("updates_per_iter", d.updates_per_iter, "Gradient steps per iteration.")
    flags.DEFINE_float("lr", d.lr, "Peak AdamW learning rate (warm-up, cosine decay to 10%).")
    flags.DEFINE_float("weight_decay", d.weight_decay, "AdamW weight decay.")
    flags.DEFINE_float("shipped_fraction", d.shipped_fraction, "Share of each batch drawn from the shipped "
                       "training instances (the rest: random_instance).")
    flags.DEFINE_integer("width", d.width, "Transformer width.")
    flags.DEFINE_integer("num_heads", d.num_heads, "Attention heads.")
    flags.DEFINE_integer("mlp_dim", d.mlp_dim, "Feed-forward width.")
    flags.DEFINE_integer("repr_layers", d.repr_layers, "Representation transformer blocks.")
    flags.DEFINE_integer("dyn_layers", d.dyn_layers, "Dynamics transformer blocks.")
    flags.DEFINE_integer("pred_layers", d.pred_layers, "Prediction transformer blocks (0: heads only).")
    flags.DEFINE_string("init_from", d.init_from, "Start from this exported network (muzero.msgpack + "
                        "muzero.json, same model flags) instead of random parameters; fresh optimiser.")
    flags.DEFINE_integer("demos", d.demos, "Random instances solved by CP-SAT (game moves) as demonstrations, "
                         "besides the shipped training ones (0: pure self-play RL).")
    flags.DEFINE_float("demo_time_limit", d.demo_time_limit, "CP-SAT seconds per demonstration.")
    flags.DEFINE_float("demo_fraction", d.demo_fraction, "Share of each batch drawn from the demonstrations "
                       "after pre-training.")
    flags.DEFINE_integer("pretrain_steps", d.pretrain_steps, "First iterations that learn from the "
                         "demonstrations only (no self-play).")
    flags.DEFINE_integer("eval_every", d.eval_every, "Evaluate on the held-out instances every N steps and "
                         "at the end (0: never).")
    flags.DEFINE_integer("eval_simulations", d.eval_simulations, "Search simulations per move in evaluation.")
    flags.DEFINE_integer("log_every", d.log_every, "Log training metrics every N steps.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = common.config_from_flags(TrainMallocConfig)
    common.quiet_library_logs()
    train(cfg)


if __name__ == "__main__":
    define_flags()
    app.run(main)
