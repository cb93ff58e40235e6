r"""Trains the byte-level LM with data-parallel, DiLoCo or Streaming DiLoCo, counting every byte sent.

    python -m scripts.train_diloco --workdir=/tmp/dp --algo=dp --workers=2 --steps=1200
    python -m scripts.train_diloco --workdir=/tmp/sd --algo=streaming --workers=2 --inner_steps=60 \
        --fragments=2 --overlap_tau=1 --alpha=0.5 --outer_precision=fp4 --steps=1200
    python -m scripts.train_diloco --workdir=/tmp/cmp --compare=/tmp/dp,/tmp/sd   # table + plots

All methods see the same tokens per inner step: the global batch (--batch_size) is split over the
``workers x data`` mesh (each of the --workers workers gets batch_size/workers rows, split again over
its devices). The inner optimiser, model and data come from scripts/train_lm.py (AdamW, warm-up +
cosine, nanoGPT defaults); the outer optimiser family is parallel/diloco.py.

Writes config.json, metrics.jsonl (every --log_every steps: step, train loss, cumulative bytes sent
and the peak bytes of any one step so far, per device across workers, as ring-wire bytes and as
collective payload; every --eval_every steps the validation loss of the global parameters),
loss_curve.png, bytes_curve.png, summary.json and Orbax checkpoints (resumable at any inner step, also
in the middle of an outer step or of a τ-delayed merge). ``--compare=DIR,DIR,...`` instead writes
comparison.json / comparison.md (validation loss, bytes, peak bytes, ratios to the DP run) and
comparison_loss.png for finished runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags, logging

from algoperf.data import text
from models.transformer import DecoderLM
from parallel import checkpoint as ckpt_lib
from parallel import comm_sim, diloco
from parallel import mesh as mesh_lib
from scripts import common
from scripts import train_lm

RESUME_IGNORE = common.RUN_RESUME_IGNORE + ("log_every", "stop_after", "compare")
DILOCO_FIELDS = tuple(f.name for f in dataclasses.fields(diloco.DiLoCoConfig))
LM_FIELDS = ("seed", "data_dir", "batch_size", "seq_len", "steps", "lr", "min_lr", "warmup_steps", "weight_decay",
             "beta2", "grad_clip", "num_layers", "num_heads", "d_model", "mlp_dim", "tie_embeddings")


@dataclasses.dataclass(frozen=True)
class TrainDiLoCoConfig(common.RunConfig):
    data_dir: str = ""
    batch_size: int = 16
    seq_len: int = 64
    steps: int = 1200
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 60
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    num_layers: int = 2
    num_heads: int = 4
    d_model: int = 128
    mlp_dim: int = 352
    tie_embeddings: bool = True
    eval_every: int = 200
    eval_batches: int = 10
    log_every: int = 20
    algo: str = "streaming"
    workers: int = 2
    inner_steps: int = 60
    fragments: int = 1
    fragment_pattern: str = "strided"
    overlap_tau: int = 0
    alpha: float = 0.5
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    outer_precision: str = "fp32"
    fp4_format: str = "e3m0"
    quant_scale: str = "tensor"
    backend: str = "shard_map"
    stop_after: int = 0
    compare: str = ""

    def __post_init__(self):
        super().__post_init__()
        if self.compare:
            return
        self.lm_config()  # validates the LM / inner-optimiser flags
        self.diloco_config()  # validates the outer-optimiser flags (H vs P, τ, α, precision)
        common.require_positive(self, "eval_every", "eval_batches", "log_every", "stop_after",
                                allow_zero=("stop_after",))
        if self.backend not in diloco.BACKENDS:
            raise ValueError(f"--backend={self.backend!r}; allowed: {', '.join(diloco.BACKENDS)}")
        if self.algo == "streaming" and self.fragments > self.num_layers:
            raise ValueError(f"--fragments={self.fragments} exceeds --num_layers={self.num_layers} "
                             "(each fragment holds at least one transformer block)")
        if self.batch_size % self.workers:
            raise ValueError(f"--batch_size={self.batch_size} must be a multiple of --workers={self.workers}")

    def lm_config(self) -> train_lm.TrainLMConfig:
        return train_lm.TrainLMConfig(**{k: getattr(self, k) for k in LM_FIELDS})

    def diloco_config(self) -> diloco.DiLoCoConfig:
        return diloco.DiLoCoConfig(**{k: getattr(self, k) for k in DILOCO_FIELDS})


def _byte_row(counter: comm_sim.ByteCounter) -> dict:
    return {"bytes_sent": counter.cumulative_wire, "peak_bytes": counter.peak_wire,
            "payload_bytes": counter.cumulative_payload, "peak_payload_bytes": counter.peak_payload,
            "syncs": counter.syncs}


def train(cfg: TrainDiLoCoConfig) -> dict:
    """Runs (or resumes) one run; returns the summary written to summary.json."""
    common.maybe_initialize_distributed(cfg.multihost)
    dcfg = diloco.DiLoCoConfig(**{k: getattr(cfg, k) for k in DILOCO_FIELDS})
    mesh = diloco.make_worker_mesh(cfg.workers)  # ValueError unless --workers divides the devices
    mesh_lib.check_global_batch(cfg.batch_size, mesh, ("workers", "data"))
    workdir = common.require_workdir(cfg.workdir)
    lm_cfg = cfg.lm_config()
    corpus = text.load_corpus(cfg.data_dir or None, min_split_len=cfg.seq_len + 1)
    eval_data = text.eval_batches(corpus.validation, cfg.eval_batches, cfg.batch_size, cfg.seq_len, seed=cfg.seed)

    model = DecoderLM(lm_cfg.model_config())
    loss_fn = lambda p, b: train_lm.next_token_loss(model, p, b)  # noqa: E731
    trainer = diloco.DiLoCo(dcfg, loss_fn, train_lm.make_optimizer(lm_cfg), mesh,
                            _param_keys(model, cfg), backend=cfg.backend)
    params = jax.jit(lambda k: nn.unbox(model.init(k, np.zeros((1, cfg.seq_len), np.int32))["params"]))(
        jax.random.PRNGKey(cfg.seed))
    shapes = trainer.fragment_shapes(params)
    state = trainer.init(params)
    config_dict = dataclasses.asdict(cfg)
    checkpointer, restored = ckpt_lib.open_for_run(
        workdir / "checkpoints", config_dict, ckpt_lib.abstract_like(state),
        keep=cfg.keep_checkpoints, mode=cfg.checkpoint_mode, overwrite=cfg.overwrite, resume_ignore=RESUME_IGNORE)
    counter, start_step = comm_sim.ByteCounter(), 0
    if restored is not None:
        state, start_step = restored.state, restored.step
        counter = comm_sim.ByteCounter.from_dict(restored.meta["bytes"])
    if jax.process_index() == 0:
        common.write_json_atomic(workdir / "config.json", config_dict)
    metrics = common.MetricsWriter(workdir / "metrics.jsonl", resume_step=start_step if restored else None,
                                   enabled=jax.process_index() == 0)
    eval_loss = jax.jit(loss_fn)
    n_params = sum(x.size for x in jax.tree.leaves(params))

    def save(step):
        meta = {"config": config_dict, "data": {"seed": cfg.seed, "position": step}, "bytes": counter.as_dict()}
        return checkpointer.save(step, state, meta)

    logging.info("%s %s, M=%d, H=%d, P=%d, tau=%d, %s outer gradients, mesh %s, %d parameters, fragments %s",
                 "resumed at step %d:" % start_step if restored else "from scratch:", cfg.algo, cfg.workers,
                 cfg.inner_steps, dcfg.num_fragments, dcfg.tau, cfg.outer_precision, dict(mesh.shape), n_params,
                 [len(f) for f in trainer.fragments])
    last_eval: dict = {}

    def one_step(step: int) -> dict:
        nonlocal state, last_eval
        batch = mesh_lib.shard_batch(
            text.train_batch(corpus.train, cfg.seed, step - 1, cfg.batch_size, cfg.seq_len), mesh,
            ("workers", "data"))
        donate = not checkpointer.take_donation_barrier()
        state, losses = trainer.step(state, batch, step, donate=donate)
        payload, wire = trainer.step_bytes(step, shapes)
        counter.add_step(payload, wire, syncs=len(trainer.events(step)[0]))
        row = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            row.update(loss=float(np.mean(np.asarray(losses))), **_byte_row(counter))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_eval = train_lm.evaluate(eval_loss, trainer.eval_params(state), eval_data, mesh_for_eval(mesh))
            row.update(last_eval)
        return row

    last_step = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    end = common.run_checkpointed_steps(
        start_step, last_step, one_step, save=save, checkpointer=checkpointer,
        checkpoint_every=cfg.checkpoint_every, total_steps=cfg.steps, metrics=metrics,
        progress=common.Progress(cfg.steps, start_step), progress_keys=("loss", "val_loss"),
        rate_column=False)  # metrics rows stay identical between a straight and a resumed run
    step, preempted, wall_s = end.step, end.preempted or end.step < cfg.steps, end.wall_s
    summary = {"step": step, "preempted": preempted, "wall_time_s": wall_s, "algo": cfg.algo,
               "workers": cfg.workers, "inner_steps": cfg.inner_steps if cfg.algo != "dp" else 1,
               "fragments": dcfg.num_fragments,
               "overlap_tau": dcfg.tau, "alpha": dcfg.merge_alpha, "outer_precision": cfg.outer_precision,
               "num_params": n_params, "resumed_from": start_step if restored else None,
               **_byte_row(counter), **last_eval}
    if jax.process_index() == 0:
        common.write_json_atomic(workdir / "summary.json", summary)
        title = f"{cfg.algo} M={cfg.workers} on {corpus.name}"
        common.plot_curves(workdir / "loss_curve.png", metrics.rows, ("loss", "val_loss"), title, "nats / byte")
        common.plot_curves(workdir / "bytes_curve.png", metrics.rows, ("bytes_sent",), title, "bytes sent / device")
    logging.info("%s at step %d: %s", "stopped, checkpointed" if preempted else "done", step,
                 json.dumps({k: v for k, v in summary.items() if k != "step"}))
    return summary


def mesh_for_eval(mesh):
    """Evaluation batches are split over every device (``workers`` x ``data``) as one data axis."""
    return jax.sharding.Mesh(mesh.devices.reshape(-1), ("data",))


def _param_keys(model, cfg) -> list[str]:
    shapes = jax.eval_shape(lambda k: model.init(k, np.zeros((1, cfg.seq_len), np.int32))["params"],
                            jax.random.PRNGKey(0))
    return list(shapes.keys())


# ----------------------------------------------------------------------------- comparison
def compare(run_dirs: list[str], out_dir: pathlib.Path) -> list[dict]:
    """Comparison table of finished runs: final validation loss, bytes, peak bytes and ratios to DP."""
    runs = []
    for d in run_dirs:
        path = pathlib.Path(d).expanduser()
        if not (path / "summary.json").exists():
            raise ValueError(f"--compare: {str(path)!r} has no summary.json (not a finished train_diloco run)")
        runs.append((path, json.loads((path / "summary.json").read_text()),
                     common.MetricsWriter.read(path / "metrics.jsonl")))
    baselines = [s for _, s, _ in runs if s["algo"] == "dp"]
    base = baselines[0] if baselines else None
    table = []
    for path, s, _ in runs:
        row = {"run": path.name, "algo": s["algo"], "M": s["workers"], "H": s["inner_steps"], "P": s["fragments"],
               "tau": s["overlap_tau"], "precision": s["outer_precision"], "steps": s["step"],
               "val_loss": s.get("val_loss"), "bytes_sent": s["bytes_sent"], "peak_bytes": s["peak_bytes"]}
        if base is not None:
            row["val_loss_ratio_to_dp"] = s["val_loss"] / base["val_loss"]
            row["bytes_reduction_vs_dp"] = base["bytes_sent"] / s["bytes_sent"] if s["bytes_sent"] else math.inf
            row["peak_reduction_vs_dp"] = base["peak_bytes"] / s["peak_bytes"] if s["peak_bytes"] else math.inf
        table.append(row)
    common.write_json_atomic(out_dir / "comparison.json", table)
    cols = list(table[0].keys())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in table]
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n")
    _plot_runs(out_dir / "comparison_loss.png", runs)
    print("\n".join(lines))
    return table


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
    small = dict(steps=200, num_layers=2, d_model=64, mlp_dim=176, seq_len=32, batch_size=16, warmup_steps=20,
                 eval_every=100, eval_batches=4, log_every=20, checkpoint_every=100, overwrite=True, workers=2)
    dp = train(TrainDiLoCoConfig(workdir=str(workdir / "dp"), algo="dp", **small))
    sd = train(TrainDiLoCoConfig(workdir=str(workdir / "streaming"), algo="streaming", inner_steps=20, fragments=2,
                                 overlap_tau=1, alpha=0.5, outer_precision="fp4", **small))
    return {"dp_val_loss": round(dp["val_loss"], 4), "streaming_val_loss": round(sd["val_loss"], 4),
            "val_loss_ratio": round(sd["val_loss"] / dp["val_loss"], 4),
            "bytes_reduction_vs_dp": round(dp["bytes_sent"] / sd["bytes_sent"], 1),
            "peak_reduction_vs_dp": round(dp["peak_bytes"] / sd["peak_bytes"], 1)}


# ----------------------------------------------------------------------------- flags
def define_flags() -> None:
    common.define_common_flags()
    d = TrainDiLoCoConfig()
    train_lm.define_lm_flags(d)  # steps = total inner steps, equal tokens for every method
    flags.DEFINE_enum("algo", d.algo, list(diloco.ALGOS), "dp: data-parallel; diloco; streaming: Streaming DiLoCo.")
    flags.DEFINE_integer("workers", d.workers, "M workers (a `workers` mesh axis; must divide the devices).")
    flags.DEFINE_integer("inner_steps", d.inner_steps, "H inner steps between syncs of a fragment.")
    flags.DEFINE_integer("fragments", d.fragments, "P fragments (streaming); H must be a multiple of P.")
    flags.DEFINE_enum("fragment_pattern", d.fragment_pattern, list(diloco.FRAGMENT_PATTERNS),
                      "strided: block l in fragment l mod P; sequential: contiguous blocks.")
    flags.DEFINE_integer("overlap_tau", d.overlap_tau, "τ: merge a fragment's outer update τ steps after its sync (< H/P).")
    flags.DEFINE_float("alpha", d.alpha, "α in [0, 1]: θ_m ← α θ_m + (1-α) θ_outer at the merge (streaming).")
    flags.DEFINE_float("outer_lr", d.outer_lr, "Outer SGD learning rate.")
    flags.DEFINE_float("outer_momentum", d.outer_momentum, "Outer SGD momentum.")
    flags.DEFINE_bool("nesterov", d.nesterov, "Nesterov outer momentum.")
    flags.DEFINE_enum("outer_precision", d.outer_precision, ["fp32", "bf16", "fp8", "fp4"],
                      "Outer-gradient precision on the wire (accumulated in FP32).")
    flags.DEFINE_enum("fp4_format", d.fp4_format, ["e3m0", "e2m1"], "4-bit float format for --outer_precision=fp4.")
    flags.DEFINE_enum("quant_scale", d.quant_scale, ["tensor", "row"], "fp4/fp8 scale: per tensor or per row.")
    flags.DEFINE_enum("backend", d.backend, list(diloco.BACKENDS), "shard_map (default) or pmap (1 device/worker).")
    flags.DEFINE_integer("stop_after", d.stop_after, "Stop (checkpointed, resumable) after this step; 0: run to --steps.")
    flags.DEFINE_string("compare", d.compare, "Comma-separated finished run dirs: write a comparison table instead.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.use_async_collectives()
    cfg = common.config_from_flags(TrainDiLoCoConfig)
    common.quiet_library_logs()
    if cfg.compare:
        compare([d for d in cfg.compare.split(",") if d], common.require_workdir(cfg.workdir))
        return
    train(cfg)


if __name__ == "__main__":
    define_flags()
    app.run(main)
