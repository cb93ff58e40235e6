r"""Training the job-shop dispatching policy (:mod:`rl.jssp.ppo`, :mod:`models.jssp_policy`) on random
instances, with PPO and CP-SAT-improved demonstrations (``algorithm=ppo``, Tassel et al. ICAPS'23) or by
self-labelling (``algorithm=self_label``, :mod:`rl.jssp.self_label`, Corsini et al. ICML'24), optionally
starting from an exported policy (``init_from``): ``train(TrainJSSPConfig(...)) -> summary``.

Instances come from the families in ``distributions`` (one per step, in turn; see
``rl.jssp.instances.DISTRIBUTIONS``). Every ``eval_every`` steps the greedy policy is validated on fixed
instances of every family in ``val_distributions`` (:func:`validation_set`): its mean gap to a simple lower
bound, per family and overall, and its gap to the FDD/MWKR rule. The overall gap selects the model: the
parameters of the best validation so far are kept (checkpointed with the run) and are the ones exported.
Taillard's instances are never seen in training or selection.

A PPO step is one PPO iteration (``batch`` fresh instances of ``num_jobs`` x ``num_machines``, or of the size
``curriculum`` gives that step, one rollout, ``epochs`` x ``minibatches`` updates). Every ``cpsat_every``
steps of a size (every step during the first ``bc_boost_steps``) the greedy agent schedules
``cpsat_instances`` new instances of that size, CP-SAT (``cpsat_time_limit`` s, hinted with the agent's
schedule) improves them, and a behaviour-cloning term on the improved schedules joins the loss, with weight
``bc_coef`` times a boost that decays from ``bc_boost`` to 1 over the first ``bc_boost_steps``
(:func:`refreshes_demos`). The learning rate decays (cosine) to ``lr_end_frac`` of ``lr`` at ``steps`` when
``lr_decay``. A self-labelling step samples ``beta`` schedules of each of ``batch`` new instances and imitates
each instance's best (:func:`rl.jssp.self_label.make_self_label_step`). On export, the greedy No-Op threshold
(``inference.greedy_action``) of the best validation makespan is stored in policy.json. The shipped policy's
exact command is in rl/jssp/trained/policy.json.

Writes config.json, metrics.jsonl (and TensorBoard event files), curves.png, summary.json, Orbax checkpoints
(the training state and the current demonstrations; re-running resumes, SIGTERM checkpoints and exits 0) and,
with ``export_dir``, the final policy as policy.msgpack + policy.json.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from models.jssp_policy import PolicyConfig
from parallel import checkpoint as ckpt_lib
from rl.jssp import inference, instances, policy_io, rules, tuning
from rl.jssp import ppo as ppo_lib
from rl.jssp import self_label as self_label_lib
from training import run as run_lib
from training import config as config_lib
from training.config import group

ALGORITHMS = ("ppo", "self_label")

# Settings that may change on resumption (besides RunConfig's); ``steps`` only without ``lr_decay``;
# ``init_from`` is read only when a run starts (the same policy may have moved since).
RESUME_IGNORE = ("log_every", "export_dir", "steps", "init_from")


@dataclasses.dataclass(frozen=True)
class TrainJSSPConfig(run_lib.RunConfig):
    """The JSSP training run: PPO (``ppo``) on the policy network (``policy``), CP-SAT demonstrations, a
    size curriculum and periodic validation. ``num_jobs`` x ``num_machines`` is the training size without
    a ``curriculum``; ``lr_decay_steps`` follows from ``lr_decay`` and ``steps``.

    export_dir: Write the selected policy here (policy.msgpack + policy.json): the best validation's parameters.
    algorithm: ppo (PPO + CP-SAT demonstrations, Tassel et al.) or self_label (imitate the best of beta own
      samples, Corsini et al.).
    init_from: Start from this exported policy's parameters (a policy directory; same network shape).
    distributions: Training instance families, one per step in turn (rl.jssp.instances.DISTRIBUTIONS).
    val_distributions: Validation families (eval_instances each, of the last curriculum size); model
      selection uses their mean greedy gap to a simple lower bound.
    steps: Training iterations.
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
    algorithm: str = "ppo"
    init_from: str = ""
    distributions: str = "taillard"
    val_distributions: str = ",".join(instances.DISTRIBUTIONS)
    steps: int = 300
    curriculum: str = ""
    lr_decay: bool = False
    ppo: ppo_lib.PPOConfig = group(ppo_lib.PPOConfig, exclude=("lr_decay_steps",))
    cpsat_every: int = 5
    cpsat_time_limit: float = 0.5
    bc_boost: float = 1.0
    bc_boost_steps: int = 0
    self_label: self_label_lib.SelfLabelConfig = group(self_label_lib.SelfLabelConfig)
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
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
        instances.parse_distributions(self.distributions, "distributions")
        instances.parse_distributions(self.val_distributions, "val_distributions")
        if self.init_from:
            check_init_from(self.init_from, self.policy)
        # The learning-rate decay length follows from lr_decay and steps (not a setting of its own).
        object.__setattr__(self, "ppo", dataclasses.replace(self.ppo, lr_decay_steps=self.steps if self.lr_decay
                                                            else 0))
        self.stages()

    def stages(self) -> tuple[tuple[int, int, int], ...]:
        """The curriculum: (jobs, machines, first step) per size; by default one size from step 0."""
        return parse_curriculum(self.curriculum or f"{self.ppo.num_jobs}x{self.ppo.num_machines}:0")

    def ppo_config(self, size: tuple[int, int] | None = None) -> ppo_lib.PPOConfig:
        """The PPO settings of one curriculum size (default: the first)."""
        J, M = size or self.stages()[0][:2]
        return dataclasses.replace(self.ppo, num_jobs=J, num_machines=M)


