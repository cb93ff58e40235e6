r"""Training the job-shop dispatching policy (:mod:`rl.jssp.agent`, :mod:`models.jssp_policy`) with PPO and
CP-SAT-improved demonstrations on random Taillard-like instances: ``train(TrainJSSPConfig(...)) -> summary``.

Each step is one PPO iteration (``batch`` fresh instances of ``num_jobs`` x ``num_machines``, or of the size
``curriculum`` gives that step, one rollout, ``epochs`` x ``minibatches`` updates). Every ``cpsat_every``
steps of a size (every step during the first ``bc_boost_steps``) the greedy agent schedules
``cpsat_instances`` new instances of that size, CP-SAT (``cpsat_time_limit`` s, hinted with the agent's
schedule) improves them, and a behaviour-cloning term on the improved schedules joins the loss, with weight
``bc_coef`` times a boost that decays from ``bc_boost`` to 1 over the first ``bc_boost_steps``
(:func:`refreshes_demos`). The learning rate decays (cosine) to ``lr_end_frac`` of ``lr`` at ``steps`` when
``lr_decay``. Every ``eval_every`` steps the greedy policy is evaluated on fixed validation instances
(:func:`validation_set`) against SPT. On export, the greedy No-Op threshold (``agent.greedy_action``) of
the best validation makespan is stored in policy.json. The shipped policy's exact command is in
rl/jssp/trained/policy.json.

Writes config.json, metrics.jsonl, curves.png, summary.json, Orbax checkpoints (the training state and the
current demonstrations; re-running resumes, SIGTERM checkpoints and exits 0) and, with ``export_dir``, the
final policy as policy.msgpack + policy.json.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from models.jssp_policy import PolicyConfig
from parallel import checkpoint as ckpt_lib
from rl.jssp import agent, instances, rules
from training import run as run_lib
from training import config as config_lib
from training.config import group

# Settings that may change on resumption (besides RunConfig's); ``steps`` only without ``lr_decay``.
RESUME_IGNORE = ("log_every", "export_dir", "steps")


@dataclasses.dataclass(frozen=True)
class TrainJSSPConfig(run_lib.RunConfig):
    """The JSSP training run: PPO (``ppo``) on the policy network (``policy``), CP-SAT demonstrations, a
    size curriculum and periodic validation. ``num_jobs`` x ``num_machines`` is the training size without
    a ``curriculum``; ``lr_decay_steps`` follows from ``lr_decay`` and ``steps``.

    export_dir: Write the final policy here (policy.msgpack + policy.json).
    steps: PPO iterations.
    cpsat_every: Refresh the CP-SAT demonstrations every N steps.
    cpsat_time_limit: CP-SAT seconds per demonstration.
    bc_boost: Initial multiplier of bc_coef, decaying to 1 over bc_boost_steps.
    bc_boost_steps: Boost phase: fresh CP-SAT demonstrations every step and a boosted imitation weight.
    curriculum: Sizes and the step each joins the round-robin mix, e.g. 10x10:0,15x15:200,20x15:400
      (empty: num_jobs x num_machines only).
    lr_decay: Cosine-decay the learning rate to lr_end_frac * lr at steps.
    eval_every: Validate the greedy policy every N steps.
    eval_instances: Validation instances.
    log_every: Log training metrics every N steps.
    """
    checkpoint_every: int = 50
    export_dir: str = ""
    steps: int = 300
    curriculum: str = ""
    lr_decay: bool = False
    ppo: agent.PPOConfig = group(agent.PPOConfig, exclude=("lr_decay_steps",))
    cpsat_every: int = 5
    cpsat_time_limit: float = 0.5
    bc_boost: float = 1.0
    bc_boost_steps: int = 0
    policy: PolicyConfig = group(PolicyConfig)
    eval_every: int = 25
    eval_instances: int = 8
    log_every: int = 5

    def __post_init__(self):
        run_lib.RunConfig.__post_init__(self)
        run_lib.require_positive(self, "steps", "cpsat_every", "eval_every", "eval_instances", "log_every")
        if not self.cpsat_time_limit > 0:
            raise ValueError(f"cpsat_time_limit={self.cpsat_time_limit} must be > 0 seconds")
        if not self.bc_boost >= 1:
            raise ValueError(f"bc_boost={self.bc_boost} must be >= 1 (a multiplier of bc_coef)")
        run_lib.require_positive(self, "bc_boost_steps", allow_zero=("bc_boost_steps",))
        # The learning-rate decay length follows from lr_decay and steps (not a setting of its own).
        object.__setattr__(self, "ppo", dataclasses.replace(self.ppo, lr_decay_steps=self.steps if self.lr_decay
                                                            else 0))
        self.stages()

    def stages(self) -> tuple[tuple[int, int, int], ...]:
        """The curriculum: (jobs, machines, first step) per size; by default one size from step 0."""
        return agent.parse_curriculum(self.curriculum or f"{self.ppo.num_jobs}x{self.ppo.num_machines}:0")

    def ppo_config(self, size: tuple[int, int] | None = None) -> agent.PPOConfig:
        """The PPO settings of one curriculum size (default: the first)."""
        J, M = size or self.stages()[0][:2]
        return dataclasses.replace(self.ppo, num_jobs=J, num_machines=M)


def size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def refreshes_demos(step: int, cfg: TrainJSSPConfig) -> bool:
    """Whether iteration ``step`` (1-based) first replaces its size's CP-SAT demonstrations: on the size's
    first iteration, then every ``cpsat_every`` iterations of that size, and on every iteration of the
    boost phase (more demonstrations early, when imitation helps most)."""
    if not cfg.ppo.cpsat_instances:
        return False
    stages = cfg.stages()
    size = agent.curriculum_size(step, stages)
    if step <= cfg.bc_boost_steps:
        return True
    uses = sum(agent.curriculum_size(s, stages) == size for s in range(1, step))
    return uses % cfg.cpsat_every == 0


def validation_set(cfg: TrainJSSPConfig):
    """Fixed validation instances of the largest (last) curriculum size: (machines, durations, SPT makespans)."""
    rng = np.random.default_rng([cfg.seed, 12345])
    J, M = cfg.stages()[-1][:2]
    insts = [instances.random_instance(rng, J, M) for _ in range(cfg.eval_instances)]
    machines = jnp.asarray(np.stack([i.machines for i in insts]))
    durations = jnp.asarray(np.stack([i.durations for i in insts]))
    spt = np.asarray(rules.solve_batch(machines, durations, "spt").job_ready).max(-1)
    return machines, durations, spt


def train(cfg: TrainJSSPConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    workdir = run_lib.begin(cfg)
    pcfg = cfg.policy
    sizes = [s[:2] for s in cfg.stages()]
    ppos = {size_key(z): cfg.ppo_config(z) for z in sizes}
    model = agent.make_model(pcfg)
    optimizer = agent.make_optimizer(ppos[size_key(sizes[0])])
    state = {"train": agent.init_state(model, optimizer, cfg.seed),
             "demos": {k: jax.tree.map(jnp.asarray, agent.empty_demos(p)) for k, p in ppos.items()}}
    run = run_lib.open_run(cfg, workdir, ckpt_lib.abstract_like(state),
                           resume_ignore=tuple(k for k in RESUME_IGNORE if not (cfg.lr_decay and k == "steps")))
    if run.restored is not None:
        state = run.restored.state
    start_step = run.start_step

    train_steps = {}  # one compiled step per size, built when the size first trains

    def train_step_for(key):
        if key not in train_steps:
            step_fn = agent.make_train_step(model, optimizer, ppos[key])
            train_steps[key] = ckpt_lib.DonationSafeStep(
                lambda s, fn=step_fn: _full_step(s, fn, key), run.checkpointer, (ckpt_lib.abstract_like(state),))
        return train_steps[key]

    solver = agent.make_solver(model)
    greedy = agent.make_batch_greedy(model)
    val_m, val_d, val_spt = validation_set(cfg)

    def evaluate(params) -> dict:
        cmax = np.asarray(greedy(params, val_m, val_d).job_ready).max(-1)
        return {"val_makespan": float(cmax.mean()), "val_vs_spt_pct": float(100 * np.mean(cmax / val_spt - 1))}

    def save(step):
        return run.checkpointer.save(step, state, run.meta())

    logging.info("training %s, %d parameters", "resumed at step %d" % start_step if run.restored else "from scratch",
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
        if cfg.ppo.cpsat_instances:
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

    end = run.loop(one_step, save, last_step=cfg.steps, total_steps=cfg.steps,
                   progress_keys=("train_makespan", "val_vs_spt_pct"))
    summary = {"step": end.step, "preempted": end.preempted, "wall_time_s": end.wall_s,
               "resumed_from": run.resumed_from, **last_eval}
    title = (f"JSSP policy, random instances ({', '.join(size_key(z) for z in sizes)}; validation "
             f"{size_key(sizes[-1])})")
    run.finish(summary, [("curves.png", ("train_makespan", "val_makespan"), title, "makespan")],
               done="preempted" if end.preempted else "done")
    if cfg.export_dir and not end.preempted:
        threshold, by_threshold = agent.select_noop_threshold(model, state["train"].params, val_m, val_d)
        logging.info("greedy No-Op threshold %s (validation mean makespan per threshold: %s)", threshold,
                     by_threshold)
        agent.save_policy(cfg.export_dir, state["train"].params, pcfg,
                          {"greedy_noop_threshold": threshold, "validation_makespan_by_noop_threshold": by_threshold,
                           "trained_by": run_lib.command_line("scripts.train_jssp", cfg,
                                                              skip=("workdir", "export_dir", "overwrite")),
                           "train_config": config_lib.to_flat(cfg), "summary": summary})
        logging.info("exported the policy to %s", cfg.export_dir)
    return summary


def _full_step(state, step_fn, key):
    new_train, metrics = step_fn(state["train"], state["demos"][key])
    return dict(state, train=new_train), metrics
