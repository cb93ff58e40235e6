"""The Streaming DiLoCo experiment: the byte-level LM trained data-parallel, with DiLoCo or with Streaming
DiLoCo, counting every byte sent (Douillard et al. 2023, "DiLoCo"; Douillard et al. 2025, "Streaming
DiLoCo with overlapping communication").

All methods see the same tokens per inner step: the global batch is split over the ``workers x data``
mesh (each of the M workers gets batch_size/M rows, split again over its devices). The inner optimiser,
model and data are the LM experiment's (:mod:`training.lm`); the outer optimiser family is
:mod:`parallel.diloco`. ``train`` writes metrics every ``log_every`` steps (train loss, cumulative bytes
sent and the peak bytes of any one step per device, as ring-wire bytes between the M workers, over the whole
mesh, and as collective payload) and the validation loss of the global parameters every ``eval_every`` steps; checkpoints resume
at any inner step, also in the middle of an outer step or of a τ-delayed merge. :func:`compare` tabulates
finished runs against the data-parallel one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from models.transformer import DecoderLM
from parallel import checkpoint as ckpt_lib
from parallel import comm_sim, diloco
from parallel import mesh as mesh_lib
from training import lm
from training import run as run_lib
from training.link import timeline as link_timeline
from training.config import group


@dataclasses.dataclass(frozen=True)
class TrainDiLoCoConfig(run_lib.RunConfig, lm.LMSetup):
    """An LM experiment under the DiLoCo family (``steps`` counts inner steps: equal tokens per method).

    backend: shard_map (default) or pmap (one device per worker).
    stop_after: Stop (checkpointed, resumable) after this step; 0: run to steps.
    sync_dispatch: auto (a background thread issues the outer syncs where the workers span processes and
      overlap_tau >= 1, so they travel while the next inner steps compute), inline or thread.
    timeline: Write timeline.<process>.jsonl (training/link/timeline.py): each inner step's, sync's, evaluation's
      and save's start and end (monotonic seconds).
    """
    WARMUP_CAP = 60  # warmup_steps=-1 (auto): a tenth of steps, at most 60 (60 of the default 1,200)
    batch_size: int = 16
    steps: int = 1200
    eval_every: int = 200
    eval_batches: int = 10
    log_every: int = 20
    model: lm.TransformerConfig = group(lambda: lm.lm_model_config(num_layers=2), exclude=("vocab_size", "max_seq_len"))
    optim: lm.OptimConfig = group(lm.OptimConfig)
    diloco: diloco.DiLoCoConfig = group(lambda: diloco.DiLoCoConfig(inner_steps=60))
    backend: str = "shard_map"
    stop_after: int = 0
    sync_dispatch: str = "auto"
    timeline: bool = False

    def __post_init__(self):
        run_lib.RunConfig.__post_init__(self)
        lm.LMSetup.__post_init__(self)
        run_lib.require_positive(self, "stop_after", allow_zero=("stop_after",))
        if self.model.dropout or self.model.attention_dropout_rate:
            raise ValueError(f"dropout={self.model.dropout} / attention_dropout={self.model.attention_dropout}: "
                             "train_diloco's inner steps take no random key, so dropout must be 0")
        if self.backend not in diloco.BACKENDS:
            raise ValueError(f"backend={self.backend!r}; allowed: {', '.join(diloco.BACKENDS)}")
        if self.sync_dispatch not in diloco.SYNC_DISPATCH:
            raise ValueError(f"sync_dispatch={self.sync_dispatch!r}; allowed: {', '.join(diloco.SYNC_DISPATCH)}")
        d = self.diloco
        if d.algo == "streaming" and d.fragments > self.model.num_layers:
            raise ValueError(f"fragments={d.fragments} exceeds num_layers={self.model.num_layers} "
                             "(each fragment holds at least one transformer block)")
        if self.batch_size % d.workers:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of workers={d.workers}")


# Settings that may change on resumption (besides RunConfig's).
RESUME_IGNORE = ("log_every", "stop_after", "attention", "remat", "sync_dispatch", "timeline")


def _byte_row(counter: comm_sim.ByteCounter) -> dict:
    """``bytes_sent``/``peak_bytes``: between the M workers (the link every method is compared on);
    ``mesh_bytes_sent``/``mesh_peak_bytes``: over the whole mesh."""
    return {"bytes_sent": counter.cumulative_wire, "peak_bytes": counter.peak_wire,
            "mesh_bytes_sent": counter.cumulative_mesh_wire, "mesh_peak_bytes": counter.peak_mesh_wire,
            "payload_bytes": counter.cumulative_payload, "peak_payload_bytes": counter.peak_payload,
            "syncs": counter.syncs}


def mesh_for_eval(mesh):
    """Evaluation batches are split over every device (``workers`` x ``data``) as one data axis."""
    return jax.sharding.Mesh(mesh.devices.reshape(-1), ("data",))


def init_params(model: DecoderLM, seq_len: int, seed: int) -> dict:
    """Unboxed initial parameters (DiLoCo keeps its own replicas; no logical sharding)."""
    return jax.jit(lambda k: nn.unbox(model.init(k, np.zeros((1, seq_len), np.int32))["params"]))(
        jax.random.PRNGKey(seed))


def make_trainer(cfg: TrainDiLoCoConfig, model: DecoderLM, mesh, params, timeline=None) -> diloco.DiLoCo:
    """The DiLoCo trainer of ``cfg``: the LM's loss and inner optimiser, one fragment key per top-level
    parameter group; ``timeline(event)`` receives its step and sync intervals."""
    loss_fn = lambda p, b: lm.next_token_loss(model, p, b)  # noqa: E731
    optimizer = lm.make_optimizer(cfg.optim, cfg.steps, cfg.WARMUP_CAP)
    return diloco.DiLoCo(cfg.diloco, loss_fn, optimizer, mesh, list(params.keys()), backend=cfg.backend,
                         sync_dispatch=cfg.sync_dispatch, timeline=timeline)


def check_devices(cfg: TrainDiLoCoConfig) -> None:
    """``workers`` divides the devices and the batch splits over ``workers x data`` (ValueError if not)."""
    lm.for_platform(cfg.model)  # a dtype or attention kernel this platform lacks fails before any work
    mesh = diloco.make_worker_mesh(cfg.diloco.workers)
    mesh_lib.check_global_batch(cfg.batch_size, mesh, ("workers", "data"))


def train(cfg: TrainDiLoCoConfig) -> dict:
    """Runs (or resumes) one run; returns the summary written to summary.json."""
    workdir = run_lib.begin(cfg, preflight=check_devices)
    cfg = lm.with_platform_model(cfg).resolved()
    dcfg = cfg.diloco
    mesh = diloco.make_worker_mesh(dcfg.workers)
    corpus, eval_data = lm.load_data(cfg, cfg.seed)

    model = DecoderLM(cfg.model)
    params = init_params(model, cfg.seq_len, cfg.seed)
    timeline = (link_timeline.TimelineWriter.for_run(workdir, jax.process_index()) if cfg.timeline else None)
    trainer = make_trainer(cfg, model, mesh, params, None if timeline is None else (
        lambda e: timeline.record(e["kind"], e["start"], e["end"], step=e["step"], fragment=e.get("fragment"))))
    span = timeline.span if timeline is not None else (lambda kind, **fields: contextlib.nullcontext())
    shapes = trainer.fragment_shapes(params)
    state = trainer.init(params)
    run = run_lib.open_run(cfg, workdir, ckpt_lib.abstract_like(state), resume_ignore=RESUME_IGNORE)
    counter = comm_sim.ByteCounter()
    if run.restored is not None:
        state = run.restored.state
        counter = comm_sim.ByteCounter.from_dict(run.restored.meta["bytes"])
    eval_loss = jax.jit(lambda p, b: lm.next_token_loss(model, p, b))
    n_params = sum(x.size for x in jax.tree.leaves(params))

    def save(step):
        nonlocal state
        with span("save", step=step):
            state = trainer.settle(state)  # a sync in flight is part of the state
            meta = run.meta(data={"seed": cfg.seed, "position": step}, bytes=counter.as_dict())
            return run.checkpointer.save(step, state, meta)

    logging.info("%s %s, M=%d, H=%d, P=%d, tau=%d, %s outer gradients, mesh %s, %d parameters, fragments %s",
                 "resumed at step %d:" % run.start_step if run.restored else "from scratch:", dcfg.algo,
                 dcfg.workers, dcfg.inner_steps, dcfg.num_fragments, dcfg.tau, dcfg.outer_precision,
                 dict(mesh.shape), n_params, [len(f) for f in trainer.fragments])
    last_eval: dict = {}

    def one_step(step: int) -> dict:
        nonlocal state, last_eval
        host_batch = lm.local_rows(lm.text.train_batch(corpus.train, cfg.seed, step - 1, cfg.batch_size,
                                                       cfg.seq_len), cfg.batch_size)
        batch = mesh_lib.shard_batch(host_batch, mesh, ("workers", "data"))
        donate = not run.checkpointer.take_donation_barrier()
        state, losses = trainer.step(state, batch, step, donate=donate)
        counter.add_step(trainer.step_bytes(step, shapes), syncs=len(trainer.events(step)[0]))
        row = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            # no device collective while a sync may be in flight in the sync thread
            row.update(loss=mesh_lib.host_mean(losses, f"jaxsys/diloco/loss/{step}"), **_byte_row(counter))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with span("eval", step=step):
                state = trainer.settle(state)
                last_eval = lm.evaluate(eval_loss, trainer.eval_params(state), eval_data, mesh_for_eval(mesh))
            row.update(last_eval)
        return row

    last_step = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    try:
        end = run.loop(one_step, save, last_step=last_step, total_steps=cfg.steps,
                       progress_keys=("loss", "val_loss"),
                       rate_column=False)  # metrics rows stay identical between a straight and a resumed run
    finally:
        trainer.close()
        if timeline is not None:
            timeline.close()
    preempted = end.preempted or end.step < cfg.steps
    summary = {"step": end.step, "preempted": preempted, "wall_time_s": end.wall_s, "algo": dcfg.algo,
               "workers": dcfg.workers, "inner_steps": dcfg.inner_steps if dcfg.algo != "dp" else 1,
               "fragments": dcfg.num_fragments, "overlap_tau": dcfg.tau, "alpha": dcfg.merge_alpha,
               "outer_precision": dcfg.outer_precision, "num_params": n_params, "resumed_from": run.resumed_from,
               **_byte_row(counter), **last_eval}
    title = f"{dcfg.algo} M={dcfg.workers} on {corpus.name}"
    return run.finish(summary, [("loss_curve.png", ("loss", "val_loss"), title, "nats / byte"),
                                ("bytes_curve.png", ("bytes_sent",), title, "bytes sent / device")],
                      done="stopped, checkpointed" if preempted else "done")


# ----------------------------------------------------------------------------- comparison
def dp_bytes_between(dp_summary: dict, workers: int) -> tuple[float, float]:
    """(cumulative, peak) bytes a data-parallel run sends between ``workers`` worker groups: its gradients'
    hierarchical all-reduce moves 2 (M-1)/M of their bytes across that link each step (exact: the DP
    payload is the same every step)."""
    return (comm_sim.wire_bytes(dp_summary["payload_bytes"], "all-reduce", workers),
            comm_sim.wire_bytes(dp_summary["peak_payload_bytes"], "all-reduce", workers))


def comparison_table(runs: list[tuple[str, dict]]) -> list[dict]:
    """Rows of (name, summary) runs with ratios to the data-parallel run among them: validation loss, bytes
    and peak bytes of one step between the M workers (DP counted between the same M groups as each row),
    and bytes over the whole mesh."""
    base = next((s for _, s in runs if s["algo"] == "dp"), None)
    table = []
    for name, s in runs:
        row = {"run": name, "algo": s["algo"], "M": s["workers"], "H": s["inner_steps"], "P": s["fragments"],
               "tau": s["overlap_tau"], "precision": s["outer_precision"], "steps": s["step"],
               "val_loss": s.get("val_loss"), "bytes_sent": s["bytes_sent"], "peak_bytes": s["peak_bytes"],
               "mesh_bytes_sent": s.get("mesh_bytes_sent")}
        if base is not None:
            dp_sent, dp_peak = dp_bytes_between(base, s["workers"])
            ratio = lambda a, b: a / b if b else math.inf  # noqa: E731
            row["val_loss_ratio_to_dp"] = s["val_loss"] / base["val_loss"]
            row["bytes_reduction_vs_dp"] = ratio(dp_sent, s["bytes_sent"])
            row["peak_reduction_vs_dp"] = ratio(dp_peak, s["peak_bytes"])
            if s.get("mesh_bytes_sent") is not None and base.get("mesh_bytes_sent") is not None:
                row["mesh_bytes_reduction_vs_dp"] = ratio(base["mesh_bytes_sent"], s["mesh_bytes_sent"])
        table.append(row)
    return table


def markdown_table(table: list[dict]) -> str:
    cols = list(dict.fromkeys(c for row in table for c in row))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in table]
    return "\n".join(lines) + "\n"


def compare(run_dirs: list[str], out_dir: pathlib.Path) -> list[dict]:
    """Comparison table of finished runs (:func:`comparison_table`), written as comparison.json/.md/_loss.png."""
    runs = []
    for d in run_dirs:
        path = pathlib.Path(d).expanduser()
        if not (path / "summary.json").exists():
            raise ValueError(f"compare: {str(path)!r} has no summary.json (not a finished train_diloco run)")
        runs.append((path, json.loads((path / "summary.json").read_text()),
                     run_lib.MetricsWriter.read(path / "metrics.jsonl")))
    table = comparison_table([(path.name, s) for path, s, _ in runs])
    run_lib.write_json_atomic(out_dir / "comparison.json", table)
    text = markdown_table(table)
    (out_dir / "comparison.md").write_text(text)
    _plot_runs(out_dir / "comparison_loss.png", runs)
    print(text, end="")
    return table


def byte_budget(cfg: TrainDiLoCoConfig, steps: int | None = None) -> dict:
    """The byte columns of a run's summary (``bytes_sent``, ``mesh_bytes_sent``, peaks, payload, syncs)
    computed without training: the accounting depends only on the settings, the parameter shapes and the
    mesh. ``steps`` defaults to ``cfg.steps``."""
    model = DecoderLM(cfg.model)
    shapes_tree = jax.eval_shape(lambda: init_params(model, cfg.seq_len, cfg.seed))
    trainer = make_trainer(cfg, model, diloco.make_worker_mesh(cfg.diloco.workers), shapes_tree)
    shapes = trainer.fragment_shapes(shapes_tree)
    counter = comm_sim.ByteCounter()
    for step in range(1, (cfg.steps if steps is None else steps) + 1):
        counter.add_step(trainer.step_bytes(step, shapes), syncs=len(trainer.events(step)[0]))
    return _byte_row(counter)


def _plot_runs(path, runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run_path, _, rows in runs:
        for ax, key in zip(axes, ("loss", "val_loss")):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=run_path.name)
    for ax, key in zip(axes, ("train loss", "validation loss")):
        ax.set_xlabel("inner step")
        ax.set_ylabel(f"{key} (nats/byte)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- tour
def tour_step(workdir: pathlib.Path) -> dict:
    """DP vs Streaming DiLoCo (M=2, H=20, P=2, τ=1, fp4) on a tiny LM, 200 inner steps each (< 60 s)."""
    small = dict(steps=200, model=lm.lm_model_config(num_layers=2, d_model=64, mlp_dim=176), seq_len=32, batch_size=16,
                 optim=lm.OptimConfig(warmup_steps=20), eval_every=100, eval_batches=4, log_every=20,
                 checkpoint_every=100, overwrite=True)
    dp = train(TrainDiLoCoConfig(workdir=str(workdir / "dp"), diloco=diloco.DiLoCoConfig(algo="dp", workers=2,
                                                                                        inner_steps=60), **small))
    sd = train(TrainDiLoCoConfig(workdir=str(workdir / "streaming"), diloco=diloco.DiLoCoConfig(
        algo="streaming", workers=2, inner_steps=20, fragments=2, overlap_tau=1, alpha=0.5, outer_precision="fp4"),
        **small))
    row = comparison_table([("streaming", sd), ("dp", dp)])[0]
    return {"dp_val_loss": round(dp["val_loss"], 4), "streaming_val_loss": round(sd["val_loss"], 4),
            "val_loss_ratio": round(row["val_loss_ratio_to_dp"], 4),
            "bytes_reduction_vs_dp": round(row["bytes_reduction_vs_dp"], 1),
            "peak_reduction_vs_dp": round(row["peak_reduction_vs_dp"], 1),
            "mesh_bytes_reduction_vs_dp": round(row["mesh_bytes_reduction_vs_dp"], 1)}