# ----------------------------------------------------------------------------- size curriculum
# Tassel et al. train one size-agnostic network (L2D trains one per size): the instance size of each iteration
# comes from a mix that grows from small to larger sizes.
def parse_curriculum(spec: str) -> tuple[tuple[int, int, int], ...]:
    """``"10x10:0,15x15:200"`` -> ((10, 10, 0), (15, 15, 200)): each size joins the training mix after
    the given number of iterations; the first must start at 0 and the starts must increase."""
    stages = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        size, _, start = part.partition(":")
        dims = size.split("x")
        if len(dims) != 2 or not all(d.isdigit() and int(d) >= 1 for d in dims) or not start.isdigit():
            raise ValueError(f"curriculum={spec!r}: {part!r} is not JOBSxMACHINES:START_STEP (e.g. 15x15:200)")
        stages.append((int(dims[0]), int(dims[1]), int(start)))
    if not stages:
        raise ValueError(f"curriculum={spec!r} names no size")
    if stages[0][2] != 0 or any(b[2] <= a[2] for a, b in zip(stages, stages[1:])):
        raise ValueError(f"curriculum={spec!r}: the first size must start at 0 and the starts must increase")
    if len({s[:2] for s in stages}) != len(stages):
        raise ValueError(f"curriculum={spec!r} repeats a size")
    return tuple(stages)


def curriculum_size(step: int, stages: tuple[tuple[int, int, int], ...]) -> tuple[int, int]:
    """(jobs, machines) of iteration ``step`` (1-based): round robin over the sizes that have joined by
    then (a size with start ``s`` joins at iteration ``s + 1``), newest first from the latest join, so
    that each newly joined size trains on its first iteration."""
    active = [s for s in stages if s[2] < step]
    newest_first = active[::-1]
    return newest_first[(step - 1 - active[-1][2]) % len(active)][:2]


def check_init_from(directory: str, policy: PolicyConfig) -> None:
    """ValueError unless ``directory`` holds an exported policy whose network shape is ``policy``."""
    meta = pathlib.Path(directory).expanduser() / "policy.json"
    if not meta.is_file() or not (meta.parent / "policy.msgpack").is_file():
        raise ValueError(f"init_from={directory!r} is not a policy directory (policy.json + policy.msgpack)")
    try:
        theirs = json.loads(meta.read_text()).get("policy_config", {})
    except (ValueError, AttributeError) as e:  # not JSON, or not an object
        raise ValueError(f"init_from={directory!r}: its policy.json is not a policy description ({e})") from None
    ours = dataclasses.asdict(policy)
    differ = [f"{k}={theirs.get(k)!r} (this run: {ours[k]!r})" for k in ours if theirs.get(k) != ours[k]]
    if differ:
        raise ValueError(f"init_from={directory!r}: its network differs: {', '.join(differ)}")


