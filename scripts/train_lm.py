r"""Trains the byte-level decoder LM (models/transformer.py) on the embedded corpus, data-parallel.

    python -m scripts.train_lm --workdir=/tmp/lm            # Tiny Shakespeare, 2,000 steps
    python -m scripts.train_lm --workdir=/tmp/lm --mesh=data:8 --batch_size=64 --data_dir=~/corpus

With --moe_experts=E every FFN is a Mixture-of-Experts layer (parallel/moe.py; experts on an ``expert``
mesh axis, their hidden dimension on ``tensor``, e.g. --mesh=data:2,expert:2,tensor:2); its aux losses
(load balancing, router z-loss) are added to the loss with --moe_aux_weight / --moe_z_weight and logged
as moe_aux_loss; ``loss`` and ``val_loss`` stay the plain cross-entropy.

The global batch is split along the mesh's ``data`` axis; parameters follow the logical-axis rules of
parallel/sharding.py (replicated on a data-only mesh, Megatron-split over a ``tensor`` axis).
Writes config.json, metrics.jsonl (train loss every --log_every steps, validation loss and bits/byte
every --eval_every), loss_curve.png, summary.json and Orbax checkpoints; re-running the same command
on the same workdir resumes from the latest checkpoint (SIGTERM: checkpoint and exit 0).

Default configuration: the nanoGPT Tiny Shakespeare CPU setting (4 layers, 4 heads, width 128,
context 64, batch 12, 2,000 steps, AdamW lr 1e-3, 100 warmup steps, cosine to 1e-4, beta2 0.99).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time

import flax.struct
import jax
import jax.numpy as jnp
import optax
from absl import app, flags, logging

from algoperf.data import text
from models.transformer import DecoderLM, TransformerConfig
from parallel import checkpoint as ckpt_lib
from parallel import mesh as mesh_lib
from parallel import moe as moe_lib
from parallel import sharding as sharding_lib
from scripts import common

RESUME_IGNORE = common.RUN_RESUME_IGNORE + ("mesh", "log_every")


@dataclasses.dataclass(frozen=True)
class TrainLMConfig(common.RunConfig):
    mesh: str = "data:-1"
    data_dir: str = ""
    batch_size: int = 12
    seq_len: int = 64
    steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    num_layers: int = 4
    num_heads: int = 4
    d_model: int = 128
    mlp_dim: int = 352
    tie_embeddings: bool = True
    eval_every: int = 250
    eval_batches: int = 20
    log_every: int = 50
    moe_experts: int = 0            # 0: dense SwiGLU FFN
    moe_topk: int = 2
    moe_capacity_factor: float = 0.0  # 0: dropless
    moe_chunks: int = 0             # Comet chunks; 0: cost model
    moe_impl: str = "auto"          # grouped GEMM: auto (blocked on CPU, bucketed on GPU, ragged on TPU)
    moe_mlp_dim: int = 0            # expert width; 0: mlp_dim // moe_topk (same active FFN parameters)
    moe_aux_weight: float = 0.01    # load-balancing loss weight
    moe_z_weight: float = 0.001     # router z-loss weight

    def __post_init__(self):
        super().__post_init__()
        common.require_positive(self, "batch_size", "seq_len", "steps", "num_layers", "num_heads",
                                "d_model", "mlp_dim", "eval_every", "eval_batches", "log_every",
                                "warmup_steps", allow_zero=("warmup_steps",))
        for name in ("lr", "min_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name}={getattr(self, name)!r} must be > 0")
        if self.min_lr > self.lr:
            raise ValueError(f"--min_lr={self.min_lr} must not exceed --lr={self.lr}")
        if not 0 <= self.beta2 < 1:
            raise ValueError(f"--beta2={self.beta2} must be in [0, 1)")
        self.model_config()  # validates the model flags (heads dividing width, ...)
        common.require_positive(self, "moe_experts", "moe_topk", "moe_chunks", "moe_mlp_dim",
                                allow_zero=("moe_experts", "moe_chunks", "moe_mlp_dim"))
        if self.moe_experts:
            self.moe_config()

    def moe_config(self) -> moe_lib.MoEConfig:
        try:
            return moe_lib.MoEConfig(num_experts=self.moe_experts, top_k=self.moe_topk,
                                     capacity_factor=self.moe_capacity_factor, num_chunks=self.moe_chunks,
                                     impl=self.moe_impl, load_balance_weight=self.moe_aux_weight,
                                     z_loss_weight=self.moe_z_weight)
        except ValueError as e:
            raise ValueError(f"MoE flags (--moe_*): {e}") from None

    @property
    def expert_mlp_dim(self) -> int:
        return self.moe_mlp_dim or max(1, self.mlp_dim // self.moe_topk)

    def model_config(self) -> TransformerConfig:
        try:
            return TransformerConfig(vocab_size=text.VOCAB_SIZE, num_layers=self.num_layers,
                                     num_heads=self.num_heads, d_model=self.d_model,
                                     mlp_dim=self.mlp_dim, max_seq_len=self.seq_len,
                                     tie_embeddings=self.tie_embeddings)
        except ValueError as e:
            raise ValueError(f"model flags: {e}") from None


def check_devices(cfg: TrainLMConfig) -> None:
    """The mesh fits the devices, the global batch splits along its data axis and the experts and
    their width split along the expert and tensor axes (ValueError naming the values if not)."""
    sizes = mesh_lib.parse_mesh_spec(cfg.mesh, jax.device_count())
    data_size = sizes.get("data", 1)
    if cfg.batch_size % data_size:
        raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the data axis size "
                         f"{data_size} of --mesh={cfg.mesh!r}")
    if cfg.moe_experts:
        ep, tp = sizes.get("expert", 1), sizes.get("tensor", 1)
        if cfg.moe_experts % ep:
            raise ValueError(f"--moe_experts={cfg.moe_experts} must be divisible by the 'expert' mesh axis size {ep}")
        if cfg.expert_mlp_dim % tp:
            raise ValueError(f"expert width {cfg.expert_mlp_dim} (--moe_mlp_dim or --mlp_dim/--moe_topk) must be "
                             f"divisible by the 'tensor' mesh axis size {tp}")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


def make_optimizer(cfg: TrainLMConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.min_lr)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=cfg.beta2, weight_decay=cfg.weight_decay))


def losses(model: DecoderLM, params, batch) -> tuple[jax.Array, jax.Array]:
    """(mean next-token cross-entropy in nats per byte, sum of the aux losses sown by MoE FFNs or 0)."""
    logits, state = model.apply({"params": params}, batch["inputs"], mutable=["intermediates"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return ce, moe_lib.sown_aux_loss(state.get("intermediates", {}))


def next_token_loss(model: DecoderLM, params, batch) -> jax.Array:
    """Mean next-token cross-entropy in nats per byte."""
    return losses(model, params, batch)[0]


def make_train_step(model: DecoderLM, optimizer: optax.GradientTransformation):
    def train_step(state: TrainState, batch):
        def total(p):
            ce, aux = losses(model, p, batch)
            return ce + aux, (ce, aux)
        (_, (loss, aux)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng, _ = jax.random.split(state.rng)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new_state, {"loss": loss, "moe_aux_loss": aux, "grad_norm": optax.tree.norm(grads)}
    return train_step


def build_model(cfg: TrainLMConfig, mesh) -> DecoderLM:
    """The dense LM, or with --moe_experts > 0 the LM whose FFNs are MoE layers sharded over ``mesh``."""
    if not cfg.moe_experts:
        return DecoderLM(cfg.model_config())
    factory = moe_lib.moe_ffn_factory(cfg.moe_config(), mesh, hidden=cfg.expert_mlp_dim)
    return DecoderLM(cfg.model_config(), ffn_factory=factory)


def init_state(model: DecoderLM, optimizer, cfg: TrainLMConfig, mesh) -> tuple[TrainState, TrainState]:
    """The initial TrainState, born sharded, and the tree of its shardings."""
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    init_params = lambda key: model.init(key, tokens)["params"]  # noqa: E731
    key = jax.random.PRNGKey(cfg.seed)
    params_key, rng = jax.random.split(key)
    params, param_shardings = sharding_lib.init_sharded(init_params, mesh, params_key)
    replicated = mesh_lib.replicated(mesh)
    opt_shardings = sharding_lib.like_params(jax.eval_shape(optimizer.init, params), params, param_shardings,
                                             replicated)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                       opt_state=opt_state, rng=jax.device_put(rng, replicated))
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated)
    return state, shardings


def evaluate(eval_loss_fn, params, batches, mesh) -> dict[str, float]:
    losses = [eval_loss_fn(params, mesh_lib.shard_batch(b, mesh)) for b in batches]
    loss = float(jnp.mean(jnp.stack(losses)))
    return {"val_loss": loss, "val_bpb": loss / math.log(2)}


def local_rows(batch: dict, batch_size: int) -> dict:
    """This process's rows of a global batch (every process draws the same global batch)."""
    n, i = jax.process_count(), jax.process_index()
    per = batch_size // n
    return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}


