"""Data-parallel, DiLoCo and Streaming DiLoCo as one outer-optimiser family over a ``workers`` mesh axis.

* **DiLoCo** (Douillard et al. 2023, Algorithm 1): M workers start from the global parameters θ, each
  runs H inner AdamW steps on its own data, then the outer gradient Δ = 1/M Σ_m (θ - θ_m) is averaged
  and θ ← OuterOpt(θ, Δ) with Nesterov SGD (lr 0.7, momentum 0.9 in the paper); workers restart from θ.
* **Streaming DiLoCo** (Douillard et al. 2025, Algorithm 2): the parameters are split into P fragments of
  transformer blocks (strided: block l in fragment l mod P; sequential: contiguous; embeddings, final
  norm and head in fragment 0). Fragment p is synchronised at inner steps t with (t - t_p) mod H == 0,
  t_p = p·H/P (staggered), the outer update of θ_p is computed from the outer gradient of that moment
  and merged into the workers τ inner steps later as θ_m,p ← α·θ_m,p + (1-α)·θ_p (overlap: the workers
  keep training while the fragment travels). Outer gradients travel as fp32 (all-reduce) or encoded as
  bf16 / fp8 E4M3 / fp4 E3M0|E2M1 (all-gather of the packed payload, decoded and averaged in FP32,
  parallel/quantize.py). DiLoCo is the case P=1, τ=0, α=0.
* **Data-parallel** baseline: one AdamW step per batch on gradients averaged over every device.

A worker whose outer gradient is not finite (it diverged) stops the run with :class:`NonFiniteOuterGradient`
naming it, before the sync's result is used or checkpointed: silently averaging it (or dropping it) would
hide a divergence that the next sync would meet again.

Layout: worker replicas (parameters and inner optimiser state) are stacked on a leading axis of size M
sharded over ``workers``; inside a worker the batch is split over ``data`` and gradients are averaged
over ``data`` only. The global θ and the outer optimiser state (one optax state per fragment) are
replicated. The inner step, the sync of fragment p and the merge of fragment p are separate jitted
functions (shard_map, or pmap with ``backend="pmap"``); :meth:`DiLoCo.step` runs those due at step t,
so a state checkpointed at any inner step resumes bit for bit.

Overlap (Streaming DiLoCo Sec. 2.3): with τ ≥ 1 a fragment's sync only has to finish by its merge τ steps
later. What serialises it otherwise is not the algorithm but the dispatch: (1) an inner step that takes the
sync's output as an input waits for it, even when it does not read it, so the sync works on its own inputs
(a snapshot of the fragment, θ_p and the fragment's outer state) and its result is folded into the state
only at the merge (:meth:`DiLoCo.settle` folds every pending one before an evaluation or a checkpoint);
(2) XLA:CPU runs a computation that spans several devices inline, in the calling thread, until its
collectives complete (``jax_cpu_enable_async_dispatch`` covers single-device computations only), so a sync
over a slow link blocks the loop. ``sync_dispatch="thread"`` issues the syncs from one background thread, in
schedule order on every process, while the main thread runs the inner steps (measured: ten 0.1-s steps ran
inside one 13-s cross-process all-gather). It is the default where the workers span processes (the only
place a link is slow); the main thread then issues no cross-process collective while a sync is in flight
(the loss readout goes through :func:`host_mean`). On GPU/TPU, executables queue on one stream and the
sync would still wait for the step before it: overlapping there means fusing the sync into the inner
step's program, where XLA's asynchronous collectives run it beside the compute (not implemented here).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from parallel import comm_sim, quantize
from parallel import mesh as mesh_lib

ALGOS = ("dp", "diloco", "streaming")
FRAGMENT_PATTERNS = ("strided", "sequential")
BACKENDS = ("shard_map", "pmap")
SYNC_DISPATCH = ("auto", "inline", "thread")
WORKERS, DATA = "workers", "data"
_BLOCK = re.compile(r"^block_(\d+)$")


@dataclasses.dataclass(frozen=True)
class DiLoCoConfig:
    """The outer-optimiser family's knobs; validates itself (ValueError naming the field).

    algo: dp (data-parallel), diloco or streaming (Streaming DiLoCo).
    workers: M workers (a ``workers`` mesh axis; must divide the devices).
    inner_steps: H inner steps between syncs of a fragment.
    fragments: P fragments (streaming); H must be a multiple of P.
    fragment_pattern: strided (block l in fragment l mod P) or sequential (contiguous blocks).
    overlap_tau: τ, merge a fragment's outer update τ steps after its sync (< H/P).
    alpha: α in [0, 1], θ_m ← α θ_m + (1-α) θ_outer at the merge (streaming).
    outer_lr: Outer SGD learning rate.
    outer_momentum: Outer SGD momentum.
    nesterov: Nesterov outer momentum.
    outer_precision: Outer-gradient precision on the wire, fp32, bf16, fp8 or fp4 (accumulated in FP32).
    fp4_format: 4-bit float format for outer_precision=fp4, e3m0 or e2m1.
    quant_scale: fp4/fp8 scale, per tensor or per row.
    """
    algo: str = "streaming"
    workers: int = 2
    inner_steps: int = 100          # H
    fragments: int = 1              # P
    fragment_pattern: str = "strided"
    overlap_tau: int = 0            # τ
    alpha: float = 0.5              # α (Streaming only; DiLoCo replaces: α = 0)
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    outer_precision: str = "fp32"
    fp4_format: str = "e3m0"
    quant_scale: str = "tensor"

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise ValueError(f"algo={self.algo!r}; allowed: {', '.join(ALGOS)}")
        for name in ("workers", "inner_steps", "fragments"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.overlap_tau, int) or self.overlap_tau < 0:
            raise ValueError(f"overlap_tau={self.overlap_tau!r} must be an integer >= 0")
        if self.fragment_pattern not in FRAGMENT_PATTERNS:
            raise ValueError(f"fragment_pattern={self.fragment_pattern!r}; allowed: {', '.join(FRAGMENT_PATTERNS)}")
        if self.algo == "diloco" and (self.fragments != 1 or self.overlap_tau != 0):
            raise ValueError(f"algo=diloco syncs all parameters at once: it needs fragments=1 and "
                             f"overlap_tau=0 (got {self.fragments}, {self.overlap_tau}); use algo=streaming")
        if self.inner_steps % self.fragments:
            raise ValueError(f"inner_steps={self.inner_steps} must be a multiple of fragments={self.fragments} "
                             "(fragments are synced every H/P steps)")
        if self.algo == "streaming" and self.overlap_tau >= self.inner_steps // self.fragments:
            raise ValueError(f"overlap_tau={self.overlap_tau} must be < inner_steps/fragments = "
                             f"{self.inner_steps}/{self.fragments} = {self.inner_steps // self.fragments}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        if not self.outer_lr > 0:
            raise ValueError(f"outer_lr={self.outer_lr} must be > 0")
        if not 0.0 <= self.outer_momentum < 1.0:
            raise ValueError(f"outer_momentum={self.outer_momentum} must be in [0, 1)")
        quantize.validate_codec(self.codec)

    @property
    def codec(self) -> quantize.Codec:
        return quantize.Codec(self.outer_precision, self.fp4_format, self.quant_scale)

    @property
    def merge_alpha(self) -> float:
        return self.alpha if self.algo == "streaming" else 0.0

    @property
    def num_fragments(self) -> int:
        return self.fragments if self.algo == "streaming" else 1

    @property
    def tau(self) -> int:
        return self.overlap_tau if self.algo == "streaming" else 0


def check_workers(workers: int, num_devices: int) -> int:
    """Devices per worker; ValueError unless ``workers`` divides ``num_devices``."""
    if workers < 1 or num_devices % workers:
        hint = f"; {mesh_lib.simulate_devices_hint(workers)}" if workers > num_devices else ""
        raise ValueError(f"workers={workers} must divide the number of devices {num_devices}{hint}")
    return num_devices // workers


def make_worker_mesh(workers: int, devices=None) -> Mesh:
    """A ``workers x data`` mesh: M workers, each data-parallel over the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    per = check_workers(workers, len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(workers, per), (WORKERS, DATA))


