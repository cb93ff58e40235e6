"""The byte-level decoder LM experiment: config, state, optimiser, step, evaluation and ``train``.

``train(TrainLMConfig(...))`` trains ``models.transformer.DecoderLM`` on a byte-level corpus
(:mod:`training.data.text`: the embedded Tiny Shakespeare by default), data-parallel over a named mesh,
and with ``moe`` set every FFN is a Mixture-of-Experts layer (:mod:`parallel.moe`; experts on an ``expert``
mesh axis, their hidden dimension on ``tensor``). Its aux losses (load balancing, router z-loss) are added
to the loss and logged as ``moe_aux_loss``; ``loss`` and ``val_loss`` stay the plain cross-entropy.

The default configuration is nanoGPT's Tiny Shakespeare CPU setting (4 layers, 4 heads, width 128,
context 64, batch 12, 2,000 steps, AdamW lr 1e-3, 100 warm-up steps, cosine to 1e-4, beta2 0.99); the warm-up
is a tenth of the run, at most 100 steps, unless set (:func:`auto_warmup_steps`).
The pieces (:func:`make_optimizer`, :func:`make_train_step`, :func:`next_token_loss`, :func:`evaluate`)
are shared with Streaming DiLoCo (:mod:`training.diloco`) and the AlgoPerf LM workload.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import optax
from absl import logging

from models.transformer import DecoderLM, TransformerConfig, for_platform
from parallel import checkpoint as ckpt_lib
from parallel import mesh as mesh_lib
from parallel import moe as moe_lib
from parallel import sharding as sharding_lib
from training import run as run_lib
from training import throughput as throughput_lib
from training.run import TrainState
from training.config import group
from training.data import text


AUTO = -1  # warmup_steps=-1: chosen from the run's length (auto_warmup_steps)


def auto_warmup_steps(steps: int, cap: int = 100) -> int:
    """The warm-up of a run of ``steps`` when ``warmup_steps`` is -1 (auto): a tenth of the run, at most ``cap``
    (100 for the LM: nanoGPT's 100 of 2,000 steps; 60 for DiLoCo's 1,200). It never exceeds ``steps``, so a
    default never rejects a ``steps`` the user chose."""
    return min(cap, steps // 10)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay, after global-norm clipping (nanoGPT's recipe).

    lr: Peak learning rate.
    min_lr: Final learning rate of the cosine decay.
    warmup_steps: Linear warm-up steps; -1 (the default): a tenth of --steps, at most 100 (train_diloco: at
      most 60), so it fits any --steps.
    weight_decay: AdamW weight decay (decoupled).
    beta2: AdamW beta2.
    grad_clip: Global gradient-norm clip.
    """
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = AUTO
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0

    def __post_init__(self):
        for name in ("lr", "min_lr", "grad_clip"):  # grad_clip <= 0 would zero or reverse every update
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r} must be a finite number >= 0")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        if not 0 <= self.beta2 < 1:
            raise ValueError(f"beta2={self.beta2} must be in [0, 1)")
        w = self.warmup_steps
        if w != AUTO and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
            raise ValueError(f"warmup_steps={w!r} must be an integer >= 0, or -1 (a tenth of steps, capped)")

    def resolved(self, steps: int, cap: int = 100) -> "OptimConfig":
        """This config with ``warmup_steps`` made concrete for a run of ``steps``: :func:`auto_warmup_steps`
        where it is -1 (auto), unchanged where the user set it."""
        if self.warmup_steps != AUTO:
            return self
        return dataclasses.replace(self, warmup_steps=auto_warmup_steps(steps, cap))


def lm_model_config(**overrides) -> TransformerConfig:
    """The byte-level LM's TransformerConfig: nanoGPT's CPU shape unless ``overrides`` say otherwise."""
    base = dict(vocab_size=text.VOCAB_SIZE, num_layers=4, num_heads=4, d_model=128, mlp_dim=352, max_seq_len=64)
    return TransformerConfig(**{**base, **overrides})


