r"""Trains the job-shop dispatching policy (rl/jssp/agent.py, models/jssp_policy.py) with PPO and CP-SAT-
improved demonstrations on random Taillard-like instances.

    python -m scripts.train_jssp --workdir=/tmp/jssp --steps=300
    python -m scripts.train_jssp --workdir=/tmp/jssp --steps=300 --export_dir=rl/jssp/trained   # the shipped policy

Each step is one PPO iteration (``--batch`` fresh instances of ``--num_jobs`` x ``--num_machines``, one
rollout, ``--epochs`` x ``--minibatches`` updates). Every ``--cpsat_every`` steps the greedy agent
schedules ``--cpsat_instances`` new instances, CP-SAT (``--cpsat_time_limit`` s, hinted with the agent's
schedule) improves them, and a behaviour-cloning term on the improved schedules joins the loss.
Every ``--eval_every`` steps the greedy policy is evaluated on fixed validation instances against SPT.
Writes config.json, metrics.jsonl, curves.png, summary.json, Orbax checkpoints (the training state and
the current demonstrations; re-running resumes, SIGTERM checkpoints and exits 0) and, with
``--export_dir``, the final policy as policy.msgpack + policy.json.
"""
from __future__ import annotations

import dataclasses
import json
import time

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
        self.ppo_config()
        self.policy_config()

    def ppo_config(self) -> agent.PPOConfig:
        return agent.PPOConfig(num_jobs=self.num_jobs, num_machines=self.num_machines, batch=self.batch,
                               rollout_factor=self.rollout_factor, epochs=self.epochs, minibatches=self.minibatches,
                               lr=self.lr, ent_coef=self.ent_coef, bc_coef=self.bc_coef,
                               cpsat_instances=self.cpsat_instances)

    def policy_config(self) -> PolicyConfig:
        try:
            return PolicyConfig(window=self.window, d_model=self.d_model, num_heads=self.num_heads,
                                job_layers=self.job_layers, mlp_dim=self.mlp_dim)
        except ValueError as e:
            raise ValueError(f"model flags: {e}") from None


def validation_set(cfg: TrainJSSPConfig):
    rng = np.random.default_rng([cfg.seed, 12345])
    insts = [instances.random_instance(rng, cfg.num_jobs, cfg.num_machines) for _ in range(cfg.eval_instances)]
    machines = jnp.asarray(np.stack([i.machines for i in insts]))
    durations = jnp.asarray(np.stack([i.durations for i in insts]))
    spt = np.asarray(rules.solve_batch(machines, durations, "spt").job_ready).max(-1)
    return machines, durations, spt


def train(cfg: TrainJSSPConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    common.maybe_initialize_distributed(cfg.multihost)
    workdir = common.require_workdir(cfg.workdir)
    ppo, pcfg = cfg.ppo_config(), cfg.policy_config()
    model = agent.make_model(pcfg)
    optimizer = agent.make_optimizer(ppo)
    state = {"train": agent.init_state(model, optimizer, cfg.seed),
             "demos": jax.tree.map(jnp.asarray, agent.empty_demos(ppo))}
    config_dict = dataclasses.asdict(cfg)
    checkpointer, restored = ckpt_lib.open_for_run(
        workdir / "checkpoints", config_dict, ckpt_lib.abstract_like(state), keep=cfg.keep_checkpoints,
        mode=cfg.checkpoint_mode, overwrite=cfg.overwrite, resume_ignore=RESUME_IGNORE)
    start_step = 0
    if restored is not None:
        state, start_step = restored.state, restored.step
    common.write_json_atomic(workdir / "config.json", config_dict)
    metrics = common.MetricsWriter(workdir / "metrics.jsonl", resume_step=start_step if restored else None)

    step_fn = agent.make_train_step(model, optimizer, ppo)
    train_step = ckpt_lib.DonationSafeStep(lambda s: _full_step(s, step_fn), checkpointer,
                                           (ckpt_lib.abstract_like(state),))
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
    progress = common.Progress(cfg.steps, start_step)
    wall_start = time.perf_counter()
    preempted, last_saved, step, last_eval, cp_gain = False, start_step, start_step, {}, None
    with ckpt_lib.PreemptionGuard() as guard:
        for step in range(start_step + 1, cfg.steps + 1):
            if cfg.cpsat_instances and (step - 1) % cfg.cpsat_every == 0:
                demos, cp_gain = agent.cpsat_demonstrations(
                    solver, state["train"].params, ppo, np.random.default_rng([cfg.seed, step]),
                    cfg.cpsat_time_limit)
                state = dict(state, demos=jax.tree.map(jnp.asarray, demos))
            state, step_metrics = train_step(state)
            row = {}
            if step % cfg.log_every == 0 or step == cfg.steps:
                row.update({k: float(v) for k, v in step_metrics.items()})
                if cp_gain is not None:
                    row["cpsat_gain_pct"] = 100 * cp_gain
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last_eval = evaluate(state["train"].params)
                row.update(last_eval)
            if row:
                metrics.write({"step": step, **row, "steps_per_sec": progress.steps_per_sec(step)})
                progress.update(step, **{k: row[k] for k in ("train_makespan", "val_vs_spt_pct") if k in row})
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save(step)
                last_saved = step
            if guard.requested or checkpointer.reached_preemption(step):
                preempted = True
                break
        if step != last_saved:
            save(step)
        checkpointer.close()
    wall_s = time.perf_counter() - wall_start
    summary = {"step": step, "preempted": preempted, "wall_time_s": wall_s,
               "resumed_from": start_step if restored else None, **last_eval}
    common.write_json_atomic(workdir / "summary.json", summary)
    common.plot_curves(workdir / "curves.png", metrics.rows, ("train_makespan", "val_makespan"),
                       f"JSSP policy, {cfg.num_jobs}x{cfg.num_machines} random instances", ylabel="makespan")
    if cfg.export_dir and not preempted:
        agent.save_policy(cfg.export_dir, state["train"].params, pcfg,
                          {"trained_by": "python -m scripts.train_jssp " + " ".join(
                              f"--{k}={v}" for k, v in config_dict.items()
                              if k not in ("workdir", "export_dir", "overwrite") and v != getattr(
                                  TrainJSSPConfig(), k)),
                           "train_config": config_dict, "summary": summary})
        logging.info("exported the policy to %s", cfg.export_dir)
    logging.info("%s at step %d: %s", "preempted" if preempted else "done", step, json.dumps(summary))
    return summary


def _full_step(state, step_fn):
    new_train, metrics = step_fn(state["train"], state["demos"])
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