# ----------------------------------------------------------------------------- outer optimiser
def outer_optimizer(lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True) -> optax.GradientTransformation:
    """DiLoCo's outer optimiser: SGD with (Nesterov) momentum applied to the outer gradient Δ.

    optax's trace: m ← Δ + μ m; update = -lr (Δ + μ m) with Nesterov, -lr m without (the PyTorch
    SGD used by DiLoCo, Douillard et al. 2023, Sec. 2). momentum 0 and lr 1 make θ ← θ - Δ = mean θ_m.
    """
    return optax.sgd(lr, momentum=momentum if momentum > 0 else None, nesterov=nesterov and momentum > 0)


def outer_gradient(global_params, local_params):
    """Δ_m = θ - θ_m (Algorithm 1, line 8, before averaging)."""
    return jax.tree.map(lambda g, l: g - l, global_params, local_params)


def merge(local, global_, alpha: float):
    """θ_m ← α θ_m + (1 - α) θ (Streaming DiLoCo Sec. 2.3, eq. after Algorithm 2); α = 0 replaces."""
    if alpha == 0.0:
        return jax.tree.map(lambda l, g: jnp.broadcast_to(g, l.shape).astype(l.dtype), local, global_)
    return jax.tree.map(lambda l, g: alpha * l + (1.0 - alpha) * g, local, global_)