@dataclasses.dataclass(frozen=True)
class LMSetup:
    """What every byte-level LM experiment sets: data, length, evaluation, model and optimiser.

    data_dir: Folder of text files; empty: the embedded Tiny Shakespeare.
    batch_size: Global batch size (sequences per step, over all devices and workers).
    seq_len: Context length in bytes.
    steps: Training steps.
    eval_every: Evaluate the validation loss every N steps.
    eval_batches: Validation batches per evaluation.
    log_every: Log the train loss every N steps.
    """
    # checkpoints from before these settings existed: the v1 init scheme, float32 compute
    ABSENT_MEANS = {"init": "v1", "dtype": "float32"}
    WARMUP_CAP = 100  # the most warm-up steps warmup_steps=-1 (auto) gives (auto_warmup_steps)
    data_dir: str = ""
    batch_size: int = 12
    seq_len: int = 64
    steps: int = 2000
    eval_every: int = 250
    eval_batches: int = 20
    log_every: int = 50
    model: TransformerConfig = group(lm_model_config, exclude=("vocab_size", "max_seq_len"))
    optim: OptimConfig = group(OptimConfig)

    def __post_init__(self):
        run_lib.require_positive(self, "batch_size", "seq_len", "steps", "eval_every", "eval_batches", "log_every")
        if self.optim.warmup_steps > self.steps:  # a value the user set (auto always fits)
            raise ValueError(f"warmup_steps={self.optim.warmup_steps} must not exceed steps={self.steps} (the "
                             "learning rate would never reach its peak nor decay; -1 chooses it from steps)")
        # The model's vocabulary and length follow from the data and the context length (not settings).
        model = dataclasses.replace(self.model, vocab_size=text.VOCAB_SIZE, max_seq_len=self.seq_len)
        object.__setattr__(self, "model", model)

    def resolved(self):
        """This config with its automatic settings made concrete (``warmup_steps=-1``: :func:`auto_warmup_steps`
        with this experiment's ``WARMUP_CAP``): what a run records in config.json and its checkpoints, so a
        checkpoint made before the automatic default existed (which recorded the number) still resumes."""
        return dataclasses.replace(self, optim=self.optim.resolved(self.steps, self.WARMUP_CAP))


@dataclasses.dataclass(frozen=True)
class TrainLMConfig(run_lib.RunConfig, LMSetup):
    """The LM experiment: an :class:`LMSetup` on a device mesh, optionally with MoE FFNs.

    mesh: Mesh axes and sizes, e.g. data:8 or data:2,expert:2,tensor:2 (-1: the remaining devices).
    moe_mlp_dim: Expert SwiGLU width (0: mlp_dim // moe_top_k, the dense model's active FFN size).
    """
    RENAMED = {"moe_experts": "moe_num_experts", "moe_topk": "moe_top_k", "moe_chunks": "moe_num_chunks",
               "moe_aux_weight": "moe_load_balance_weight", "moe_z_weight": "moe_z_loss_weight"}
    mesh: str = "data:-1"
    moe: moe_lib.MoEConfig | None = group(moe_lib.MoEConfig, prefix="moe_", optional_by="num_experts",
                                          optional=True)
    moe_mlp_dim: int = 0

    def __post_init__(self):
        run_lib.RunConfig.__post_init__(self)
        LMSetup.__post_init__(self)
        run_lib.require_positive(self, "moe_mlp_dim", allow_zero=("moe_mlp_dim",))

    @property
    def expert_mlp_dim(self) -> int:
        return self.moe_mlp_dim or max(1, self.model.mlp_dim // self.moe.top_k)


# Settings that may change on resumption (besides RunConfig's): the mesh, the logging rate and how the same
# model is computed (attention kernel, rematerialisation).
RESUME_IGNORE = ("mesh", "log_every", "attention", "remat")

_LOGGED_REASONS: set[str] = set()


def model_for_platform(model: TransformerConfig) -> TransformerConfig:
    """``model`` with its dtype and attention kernel made concrete for the default backend (what config.json
    records); a slower attention path than the platform's fused kernel is logged once, with the reason."""
    model, reason = for_platform(model)
    if reason and reason not in _LOGGED_REASONS:
        _LOGGED_REASONS.add(reason)
        logging.warning("%s", reason)
    return model


def with_platform_model(cfg):
    """An experiment config (any with a ``model`` field) whose model is :func:`model_for_platform`'s."""
    return dataclasses.replace(cfg, model=model_for_platform(cfg.model))


def check_devices(cfg: TrainLMConfig) -> None:
    """The mesh fits the devices, the global batch splits along its data axis and the experts and
    their width split along the expert and tensor axes (ValueError naming the values if not)."""
    for_platform(cfg.model)  # a dtype or attention kernel this platform lacks fails here, before any work
    sizes = mesh_lib.parse_mesh_spec(cfg.mesh, jax.device_count())
    data_size = sizes.get("data", 1)
    if cfg.batch_size % data_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the data axis size "
                         f"{data_size} of mesh={cfg.mesh!r}")
    if cfg.moe is not None:
        ep, tp = sizes.get("expert", 1), sizes.get("tensor", 1)
        if cfg.moe.num_experts % ep:
            raise ValueError(f"moe_num_experts={cfg.moe.num_experts} must be divisible by the 'expert' mesh "
                             f"axis size {ep}")
        if cfg.expert_mlp_dim % tp:
            raise ValueError(f"moe_mlp_dim={cfg.expert_mlp_dim} (or mlp_dim/moe_top_k) must be divisible by the "
                             f"'tensor' mesh axis size {tp}")