def train(cfg: TrainLMConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    common.maybe_initialize_distributed(cfg.multihost)
    check_devices(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    workdir = common.require_workdir(cfg.workdir)
    corpus = text.load_corpus(cfg.data_dir or None, min_split_len=cfg.seq_len + 1)
    eval_data = text.eval_batches(corpus.validation, cfg.eval_batches, cfg.batch_size, cfg.seq_len, seed=cfg.seed)

    model = build_model(cfg, mesh)
    optimizer = make_optimizer(cfg)
    state, shardings = init_state(model, optimizer, cfg, mesh)
    config_dict = dataclasses.asdict(cfg)
    checkpointer, restored = ckpt_lib.open_for_run(
        workdir / "checkpoints", config_dict, ckpt_lib.abstract_like(state, shardings),
        keep=cfg.keep_checkpoints, mode=cfg.checkpoint_mode, overwrite=cfg.overwrite,
        resume_ignore=RESUME_IGNORE)
    start_step = 0
    if restored is not None:
        state, start_step = restored.state, restored.step
    if jax.process_index() == 0:
        common.write_json_atomic(workdir / "config.json", config_dict)
    metrics = common.MetricsWriter(workdir / "metrics.jsonl", resume_step=start_step if restored else None,
                                   enabled=jax.process_index() == 0)

    batch_sharding = mesh_lib.batch_sharding(mesh)
    jit_kwargs = dict(in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
    example_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                                 text.train_batch(corpus.train, cfg.seed, 0, cfg.batch_size, cfg.seq_len))
    train_step = ckpt_lib.DonationSafeStep(make_train_step(model, optimizer), checkpointer,
                                           (ckpt_lib.abstract_like(state, shardings), example_batch), **jit_kwargs)
    eval_loss = jax.jit(lambda p, b: next_token_loss(model, p, b))

    def save(step):
        meta = {"config": config_dict, "data": {"seed": cfg.seed, "position": step}}
        return checkpointer.save(step, state, meta)

    logging.info("training %s on %s (%d train / %d validation bytes), mesh %s, %d parameters",
                 "resumed at step %d" % start_step if restored else "from scratch", corpus.name,
                 len(corpus.train), len(corpus.validation), dict(mesh.shape),
                 sum(x.size for x in jax.tree.leaves(state.params)))
    last_eval: dict = {}
    first_step_done = last_step_done = 0.0  # the loop's own rate leaves out the first (compiling) step

    def one_step(step: int) -> dict:
        nonlocal state, last_eval, first_step_done, last_step_done
        host_batch = local_rows(text.train_batch(corpus.train, cfg.seed, step - 1, cfg.batch_size, cfg.seq_len),
                                cfg.batch_size)
        state, step_metrics = train_step(state, mesh_lib.shard_batch(host_batch, mesh))
        row = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            row.update(loss=float(step_metrics["loss"]), grad_norm=float(step_metrics["grad_norm"]))
            if cfg.moe_experts:
                row.update(moe_aux_loss=float(step_metrics["moe_aux_loss"]))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_eval = evaluate(eval_loss, state.params, eval_data, mesh)
            row.update(last_eval)
        if step == start_step + 1 or step == cfg.steps:
            jax.block_until_ready(state)
        last_step_done = time.perf_counter()
        first_step_done = first_step_done or last_step_done
        return row

    end = common.run_checkpointed_steps(
        start_step, cfg.steps, one_step, save=save, checkpointer=checkpointer,
        checkpoint_every=cfg.checkpoint_every, total_steps=cfg.steps, metrics=metrics,
        progress=common.Progress(cfg.steps, start_step))
    step, preempted, wall_s, blocked_s = end.step, end.preempted, end.wall_s, end.checkpoint_blocking_s
    loop_s = last_step_done - first_step_done

    summary = {"step": step, "preempted": preempted, "wall_time_s": wall_s,
               "steps_per_sec": (step - start_step) / max(wall_s, 1e-9),
               "loop_steps_per_sec": (step - start_step - 1) / loop_s if loop_s > 0 else None,
               "checkpoint_blocking_s": blocked_s, "resumed_from": start_step if restored else None,
               **last_eval}
    if jax.process_index() == 0:
        common.write_json_atomic(workdir / "summary.json", summary)
        common.plot_curves(workdir / "loss_curve.png", metrics.rows, ("loss", "val_loss"),
                           f"byte-level LM on {corpus.name}", ylabel="nats / byte")
    logging.info("%s at step %d: %s", "preempted, checkpointed" if preempted else "done", step,
                 json.dumps({k: v for k, v in summary.items() if k != "step"}))
    return summary


def define_lm_flags(defaults) -> None:
    """The data, model, optimiser and logging flags of the byte-level LM, with ``defaults``' values
    (any config with these field names: TrainLMConfig, train_diloco's config)."""
    flags.DEFINE_string("data_dir", defaults.data_dir, "Folder of text files; empty: embedded Tiny Shakespeare.")
    flags.DEFINE_integer("batch_size", defaults.batch_size,
                         "Global batch size (sequences per step, over all devices and workers).")
    flags.DEFINE_integer("seq_len", defaults.seq_len, "Context length in bytes.")
    flags.DEFINE_integer("steps", defaults.steps, "Training steps.")
    flags.DEFINE_float("lr", defaults.lr, "Peak learning rate.")
    flags.DEFINE_float("min_lr", defaults.min_lr, "Final learning rate of the cosine decay.")
    flags.DEFINE_integer("warmup_steps", defaults.warmup_steps, "Linear warm-up steps.")
    flags.DEFINE_float("weight_decay", defaults.weight_decay, "AdamW weight decay.")
    flags.DEFINE_float("beta2", defaults.beta2, "AdamW beta2.")
    flags.DEFINE_float("grad_clip", defaults.grad_clip, "Global gradient-norm clip.")
    flags.DEFINE_integer("num_layers", defaults.num_layers, "Transformer blocks.")
    flags.DEFINE_integer("num_heads", defaults.num_heads, "Attention heads.")
    flags.DEFINE_integer("d_model", defaults.d_model, "Model width.")
    flags.DEFINE_integer("mlp_dim", defaults.mlp_dim, "SwiGLU hidden width.")
    flags.DEFINE_bool("tie_embeddings", defaults.tie_embeddings, "Share input and output embeddings.")
    flags.DEFINE_integer("eval_every", defaults.eval_every, "Evaluate validation loss every N steps.")
    flags.DEFINE_integer("eval_batches", defaults.eval_batches, "Validation batches per evaluation.")
    flags.DEFINE_integer("log_every", defaults.log_every, "Log the train loss every N steps.")


def define_flags() -> None:
    common.define_common_flags()
    defaults = TrainLMConfig()
    define_lm_flags(defaults)
    flags.DEFINE_string("mesh", defaults.mesh, "Mesh axes, e.g. data:8 or data:4,tensor:2 (-1: the rest).")
    flags.DEFINE_integer("moe_experts", defaults.moe_experts, "MoE experts per FFN (0: dense SwiGLU FFN).")
    flags.DEFINE_integer("moe_topk", defaults.moe_topk, "Experts per token.")
    flags.DEFINE_float("moe_capacity_factor", defaults.moe_capacity_factor,
                       "Per-destination capacity factor for expert-parallel dispatch (0: dropless).")
    flags.DEFINE_integer("moe_chunks", defaults.moe_chunks, "Comet overlap chunks (0: chosen by the cost model).")
    flags.DEFINE_enum("moe_impl", defaults.moe_impl, list(moe_lib.IMPLS),
                      "Grouped expert GEMM (auto: blocked on CPU, bucketed on GPU, ragged_dot on TPU).")
    flags.DEFINE_integer("moe_mlp_dim", defaults.moe_mlp_dim,
                         "Expert SwiGLU width (0: mlp_dim // moe_topk, the dense model's active FFN size).")
    flags.DEFINE_float("moe_aux_weight", defaults.moe_aux_weight, "Weight of the load-balancing loss.")
    flags.DEFINE_float("moe_z_weight", defaults.moe_z_weight, "Weight of the router z-loss.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.use_async_collectives()
    cfg = common.config_from_flags(TrainLMConfig, preflight=check_devices)
    common.quiet_library_logs()
    train(cfg)


if __name__ == "__main__":
    define_flags()
    app.run(main)