# ----------------------------------------------------------------------------- fragments & schedule
def block_index(key: str) -> int | None:
    m = _BLOCK.match(key)
    return int(m.group(1)) if m else None


def assign_fragments(param_keys, fragments: int, pattern: str = "strided") -> tuple[tuple[str, ...], ...]:
    """Top-level parameter names of each fragment. Blocks ``block_i`` are split strided (i mod P) or
    sequentially (contiguous chunks); every other entry (embeddings, final norm, head) joins fragment 0."""
    keys = list(param_keys)
    blocks = sorted((block_index(k), k) for k in keys if block_index(k) is not None)
    if fragments > max(len(blocks), 1):
        raise ValueError(f"fragments={fragments} exceeds the model's {len(blocks)} transformer blocks")
    members = [[blocks[r][1] for r in ranks] for ranks in comm_sim.fragment_layers(len(blocks), fragments, pattern)]
    members[0] = [k for k in keys if block_index(k) is None] + members[0]
    return tuple(tuple(m) for m in members)


def sync_offset(p: int, inner_steps: int, fragments: int) -> int:
    """t_p = p·H/P: fragment p's staggered offset."""
    return p * inner_steps // fragments


def syncs_at(t: int, inner_steps: int, fragments: int) -> list[int]:
    """Fragments whose outer gradient is sent at inner step t >= 1: (t - t_p) mod H == 0, t >= t_p."""
    return [p for p in range(fragments)
            if t >= 1 and t >= sync_offset(p, inner_steps, fragments)
            and (t - sync_offset(p, inner_steps, fragments)) % inner_steps == 0]


def merges_at(t: int, inner_steps: int, fragments: int, tau: int) -> list[int]:
    """Fragments whose outer update is merged into the workers at step t (τ steps after their sync)."""
    return syncs_at(t - tau, inner_steps, fragments) if t - tau >= 1 else []


def subtree(params: dict, keys) -> dict:
    return {k: params[k] for k in keys}


# ----------------------------------------------------------------------------- states
@flax.struct.dataclass
class DPState:
    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class DiLoCoState:
    step: jax.Array            # inner steps done
    params: Any                # worker replicas, leaves [M, ...] sharded over `workers`
    inner_opt_state: Any       # per worker, leaves [M, ...]
    global_params: Any         # θ, replicated
    outer_opt_state: tuple     # one optax state per fragment (over that fragment's subtree)


def _stack(tree, m: int):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (m,) + jnp.shape(x)), tree)


# ----------------------------------------------------------------------------- per-worker pieces
def _inner_local(loss_fn, optimizer, data_axis):
    def local(params, opt_state, batch):
        if data_axis is None:  # pmap: one device per worker
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        else:
            # per-device gradients of the (data-invariant) parameters, then ONE explicit mean over
            # `data_axis` (without the cast, shard_map's transpose would insert a psum of its own)
            varying = jax.lax.pcast(params, data_axis, to="varying")
            loss, grads = jax.value_and_grad(loss_fn)(varying, batch)
            grads = jax.lax.pmean(grads, data_axis)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return local