def make_optimizer(optim: OptimConfig, steps: int, warmup_cap: int = LMSetup.WARMUP_CAP
                   ) -> optax.GradientTransformation:
    """Clip, then AdamW on a warm-up + cosine schedule that reaches ``min_lr`` at ``steps`` (``warmup_steps=-1``:
    :func:`auto_warmup_steps` of ``steps``, at most ``warmup_cap``)."""
    optim = optim.resolved(steps, warmup_cap)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=optim.warmup_steps,
        decay_steps=max(steps, optim.warmup_steps + 1), end_value=optim.min_lr)
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=optim.beta2, weight_decay=optim.weight_decay))


def losses(model: DecoderLM, params, batch, dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(mean next-token cross-entropy in nats per byte, sum of the aux losses sown by MoE FFNs or 0).
    With ``dropout_rng`` the model runs in training mode (dropout on, drawn from that key)."""
    train = dropout_rng is not None
    logits, state = model.apply({"params": params}, batch["inputs"], deterministic=not train,
                                rngs={"dropout": dropout_rng} if train else None, mutable=["intermediates"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return ce, moe_lib.sown_aux_loss(state.get("intermediates", {}))


def next_token_loss(model: DecoderLM, params, batch) -> jax.Array:
    """Mean next-token cross-entropy in nats per byte."""
    return losses(model, params, batch)[0]


def make_train_step(model: DecoderLM, optimizer: optax.GradientTransformation):
    """``train_step(state, batch) -> (state, metrics)``; dropout (when the model has any) draws from a key
    split off the state's, so a run's masks are a function of (seed, step) and a resumed run repeats them."""
    uses_dropout = model.config.dropout > 0 or model.config.attention_dropout_rate > 0

    def train_step(state: TrainState, batch):
        rng, dropout_rng = jax.random.split(state.rng)

        def total(p):
            ce, aux = losses(model, p, batch, dropout_rng if uses_dropout else None)
            return ce + aux, (ce, aux)
        (_, (loss, aux)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new_state, {"loss": loss, "moe_aux_loss": aux, "grad_norm": optax.tree.norm(grads)}
    return train_step


def model_throughput(cfg: TrainLMConfig, params):
    """``rate_of(steps_per_sec) -> {tokens_per_sec, mfu}`` for this model, batch and the devices in use
    (:mod:`training.throughput`; MoE counts the routed experts only)."""
    moe = cfg.moe
    active = throughput_lib.active_params(params, moe.top_k if moe else 0, moe.num_experts if moe else 0)
    per_token = throughput_lib.flops_per_token(active, cfg.model.num_layers, cfg.model.d_model, cfg.seq_len)
    kind, count = jax.devices()[0].device_kind, jax.device_count()
    return lambda rate: throughput_lib.throughput(rate, cfg.batch_size * cfg.seq_len, per_token, kind, count)


def build_model(cfg: TrainLMConfig, mesh) -> DecoderLM:
    """The dense LM, or with ``moe`` set the LM whose FFNs are MoE layers sharded over ``mesh``."""
    if cfg.moe is None:
        return DecoderLM(cfg.model)
    factory = moe_lib.moe_ffn_factory(cfg.moe, mesh, hidden=cfg.expert_mlp_dim)
    return DecoderLM(cfg.model, ffn_factory=factory)


def init_state(model: DecoderLM, optimizer, cfg: LMSetup, seed: int, mesh) -> tuple[TrainState, TrainState]:
    """The initial TrainState, born sharded, and the tree of its shardings."""
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    init_params = lambda key: model.init(key, tokens)["params"]  # noqa: E731
    key = jax.random.PRNGKey(seed)
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
    """Mean validation loss over ``batches`` (nats per byte) and the same in bits per byte."""
    losses_ = [eval_loss_fn(params, mesh_lib.shard_batch(b, mesh)) for b in batches]
    loss = float(jnp.mean(jnp.stack(losses_)))
    return {"val_loss": loss, "val_bpb": loss / math.log(2)}


def local_rows(batch: dict, batch_size: int) -> dict:
    """This process's rows of a global batch (every process draws the same global batch)."""
    n, i = jax.process_count(), jax.process_index()
    per = batch_size // n
    return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}


def load_data(cfg: LMSetup, seed: int):
    """(corpus, fixed validation batches) of an LM experiment."""
    corpus = text.load_corpus(cfg.data_dir or None, min_split_len=cfg.seq_len + 1)
    return corpus, text.eval_batches(corpus.validation, cfg.eval_batches, cfg.batch_size, cfg.seq_len, seed=seed)