def step_plan(step: int, cfg: TrainJSSPConfig) -> tuple[tuple[int, int], str]:
    """(size, family) of iteration ``step`` (1-based): the curriculum's size, the families in turn."""
    families = [d.name for d in instances.parse_distributions(cfg.distributions)]
    return curriculum_size(step, cfg.stages()), families[(step - 1) % len(families)]


def size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def refreshes_demos(step: int, cfg: TrainJSSPConfig) -> bool:
    """Whether iteration ``step`` (1-based) first replaces its size's CP-SAT demonstrations: on the size's
    first iteration, then every ``cpsat_every`` iterations of that size, and on every iteration of the
    boost phase (more demonstrations early, when imitation helps most)."""
    if not cfg.ppo.cpsat_instances or cfg.algorithm != "ppo":
        return False
    stages = cfg.stages()
    size = curriculum_size(step, stages)
    if step <= cfg.bc_boost_steps:
        return True
    uses = sum(curriculum_size(s, stages) == size for s in range(1, step))
    return uses % cfg.cpsat_every == 0


class Validation(NamedTuple):
    """Fixed validation instances, stacked over every family ([F * N, J, M]), with per-instance references."""
    families: tuple[str, ...]
    machines: jax.Array
    durations: jax.Array
    lower_bound: np.ndarray  # instances.simple_lower_bound
    fdd_mwkr: np.ndarray  # the FDD/MWKR rule's makespan

    def report(self, cmax: np.ndarray) -> dict:
        """Greedy makespans -> ``val_gap_lb_pct`` (the selection metric: mean over families of the mean gap
        to the lower bound), per family ``val_gap_lb_pct/<family>`` and ``val_vs_fdd_mwkr_pct/<family>``,
        and ``val_makespan`` (mean over all instances)."""
        gap = (cmax / self.lower_bound - 1).reshape(len(self.families), -1).mean(1)
        vs_rule = (cmax / self.fdd_mwkr - 1).reshape(len(self.families), -1).mean(1)
        out = {"val_makespan": float(cmax.mean()), "val_gap_lb_pct": float(100 * gap.mean()),
               "val_vs_fdd_mwkr_pct": float(100 * vs_rule.mean())}
        for name, g, r in zip(self.families, gap, vs_rule):
            out[f"val_gap_lb_pct/{name}"] = float(100 * g)
            out[f"val_vs_fdd_mwkr_pct/{name}"] = float(100 * r)
        return out


def validation_set(cfg: TrainJSSPConfig) -> Validation:
    """``eval_instances`` fixed instances of the largest (last) curriculum size from each of
    ``val_distributions`` (their own seeds, apart from training's), with lower bounds and FDD/MWKR makespans."""
    J, M = cfg.stages()[-1][:2]
    wanted = instances.parse_distributions(cfg.val_distributions, "val_distributions")
    # in DISTRIBUTIONS' order, each family's key from its place there (a family's instances do not depend on
    # which others are validated)
    chosen = [(i, d) for i, d in enumerate(instances.DISTRIBUTIONS.values()) if d in wanted]
    batches = [instances.generate_batch_jax(jax.random.PRNGKey(10_007 * (cfg.seed + 1) + i), cfg.eval_instances, J,
                                            M, dist) for i, dist in chosen]
    machines = jnp.concatenate([m for m, _ in batches])
    durations = jnp.concatenate([d for _, d in batches])
    lb = np.array([instances.simple_lower_bound(m, d) for m, d in zip(np.asarray(machines), np.asarray(durations))],
                  np.float64)
    rule = np.asarray(rules.solve_batch(machines, durations, "fdd_mwkr").job_ready).max(-1).astype(np.float64)
    return Validation(tuple(d.name for _, d in chosen), machines, durations, lb, rule)


def keep_best(best: dict, params, report: dict, step: int) -> dict:
    """Model selection: ``best`` (``params``, ``val_gap_lb_pct``, ``step``) replaced by a copy of ``params``
    when ``report``'s validation gap is strictly smaller (ties keep the earlier step)."""
    if not report["val_gap_lb_pct"] < float(best["val_gap_lb_pct"]):
        return best
    return {"params": jax.tree.map(jnp.copy, params), "val_gap_lb_pct": jnp.asarray(report["val_gap_lb_pct"],
                                                                                     jnp.float32),
            "step": jnp.asarray(step, jnp.int32)}