def _average_outer_gradient(delta, codec: quantize.Codec, workers: int, axis: str):
    """Mean over workers of Δ_m: all-reduce in FP32, or all-gather of encoded payloads + FP32 mean."""
    if codec.precision == "fp32":
        return jax.lax.pmean(delta, axis)
    def one(x):
        gathered = jax.lax.all_gather(quantize.encode(x, codec), axis)  # leaves [M, ...]
        decoded = jax.vmap(lambda payload: quantize.decode(payload, x.shape, codec))(gathered)
        return jnp.sum(decoded, axis=0) / workers
    return jax.tree.map(one, delta)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _sync_local(outer_opt, codec, workers, axis):
    """One worker's part of a sync: the new θ of the fragment, the outer optimiser state, and whether this
    worker's outer gradient was finite (checked locally: no extra communication; the trainer stops on a
    False, see :class:`NonFiniteOuterGradient`)."""
    def local(local_frag, global_frag, outer_state):
        delta = outer_gradient(global_frag, local_frag)
        finite = _all_finite(delta)
        avg = _average_outer_gradient(delta, codec, workers, axis)
        updates, outer_state = outer_opt.update(avg, outer_state, global_frag)
        return optax.apply_updates(global_frag, updates), outer_state, finite
    return local


class NonFiniteOuterGradient(FloatingPointError):
    """A worker's outer gradient held a NaN or an inf: the worker diverged. Averaging it would poison θ (and
    fp4/fp8 cannot carry it), so the run stops before the sync's result is used or saved."""


def _fold(state: "DiLoCoState", p: int, result) -> "DiLoCoState":
    """``state`` with fragment p's sync result (new θ_p, its outer optimiser state) in place."""
    new_global, outer_p = result
    outer = tuple(outer_p if i == p else s for i, s in enumerate(state.outer_opt_state))
    return state.replace(global_params={**state.global_params, **new_global}, outer_opt_state=outer)


def _done(value) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


def _unstack(tree):
    return jax.tree.map(lambda x: x[0], tree)


def _restack(tree):
    return jax.tree.map(lambda x: x[None], tree)