def train(cfg: TrainLMConfig) -> dict:
    """Runs (or resumes) training; returns the summary written to summary.json."""
    workdir = run_lib.begin(cfg, preflight=check_devices)
    cfg = with_platform_model(cfg).resolved()
    mesh = mesh_lib.make_mesh(cfg.mesh)
    corpus, eval_data = load_data(cfg, cfg.seed)

    model = build_model(cfg, mesh)
    optimizer = make_optimizer(cfg.optim, cfg.steps)
    state, shardings = init_state(model, optimizer, cfg, cfg.seed, mesh)
    run = run_lib.open_run(cfg, workdir, ckpt_lib.abstract_like(state, shardings), resume_ignore=RESUME_IGNORE)
    if run.restored is not None:
        state = run.restored.state
    start_step = run.start_step

    batch_sharding = mesh_lib.batch_sharding(mesh)
    jit_kwargs = dict(in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
    example_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                                 text.train_batch(corpus.train, cfg.seed, 0, cfg.batch_size, cfg.seq_len))
    train_step = ckpt_lib.DonationSafeStep(make_train_step(model, optimizer), run.checkpointer,
                                           (ckpt_lib.abstract_like(state, shardings), example_batch), **jit_kwargs)
    eval_loss = jax.jit(lambda p, b: next_token_loss(model, p, b))

    def save(step):
        return run.checkpointer.save(step, state, run.meta(data={"seed": cfg.seed, "position": step}))

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("training %s on %s (%d train / %d validation bytes), mesh %s, %d parameters, %s, %s attention",
                 "resumed at step %d" % start_step if run.restored else "from scratch", corpus.name,
                 len(corpus.train), len(corpus.validation), dict(mesh.shape), n_params, cfg.model.dtype,
                 cfg.model.attention)
    rate_of = model_throughput(cfg, state.params)
    last_eval: dict = {}
    first_step_done = last_step_done = 0.0  # the loop's own rate leaves out the first (compiling) step
    interval = [start_step, 0.0, 0.0]  # step, time at its end, evaluation time since: the rows' rate window

    def one_step(step: int) -> dict:
        nonlocal state, last_eval, first_step_done, last_step_done
        host_batch = local_rows(text.train_batch(corpus.train, cfg.seed, step - 1, cfg.batch_size, cfg.seq_len),
                                cfg.batch_size)
        state, step_metrics = train_step(state, mesh_lib.shard_batch(host_batch, mesh))
        row = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            row.update(loss=float(step_metrics["loss"]), grad_norm=float(step_metrics["grad_norm"]))
            if cfg.moe is not None:
                row.update(moe_aux_loss=float(step_metrics["moe_aux_loss"]))
            jax.block_until_ready(state)  # every step dispatched so far has run: the rate since the last row
            now = time.perf_counter()
            if interval[1]:
                row.update(rate_of((step - interval[0]) / max(now - interval[1] - interval[2], 1e-9)))
            interval[:] = [step, now, 0.0]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            # the steps dispatched before the evaluation run first (asynchronous dispatch): their time must not
            # count as evaluation time, which the rows' rate leaves out
            jax.block_until_ready(state)
            t_eval = time.perf_counter()
            last_eval = evaluate(eval_loss, state.params, eval_data, mesh)
            row.update(last_eval)
            interval[2] += time.perf_counter() - t_eval
        if step == start_step + 1 or step == cfg.steps:
            jax.block_until_ready(state)
        last_step_done = time.perf_counter()
        first_step_done = first_step_done or last_step_done
        if step == start_step + 1:  # the first (compiling) step stays out of the rows' rates
            interval[:] = [step, last_step_done, 0.0]
        return row

    end = run.loop(one_step, save, last_step=cfg.steps, total_steps=cfg.steps)
    loop_s = last_step_done - first_step_done
    loop_rate = (end.step - start_step - 1) / loop_s if loop_s > 0 else None
    summary = {"step": end.step, "preempted": end.preempted, "wall_time_s": end.wall_s,
               "steps_per_sec": (end.step - start_step) / max(end.wall_s, 1e-9),
               "loop_steps_per_sec": loop_rate, **rate_of(loop_rate), "parameters": n_params,
               "dtype": cfg.model.dtype, "attention": cfg.model.attention,
               "device_kind": jax.devices()[0].device_kind,
               "checkpoint_blocking_s": end.checkpoint_blocking_s, "resumed_from": run.resumed_from,
               **last_eval}
    return run.finish(summary, [("loss_curve.png", ("loss", "val_loss"), f"byte-level LM on {corpus.name}",
                                 "nats / byte")],
                      done="preempted, checkpointed" if end.preempted else "done")