def initial_state(cfg: TrainJSSPConfig, model, optimizer) -> run_lib.TrainState:
    """The fresh training state; with ``init_from``, that policy's parameters and a fresh optimiser."""
    state = ppo_lib.init_state(model, optimizer, cfg.seed)
    if not cfg.init_from:
        return state
    try:
        _, params, _ = policy_io.load_policy(pathlib.Path(cfg.init_from).expanduser())
    except Exception as e:  # msgpack's errors have no common base; name the file instead of a traceback
        raise ValueError(f"init_from={cfg.init_from!r}: cannot read its policy.msgpack ({e})") from None
    params = jax.tree.map(jnp.asarray, params)
    return state.replace(params=params, opt_state=optimizer.init(params))


def train(cfg: TrainJSSPConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    workdir = run_lib.begin(cfg)
    pcfg = cfg.policy
    sizes = [s[:2] for s in cfg.stages()]
    ppos = {size_key(z): cfg.ppo_config(z) for z in sizes}
    model = policy_io.make_model(pcfg)
    optimizer = ppo_lib.make_optimizer(ppos[size_key(sizes[0])])
    first = initial_state(cfg, model, optimizer)
    state = {"train": first,
             "demos": {k: jax.tree.map(jnp.asarray, ppo_lib.empty_demos(p)) for k, p in ppos.items()},
             "best": {"params": jax.tree.map(jnp.copy, first.params), "val_gap_lb_pct": jnp.asarray(np.inf, jnp.float32),
                      "step": jnp.asarray(0, jnp.int32)}}
    run = run_lib.open_run(cfg, workdir, ckpt_lib.abstract_like(state),
                           resume_ignore=tuple(k for k in RESUME_IGNORE if not (cfg.lr_decay and k == "steps")))
    if run.restored is not None:
        state = run.restored.state
    start_step = run.start_step

    train_steps = {}  # one compiled step per (size, family), built when it first trains

    def train_step_for(key, family):
        if (key, family) not in train_steps:
            dist = instances.DISTRIBUTIONS[family]
            if cfg.algorithm == "self_label":
                fn = self_label_lib.make_self_label_step(model, optimizer, ppos[key], cfg.self_label, dist)
                full = lambda s, fn=fn: _self_label_step(s, fn)  # noqa: E731
            else:
                fn = ppo_lib.make_train_step(model, optimizer, ppos[key], dist)
                full = lambda s, fn=fn: _full_step(s, fn, key)  # noqa: E731
            train_steps[key, family] = ckpt_lib.DonationSafeStep(full, run.checkpointer,
                                                                 (ckpt_lib.abstract_like(state),))
        return train_steps[key, family]

    solver = inference.make_solver(model)
    sweep = tuning.make_threshold_sweep(model)
    val = validation_set(cfg)
    logging.info("validation: %d instances of %s; FDD/MWKR's gap to the lower bound %s", len(val.lower_bound),
                 ", ".join(val.families), {k: round(v, 2) for k, v in val.report(val.fdd_mwkr).items()
                                           if k.startswith("val_gap_lb_pct")})

    def evaluate(params) -> dict:
        """The validation report of the greedy policy at its best No-Op threshold (the one export ships)."""
        by_threshold = sweep(params, val.machines, val.durations)
        threshold, _ = tuning.best_noop_threshold(by_threshold)
        return dict(val.report(by_threshold[threshold]), val_noop_threshold=-1.0 if threshold is None else threshold)

    def save(step):
        return run.checkpointer.save(step, state, run.meta())

    logging.info("training (%s) %s, %d parameters", cfg.algorithm,
                 "resumed at step %d" % start_step if run.restored else f"from {cfg.init_from or 'scratch'}",
                 sum(x.size for x in jax.tree.leaves(state["train"].params)))
    last_eval, cp_gain = {}, None
    if run.restored is None:  # the starting point is a candidate too (step 0): training must beat it
        last_eval = evaluate(state["train"].params)
        state = dict(state, best=keep_best(state["best"], state["train"].params, last_eval, 0))
        run.metrics.write({"step": 0, **last_eval})
        logging.info("validation at step 0: gap %.2f %%", last_eval["val_gap_lb_pct"])

    def one_step(step: int) -> dict:
        nonlocal state, last_eval, cp_gain
        size, family = step_plan(step, cfg)
        key = size_key(size)
        demos = dict(state["demos"])
        if refreshes_demos(step, cfg):
            new, cp_gain = ppo_lib.cpsat_demonstrations(
                solver, state["train"].params, ppos[key], np.random.default_rng([cfg.seed, step]),
                cfg.cpsat_time_limit)
            demos[key] = jax.tree.map(jnp.asarray, new)
        if cfg.ppo.cpsat_instances and cfg.algorithm == "ppo":
            demos[key] = dict(demos[key], weight=jnp.asarray(
                ppo_lib.bc_weight(step, cfg.bc_boost, cfg.bc_boost_steps), jnp.float32))
        state = dict(state, demos=demos)
        state, step_metrics = train_step_for(key, family)(state)
        row = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            row.update({k: float(v) for k, v in step_metrics.items()}, size=key, family=family)
            if cp_gain is not None:
                row["cpsat_gain_pct"] = 100 * cp_gain
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_eval = evaluate(state["train"].params)
            state = dict(state, best=keep_best(state["best"], state["train"].params, last_eval, step))
            row.update(last_eval, best_step=int(state["best"]["step"]))
        return row

    end = run.loop(one_step, save, last_step=cfg.steps, total_steps=cfg.steps,
                   progress_keys=("train_makespan" if cfg.algorithm == "ppo" else "label_gap_lb_pct", "val_gap_lb_pct"))
    best_step = int(state["best"]["step"])
    summary = {"step": end.step, "preempted": end.preempted, "wall_time_s": end.wall_s,
               "resumed_from": run.resumed_from, **last_eval, "selected_step": best_step,
               "selected_val_gap_lb_pct": float(state["best"]["val_gap_lb_pct"])}
    title = (f"JSSP policy ({cfg.algorithm}), random instances ({', '.join(size_key(z) for z in sizes)}; "
             f"validation {size_key(sizes[-1])})")
    run.finish(summary, [("curves.png", ("label_gap_lb_pct", "sample_gap_lb_pct", "val_gap_lb_pct"), title,
                          "gap to the simple lower bound (%)")],
               done="preempted" if end.preempted else "done")
    if cfg.export_dir and not end.preempted:
        params = state["best"]["params"]
        threshold, by_threshold = tuning.best_noop_threshold(sweep(params, val.machines, val.durations))
        logging.info("exporting step %d (validation gap %.2f %%); greedy No-Op threshold %s (validation mean "
                     "makespan per threshold: %s)", best_step, summary["selected_val_gap_lb_pct"], threshold,
                     by_threshold)
        policy_io.save_policy(cfg.export_dir, params, pcfg,
                          {"greedy_noop_threshold": threshold, "validation_makespan_by_noop_threshold": by_threshold,
                           "trained_by": run_lib.command_line("scripts.train_jssp", cfg,
                                                              skip=("workdir", "export_dir", "overwrite")),
                           "train_config": config_lib.to_flat(cfg), "summary": summary})
        logging.info("exported the policy to %s", cfg.export_dir)
    return summary


def _full_step(state, step_fn, key):
    new_train, metrics = step_fn(state["train"], state["demos"][key])
    return dict(state, train=new_train), metrics


def _self_label_step(state, step_fn):
    new_train, metrics = step_fn(state["train"])
    return dict(state, train=new_train), metrics


def tour_step(workdir: pathlib.Path) -> dict:
    """Small-scale tour: 3 self-labelling steps from the shipped policy on 8x6 instances, validated on the
    five families; the validation gap at step 0 and at the selected (exported) step."""
    cfg = config_lib.from_flat(TrainJSSPConfig, dict(
        workdir=str(workdir), export_dir=str(pathlib.Path(workdir) / "export"), overwrite=True,
        algorithm="self_label", init_from=str(policy_io.TRAINED_DIR), curriculum="8x6:0", batch=2, beta=8,
        rollout_factor=2.0, epochs=1, minibatches=2, lr=3e-5, steps=3, eval_every=1, eval_instances=2, log_every=1))
    summary = train(cfg)
    rows = [r for r in run_lib.MetricsWriter.read(pathlib.Path(workdir) / "metrics.jsonl") if r.get("step") == 0]
    return {"val_gap_step0_pct": round(rows[0]["val_gap_lb_pct"], 2),
            "val_gap_selected_pct": round(summary["selected_val_gap_lb_pct"], 2),
            "selected_step": summary["selected_step"]}