# ----------------------------------------------------------------------------- the trainer
class DiLoCo:
    """DP / DiLoCo / Streaming DiLoCo over ``mesh`` (axes ``workers`` and ``data``).

    ``loss_fn(params, batch) -> scalar``; ``inner_opt`` an optax transformation (AdamW). Batches are
    global: leading dimension split over (workers, data), so each worker sees its own rows and every
    method processes the same tokens per inner step.
    """

    def __init__(self, cfg: DiLoCoConfig, loss_fn: Callable, inner_opt: optax.GradientTransformation,
                 mesh: Mesh, param_keys, backend: str = "shard_map", sync_dispatch: str = "auto",
                 timeline: Callable[[dict], None] | None = None):
        """``sync_dispatch``: inline (a sync runs when due, blocking the loop), thread (from a background
        thread, folded in at its merge) or auto (thread where the mesh spans processes and τ ≥ 1).
        ``timeline(event)``: called with ``{"kind": "compute" | "sync", "step", "fragment", "start", "end"}``
        (monotonic seconds) for each inner step (until its losses are ready) and each sync (until its
        result is on the host)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; allowed: {', '.join(BACKENDS)}")
        if sync_dispatch not in SYNC_DISPATCH:
            raise ValueError(f"sync_dispatch={sync_dispatch!r}; allowed: {', '.join(SYNC_DISPATCH)}")
        if tuple(mesh.axis_names) != (WORKERS, DATA):
            raise ValueError(f"mesh axes {mesh.axis_names} must be ('workers', 'data'); use make_worker_mesh")
        if mesh.shape[WORKERS] != cfg.workers:
            raise ValueError(f"workers={cfg.workers} but the mesh has {mesh.shape[WORKERS]} workers")
        if backend == "pmap" and mesh.shape[DATA] != 1:
            raise ValueError(f"backend='pmap' runs one device per worker; mesh has data={mesh.shape[DATA]}")
        self.cfg, self.mesh, self.backend = cfg, mesh, backend
        self.loss_fn, self.inner_opt = loss_fn, inner_opt
        spans_processes = len({d.process_index for d in mesh.devices.flat}) > 1
        threaded = sync_dispatch == "thread" or (sync_dispatch == "auto" and spans_processes and cfg.tau > 0)
        self.sync_dispatch = "thread" if threaded and cfg.algo != "dp" else "inline"
        self.timeline = timeline
        self._executor = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="diloco-sync")
                          if self.sync_dispatch == "thread" else None)
        self._pending: dict[int, tuple[int, concurrent.futures.Future]] = {}
        self.outer_opt = outer_optimizer(cfg.outer_lr, cfg.outer_momentum, cfg.nesterov)
        self.fragments = assign_fragments(param_keys, cfg.num_fragments, cfg.fragment_pattern)
        self.worker_spec, self.batch_spec = P(WORKERS), P((WORKERS, DATA))
        self.replicated = NamedSharding(mesh, P())
        self.stacked = NamedSharding(mesh, self.worker_spec)
        self.batch_sharding = NamedSharding(mesh, self.batch_spec)
        self._build()

    # -- construction of the jitted pieces
    def _shard_map(self, f, in_specs, out_specs, check_vma=True):
        return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma)

    def _build(self):
        cfg = self.cfg
        if cfg.algo == "dp":
            local = _inner_local(self.loss_fn, self.inner_opt, (WORKERS, DATA))
            def dp_local(params, opt_state, batch):
                params, opt_state, loss = local(params, opt_state, batch)
                return params, opt_state, loss[None]
            sm = self._shard_map(dp_local, (P(), P(), self.batch_spec), (P(), P(), self.batch_spec))
            def dp_step(state: DPState, batch):
                params, opt_state, losses = sm(state.params, state.opt_state, batch)
                return DPState(step=state.step + 1, params=params, opt_state=opt_state), losses
            self._inner = (jax.jit(dp_step, donate_argnums=0), jax.jit(dp_step))
            return

        M = cfg.workers
        if self.backend == "shard_map":
            local = _inner_local(self.loss_fn, self.inner_opt, DATA)
            def worker_local(params, opt_state, batch):
                params, opt_state, loss = local(_unstack(params), _unstack(opt_state), batch)
                return _restack(params), _restack(opt_state), loss[None]
            inner = self._shard_map(worker_local, (self.worker_spec, self.worker_spec, self.batch_spec),
                                    (self.worker_spec, self.worker_spec, self.batch_spec))
            sync_local = _sync_local(self.outer_opt, cfg.codec, M, WORKERS)
            def sync_worker(local_frag, global_frag, outer_state):
                new_global, outer_state, finite = sync_local(_unstack(local_frag), global_frag, outer_state)
                return new_global, outer_state, finite[None]
            # every worker computes the same θ from the same gathered payloads: replicated by
            # construction (the all-gather's result is typed as varying, hence no VMA check)
            sync = self._shard_map(sync_worker, (self.worker_spec, P(), P()), (P(), P(), self.worker_spec),
                                   check_vma=False)
        else:
            devices = list(self.mesh.devices.reshape(-1))
            pinner = jax.pmap(_inner_local(self.loss_fn, self.inner_opt, None), axis_name=WORKERS, devices=devices)
            def inner(params, opt_state, batch):
                batch = jax.tree.map(lambda x: x.reshape((M, -1) + x.shape[1:]), batch)
                params, opt_state, loss = pinner(params, opt_state, batch)
                return params, opt_state, loss
            psync = jax.pmap(_sync_local(self.outer_opt, cfg.codec, M, WORKERS), axis_name=WORKERS,
                             in_axes=(0, None, None), devices=devices)
            def sync(local_frag, global_frag, outer_state):
                new_global, outer_state, finite = psync(local_frag, global_frag, outer_state)
                return _unstack(new_global), _unstack(outer_state), finite

        def inner_step(state: DiLoCoState, batch):
            params, opt_state, losses = inner(state.params, state.inner_opt_state, batch)
            return state.replace(step=state.step + 1, params=params, inner_opt_state=opt_state), losses

        if self.backend == "shard_map":
            self._inner = (jax.jit(inner_step, donate_argnums=0), jax.jit(inner_step))
        else:
            self._inner = (inner_step, inner_step)
        self.sync_fns, self.merge_fns, self.sync_cores, self.snapshots = [], [], [], []
        alpha = cfg.merge_alpha
        for p, keys in enumerate(self.fragments):
            # the sync on its own inputs (the fragment's replicas, θ_p, its outer state): nothing of the
            # state that the next inner steps take depends on it
            core = jax.jit(sync) if self.backend == "shard_map" else sync
            def sync_p(state: DiLoCoState, p=p, keys=keys, core=core):
                result = core(subtree(state.params, keys), subtree(state.global_params, keys), state.outer_opt_state[p])
                return _fold(state, p, result[:2]), result[2]
            def merge_p(state: DiLoCoState, keys=keys):
                merged = merge(subtree(state.params, keys), subtree(state.global_params, keys), alpha)
                return state.replace(params={**state.params, **merged})
            if self.backend == "shard_map":
                merge_p = jax.jit(merge_p)
            self.sync_cores.append(core)
            self.snapshots.append(jax.jit(lambda frag: jax.tree.map(jnp.copy, frag)))
            self.sync_fns.append(sync_p)
            self.merge_fns.append(merge_p)

    # -- state
    def init(self, params) -> DPState | DiLoCoState:
        """The initial state from one parameter tree θ(0) (every worker starts from it)."""
        # fresh buffers: the caller's arrays must survive the donating steps
        params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.replicated)(params)
        if self.cfg.algo == "dp":
            opt_state = jax.jit(self.inner_opt.init, out_shardings=self.replicated)(params)
            return DPState(step=jax.device_put(jnp.zeros((), jnp.int32), self.replicated), params=params,
                           opt_state=opt_state)
        M = self.cfg.workers
        stacked = jax.jit(lambda p: _stack(p, M), out_shardings=self.stacked)
        inner_state = jax.jit(lambda p: _stack(self.inner_opt.init(p), M), out_shardings=self.stacked)(params)
        outer = tuple(jax.jit(self.outer_opt.init, out_shardings=self.replicated)(subtree(params, keys))
                      for keys in self.fragments)
        return DiLoCoState(step=jax.device_put(jnp.zeros((), jnp.int32), self.replicated),
                           params=stacked(params), inner_opt_state=inner_state,
                           global_params=jax.tree.map(jnp.copy, params), outer_opt_state=outer)

    def eval_params(self, state):
        """The parameters to evaluate: θ for DP, the global (outer) θ for DiLoCo/Streaming."""
        return state.params if self.cfg.algo == "dp" else state.global_params

    # -- schedule and accounting
    def events(self, t: int) -> tuple[list[int], list[int]]:
        """(fragments synced at inner step t, fragments merged at t)."""
        cfg = self.cfg
        if cfg.algo == "dp":
            return [], []
        H, Pn = cfg.inner_steps, cfg.num_fragments
        return syncs_at(t, H, Pn), merges_at(t, H, Pn, cfg.tau)

    def fragment_shapes(self, params) -> list[list[tuple[int, ...]]]:
        return [[tuple(x.shape) for x in jax.tree.leaves(subtree(params, keys))] for keys in self.fragments]

    def step_bytes(self, t: int, param_shapes: list[list[tuple[int, ...]]]) -> comm_sim.StepBytes:
        """Bytes one device sends at inner step t, between the M workers and over the whole mesh.

        Between workers, data-parallel all-reduces every step's FP32 gradients across the M worker groups
        (a hierarchical all-reduce: 2 (M-1)/M of the gradient bytes cross that link); (Streaming) DiLoCo
        sends the outer gradients of the fragments synced at t. Over the whole mesh, data-parallel is one
        ring over all N devices; DiLoCo adds the gradient all-reduce inside each worker (over its N/M
        devices) to the outer traffic. ``param_shapes``: :meth:`fragment_shapes` of one parameter tree.
        """
        cfg = self.cfg
        grads = comm_sim.shapes_payload([s for f in param_shapes for s in f], quantize.Codec("fp32"))
        if cfg.algo == "dp":
            return comm_sim.StepBytes(grads, comm_sim.wire_bytes(grads, "all-reduce", cfg.workers),
                                      comm_sim.wire_bytes(grads, "all-reduce", self.mesh.size))
        payload = sum(comm_sim.shapes_payload(param_shapes[p], cfg.codec) for p in self.events(t)[0])
        wire = comm_sim.wire_bytes(payload, comm_sim.collective_kind(cfg.codec), cfg.workers)
        inside = comm_sim.wire_bytes(grads, "all-reduce", self.mesh.shape[DATA])
        return comm_sim.StepBytes(payload, wire, wire + inside)

    # -- one inner step, plus the syncs and merges due at it
    def inner_step(self, state, batch, donate: bool = True):
        """One inner step on every worker (DP: one data-parallel step). ``donate=False`` keeps the input
        state's buffers alive (needed right after a lazy checkpoint save of that state)."""
        return self._inner[0 if donate else 1](state, batch)

    def step(self, state, batch, t: int, donate: bool = True):
        """Runs inner step t (1-based): the inner update, then fragment syncs, then merges due at t.

        Returns (state, per-device losses). The order (sync before merge) makes τ = 0 plain DiLoCo. A sync
        dispatched to the background thread is folded into the state at its merge (or by :meth:`settle`).
        """
        start = time.monotonic()
        state, losses = self.inner_step(state, batch, donate)
        if self.timeline is not None:
            jax.block_until_ready(losses)
            self.timeline({"kind": "compute", "step": t, "start": start, "end": time.monotonic()})
        syncs, merges = self.events(t)
        for p in syncs:
            state = self._start_sync(state, p, t)
        for p in merges:
            state = self.merge_fns[p](self._finish_sync(state, p))
        return state, losses

    def settle(self, state):
        """``state`` with every sync still in flight waited for and folded in (before an evaluation of θ, a
        checkpoint, or the end of training); raises :class:`NonFiniteOuterGradient` as the sync would. Go on
        from the returned state: the trainer hands the results over (the next inner step donates them)."""
        for p in sorted(self._pending, key=lambda q: self._pending[q][0]):
            state = self._finish_sync(state, p)
        return state

    @property
    def syncs_in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Ends the background sync thread (after waiting for its work)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _run_sync(self, p: int, t: int, local_frag, global_frag, outer_state):
        start = time.monotonic()
        new_global, outer_p, finite = self.sync_cores[p](local_frag, global_frag, outer_state)
        finite = mesh_lib.to_host(finite)  # waits for the collective (in this thread when threaded)
        if self.timeline is not None:
            self.timeline({"kind": "sync", "step": t, "fragment": p, "start": start, "end": time.monotonic()})
        return new_global, outer_p, finite

    def _start_sync(self, state, p: int, t: int):
        keys = self.fragments[p]
        if self._executor is None:  # inline: the result is in the state from step t on, as in Algorithm 2
            self._pending[p] = (t, _done(self._run_sync(p, t, subtree(state.params, keys),
                                                         subtree(state.global_params, keys),
                                                         state.outer_opt_state[p])))
            return self._finish_sync(state, p)
        # the next inner step donates the whole state: the sync reads its own copies of its inputs
        inputs = self.snapshots[p]((subtree(state.params, keys), subtree(state.global_params, keys),
                                    state.outer_opt_state[p]))
        self._pending[p] = (t, self._executor.submit(self._run_sync, p, t, *inputs))
        return state

    def _finish_sync(self, state, p: int):
        if p not in self._pending:
            return state
        t, future = self._pending.pop(p)
        new_global, outer_p, finite = future.result()
        if not finite.all():
            raise NonFiniteOuterGradient(
                f"the outer gradient of worker(s) {np.flatnonzero(~finite).tolist()} is not finite (NaN or inf) "
                f"at inner step {t}, fragment {p}: the worker diverged; stopped before using or saving this "
                "sync (the last checkpoint is intact). Lower the inner learning rate (lr) or outer_lr.")
        return _fold(state, p, (new_global, outer_p))
