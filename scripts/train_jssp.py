r"""Trains the job-shop dispatching policy (rl/jssp/agent.py, models/jssp_policy.py) with PPO and CP-SAT-
improved demonstrations on random Taillard-like instances.

    python -m scripts.train_jssp --workdir=/tmp/jssp --steps=300
    python -m scripts.train_jssp --workdir=/tmp/jssp --steps=300 --curriculum=10x10:0,15x15:100

Each step is one PPO iteration (``--batch`` fresh instances of ``--num_jobs`` x ``--num_machines``, or of
the size ``--curriculum`` gives that step, one rollout, ``--epochs`` x ``--minibatches`` updates).
Every ``--cpsat_every`` steps of a size (every step during the first ``--bc_boost_steps``) the greedy
agent schedules ``--cpsat_instances`` new instances of that size, CP-SAT (``--cpsat_time_limit`` s,
hinted with the agent's schedule) improves them, and a behaviour-cloning term on the improved schedules
joins the loss, with weight ``--bc_coef`` times a boost that decays from ``--bc_boost`` to 1 over the
first ``--bc_boost_steps``. The learning rate decays (cosine) to ``--lr_end_frac`` of ``--lr`` at
``--steps`` when ``--lr_decay``. On export, the greedy No-Op threshold (rl/jssp/agent.py, greedy_action)
of the best validation makespan is stored in policy.json. The shipped policy's exact command is in
rl/jssp/trained/policy.json.
Every ``--eval_every`` steps the greedy policy is evaluated on fixed validation instances against SPT.
Writes config.json, metrics.jsonl, curves.png, summary.json, Orbax checkpoints (the training state and
the current demonstrations; re-running resumes, SIGTERM checkpoints and exits 0) and, with
``--export_dir``, the final policy as policy.msgpack + policy.json.
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from models.jssp_policy import PolicyConfig
from parallel import checkpoint as ckpt_lib
from rl.jssp import agent, instances, rules
from scripts import common

RESUME_IGNORE = common.RUN_RESUME_IGNORE + ("log_every", "export_dir", "steps")


@dataclasses.dataclass(frozen=True)
class TrainJSSPConfig(common.RunConfig):
    checkpoint_every: int = 50
    export_dir: str = ""
    steps: int = 300
    num_jobs: int = 10
    num_machines: int = 10
    batch: int = 8
    rollout_factor: float = 1.25
    epochs: int = 2
    minibatches: int = 4
    lr: float = 3e-4
    ent_coef: float = 0.005
    bc_coef: float = 1.0
    cpsat_every: int = 5
    cpsat_instances: int = 4
    cpsat_time_limit: float = 0.5
    bc_boost: float = 1.0
    bc_boost_steps: int = 0
    curriculum: str = ""
    lr_decay: bool = False
    lr_end_frac: float = 0.1
    normalise_reward: bool = False
    window: int = 4
    d_model: int = 32
    num_heads: int = 4
    job_layers: int = 2
    mlp_dim: int = 64
    eval_every: int = 25
    eval_instances: int = 8
    log_every: int = 5

    def __post_init__(self):
        super().__post_init__()
        common.require_positive(self, "steps", "cpsat_every", "eval_every", "eval_instances", "log_every",
                                "window", "d_model", "num_heads", "job_layers", "mlp_dim")
        if not self.cpsat_time_limit > 0:
            raise ValueError(f"--cpsat_time_limit={self.cpsat_time_limit} must be > 0 seconds")
        if not self.bc_boost >= 1:
            raise ValueError(f"--bc_boost={self.bc_boost} must be >= 1 (a multiplier of --bc_coef)")
        common.require_positive(self, "bc_boost_steps", allow_zero=("bc_boost_steps",))
        self.stages()
        self.ppo_config()
        self.policy_config()

    def stages(self) -> tuple[tuple[int, int, int], ...]:
        """The curriculum: (jobs, machines, first step) per size; by default one size from step 0."""
        return agent.parse_curriculum(self.curriculum or f"{self.num_jobs}x{self.num_machines}:0")

    def ppo_config(self, size: tuple[int, int] | None = None) -> agent.PPOConfig:
        J, M = size or self.stages()[0][:2]
        return agent.PPOConfig(num_jobs=J, num_machines=M, batch=self.batch,
                               rollout_factor=self.rollout_factor, epochs=self.epochs, minibatches=self.minibatches,
                               lr=self.lr, ent_coef=self.ent_coef, bc_coef=self.bc_coef,
                               cpsat_instances=self.cpsat_instances,
                               lr_decay_steps=self.steps if self.lr_decay else 0, lr_end_frac=self.lr_end_frac,
                               normalise_reward=self.normalise_reward)

    def policy_config(self) -> PolicyConfig:
        try:
            return PolicyConfig(window=self.window, d_model=self.d_model, num_heads=self.num_heads,
                                job_layers=self.job_layers, mlp_dim=self.mlp_dim)
        except ValueError as e:
            raise ValueError(f"model flags: {e}") from None


def size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def refreshes_demos(step: int, cfg: TrainJSSPConfig) -> bool:
    """Whether iteration ``step`` (1-based) first replaces its size's CP-SAT demonstrations: on the size's
    first iteration, then every ``--cpsat_every`` iterations of that size, and on every iteration of the
    boost phase (more demonstrations early, when imitation helps most)."""
    if not cfg.cpsat_instances:
        return False
    stages = cfg.stages()
    size = agent.curriculum_size(step, stages)
    if step <= cfg.bc_boost_steps:
        return True
    uses = sum(agent.curriculum_size(s, stages) == size for s in range(1, step))
    return uses % cfg.cpsat_every == 0


def validation_set(cfg: TrainJSSPConfig):
    rng = np.random.default_rng([cfg.seed, 12345])
    J, M = cfg.stages()[-1][:2]  # the largest (last) size of the curriculum
    insts = [instances.random_instance(rng, J, M) for _ in range(cfg.eval_instances)]
    machines = jnp.asarray(np.stack([i.machines for i in insts]))
    durations = jnp.asarray(np.stack([i.durations for i in insts]))
    spt = np.asarray(rules.solve_batch(machines, durations, "spt").job_ready).max(-1)
    return machines, durations, spt


def train(cfg: TrainJSSPConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    common.maybe_initialize_distributed(cfg.multihost)
    workdir = common.require_workdir(cfg.workdir)
    pcfg = cfg.policy_config()
    sizes = [s[:2] for s in cfg.stages()]
    ppos = {size_key(z): cfg.ppo_config(z) for z in sizes}
    model = agent.make_model(pcfg)
    optimizer = agent.make_optimizer(ppos[size_key(sizes[0])])
    state = {"train": agent.init_state(model, optimizer, cfg.seed),
             "demos": {k: jax.tree.map(jnp.asarray, agent.empty_demos(p)) for k, p in ppos.items()}}
    config_dict = dataclasses.asdict(cfg)
    checkpointer, restored = ckpt_lib.open_for_run(
        workdir / "checkpoints", config_dict, ckpt_lib.abstract_like(state), keep=cfg.keep_checkpoints,
        mode=cfg.checkpoint_mode, overwrite=cfg.overwrite,
        resume_ignore=tuple(k for k in RESUME_IGNORE if not (cfg.lr_decay and k == "steps")))
    start_step = 0
    if restored is not None:
        state, start_step = restored.state, restored.step
    common.write_json_atomic(workdir / "config.json", config_dict)
    metrics = common.MetricsWriter(workdir / "metrics.jsonl", resume_step=start_step if restored else None)

    train_steps = {}  # one compiled step per size, built when the size first trains

    def train_step_for(key):
        if key not in train_steps:
            step_fn = agent.make_train_step(model, optimizer, ppos[key])
            train_steps[key] = ckpt_lib.DonationSafeStep(
                lambda s, fn=step_fn: _full_step(s, fn, key), checkpointer, (ckpt_lib.abstract_like(state),))
        return train_steps[key]

    solver = agent.make_solver(model)
    greedy = agent.make_batch_greedy(model)
    val_m, val_d, val_spt = validation_set(cfg)

    def evaluate(params) -> dict:
        cmax = np.asarray(greedy(params, val_m, val_d).job_ready).max(-1)
        return {"val_makespan": float(cmax.mean()), "val_vs_spt_pct": float(100 * np.mean(cmax / val_spt - 1))}

    def save(step):
        return checkpointer.save(step, state, {"config": config_dict})

    logging.info("training %s, %d parameters", "resumed at step %d" % start_step if restored else "from scratch",
                 sum(x.size for x in jax.tree.leaves(state["train"].params)))
    last_eval, cp_gain = {}, None

    def one_step(step: int) -> dict:
        nonlocal state, last_eval, cp_gain
        key = size_key(agent.curriculum_size(step, cfg.stages()))
        demos = dict(state["demos"])
        if refreshes_demos(step, cfg):
            new, cp_gain = agent.cpsat_demonstrations(
                solver, state["train"].params, ppos[key], np.random.default_rng([cfg.seed, step]),
                cfg.cpsat_time_limit)
            demos[key] = jax.tree.map(jnp.asarray, new)
        if cfg.cpsat_instances:
            demos[key] = dict(demos[key], weight=jnp.asarray(
                agent.bc_weight(step, cfg.bc_boost, cfg.bc_boost_steps), jnp.float32))
        state = dict(state, demos=demos)
        state, step_metrics = train_step_for(key)(state)
        row = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            row.update({k: float(v) for k, v in step_metrics.items()}, size=key)
            if cp_gain is not None:
                row["cpsat_gain_pct"] = 100 * cp_gain
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_eval = evaluate(state["train"].params)
            row.update(last_eval)
        return row

    end = common.run_checkpointed_steps(
        start_step, cfg.steps, one_step, save=save, checkpointer=checkpointer,
        checkpoint_every=cfg.checkpoint_every, total_steps=cfg.steps, metrics=metrics,
        progress=common.Progress(cfg.steps, start_step), progress_keys=("train_makespan", "val_vs_spt_pct"))
    step, preempted, wall_s = end.step, end.preempted, end.wall_s
    summary = {"step": step, "preempted": preempted, "wall_time_s": wall_s,
               "resumed_from": start_step if restored else None, **last_eval}
    common.write_json_atomic(workdir / "summary.json", summary)
    common.plot_curves(workdir / "curves.png", metrics.rows, ("train_makespan", "val_makespan"),
                       f"JSSP policy, random instances ({', '.join(size_key(z) for z in sizes)}; validation "
                       f"{size_key(sizes[-1])})", ylabel="makespan")
    if cfg.export_dir and not preempted:
        threshold, by_threshold = agent.select_noop_threshold(model, state["train"].params, val_m, val_d)
        logging.info("greedy No-Op threshold %s (validation mean makespan per threshold: %s)", threshold,
                     by_threshold)
        agent.save_policy(cfg.export_dir, state["train"].params, pcfg,
                          {"greedy_noop_threshold": threshold, "validation_makespan_by_noop_threshold": by_threshold,
                           "trained_by": common.command_line("scripts.train_jssp", cfg,
                                                             skip=("workdir", "export_dir", "overwrite")),
                           "train_config": config_dict, "summary": summary})
        logging.info("exported the policy to %s", cfg.export_dir)
    logging.info("%s at step %d: %s", "preempted" if preempted else "done", step, json.dumps(summary))
    return summary


def _full_step(state, step_fn, key):
    new_train, metrics = step_fn(state["train"], state["demos"][key])
    return dict(state, train=new_train), metrics


def define_flags() -> None:
    common.define_common_flags()
    d = TrainJSSPConfig()
    flags.DEFINE_string("export_dir", d.export_dir, "Write the final policy here (policy.msgpack + policy.json).")
    flags.DEFINE_integer("steps", d.steps, "PPO iterations.")
    flags.DEFINE_integer("num_jobs", d.num_jobs, "Jobs of the random training instances.")
    flags.DEFINE_integer("num_machines", d.num_machines, "Machines of the random training instances.")
    flags.DEFINE_integer("batch", d.batch, "Instances (environments) per iteration.")
    flags.DEFINE_float("rollout_factor", d.rollout_factor, "Rollout length in units of J*M steps.")
    flags.DEFINE_integer("epochs", d.epochs, "PPO epochs per iteration.")
    flags.DEFINE_integer("minibatches", d.minibatches, "PPO minibatches per epoch.")
    flags.DEFINE_float("lr", d.lr, "Adam learning rate.")
    flags.DEFINE_float("ent_coef", d.ent_coef, "Entropy bonus.")
    flags.DEFINE_float("bc_coef", d.bc_coef, "Weight of the CP-SAT demonstration cross-entropy.")
    flags.DEFINE_integer("cpsat_every", d.cpsat_every, "Refresh the CP-SAT demonstrations every N steps.")
    flags.DEFINE_integer("cpsat_instances", d.cpsat_instances, "Demonstrations per refresh (0: no CP-SAT signal).")
    flags.DEFINE_float("cpsat_time_limit", d.cpsat_time_limit, "CP-SAT seconds per demonstration.")
    flags.DEFINE_float("bc_boost", d.bc_boost, "Initial multiplier of --bc_coef, decaying to 1 over --bc_boost_steps.")
    flags.DEFINE_integer("bc_boost_steps", d.bc_boost_steps,
                         "Boost phase: fresh CP-SAT demonstrations every step and a boosted imitation weight.")
    flags.DEFINE_string("curriculum", d.curriculum, "Sizes and the step each joins the round-robin mix, e.g. "
                        "10x10:0,15x15:200,20x15:400 (empty: --num_jobs x --num_machines only).")
    flags.DEFINE_bool("lr_decay", d.lr_decay, "Cosine-decay the learning rate to --lr_end_frac * --lr at --steps.")
    flags.DEFINE_float("lr_end_frac", d.lr_end_frac, "Final learning rate as a fraction of --lr (with --lr_decay).")
    flags.DEFINE_bool("normalise_reward", d.normalise_reward,
                      "Rescale rewards so that a return is the relative gap (LB_0 - C_max) / LB_0.")
    flags.DEFINE_integer("window", d.window, "Operations per job in the observation.")
    flags.DEFINE_integer("d_model", d.d_model, "Transformer width.")
    flags.DEFINE_integer("num_heads", d.num_heads, "Attention heads.")
    flags.DEFINE_integer("job_layers", d.job_layers, "Job-level transformer blocks.")
    flags.DEFINE_integer("mlp_dim", d.mlp_dim, "Feed-forward width.")
    flags.DEFINE_integer("eval_every", d.eval_every, "Validate the greedy policy every N steps.")
    flags.DEFINE_integer("eval_instances", d.eval_instances, "Validation instances.")
    flags.DEFINE_integer("log_every", d.log_every, "Log training metrics every N steps.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = common.config_from_flags(TrainJSSPConfig)
    common.quiet_library_logs()
    train(cfg)


if __name__ == "__main__":
    define_flags()
    app.run(main)
