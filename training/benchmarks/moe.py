r"""Benchmark of the MoE layer (:mod:`parallel.moe`): forward+backward time of the dropless layer against
(a) dense SwiGLU matmuls doing the same active FLOPs (the physical limit here) and (b) the GShard one-hot
capacity dispatch baseline, side by side in one process, at configurations scaled down from Mixtral
(8 experts, top-2), Qwen2-MoE (64 experts, top-4) and Phi-3.5-MoE (16 experts, top-2).

Each repeat runs every variant once (interleaved, so drift of a shared machine hits all alike); figures are
medians over repeats of jitted value-and-grad calls, compilation and one warm-up call excluded.
Overlap (Comet chunks, collective matmuls) CANNOT be timed on CPU: XLA:CPU runs collectives in program
order without a latency-hiding scheduler, so the C = 1 vs chosen-C comparison runs only on multi-device
accelerators by default; on CPU the record says so. On a GPU it also times ragged_dot against a per-expert loop.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding

from parallel import mesh as mesh_lib
from parallel import moe as moe_lib
from parallel.moe import pallas_gemm
from training import run as run_lib
from training.benchmarks import parse_list
from training.benchmarks.timing import compile_variants, time_variants

# (experts, top-k, expert hidden / d_model) of the real models: Mixtral 14336/4096, Qwen2-MoE 1408/2048,
# Phi-3.5-MoE 6400/4096, Qwen1.5-MoE-A2.7B 1408/2048 (60 experts, top-4), DeepSeekMoE-16B 1408/2048 (64
# fine-grained experts, top-6; its 2 shared experts are a dense FFN beside the layer, left out); scaled down
# to d_model (256 on CPU: hidden 896, 176, 400, 176, 176).
MODELS = {"mixtral": (8, 2, 3.5), "qwen2_moe": (64, 4, 0.6875), "phi35_moe": (16, 2, 1.5625),
          "qwen15_moe": (60, 4, 0.6875), "deepseek_moe": (64, 6, 0.6875)}
DEFAULT_MODELS = ("mixtral", "qwen2_moe", "phi35_moe")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GROUPED = ("ragged_dot", "per_expert_loop", "blocked", "bucketed", "pallas", "dense_equivalent")
OVERLAP_CHOICES = ("auto", "on", "off", "predict")


@dataclasses.dataclass(frozen=True)
class BenchMoEConfig:
    """MoE benchmark settings.

    models: Configurations to run (comma-separated: mixtral, qwen2_moe, phi35_moe, qwen15_moe, deepseek_moe).
    tokens: Tokens per call.
    d_model: Model width; the expert width keeps the real model's ratio.
    dtype: Activations and weights: float32 or bfloat16.
    impl: Grouped GEMM of the dropless layer (MoEConfig.impl): auto, bucketed, blocked, ragged or pallas
      (Pallas kernels; interpret mode off GPU, slow there).
    layer_impls: More dropless layers timed beside it, one per impl (comma-separated from bucketed, blocked,
      ragged, pallas; '' for none): each row then names the fastest and whether ``auto`` resolves to it.
    repeats: Timed repeats per variant (medians).
    capacity_factor: Capacity factor of the one-hot baseline.
    grouped: Grouped-GEMM-only comparison (the expert SwiGLU on expert-sorted rows), comma-separated from
      ragged_dot, per_expert_loop, blocked, bucketed, pallas, dense_equivalent; 'auto': all but pallas on
      GPU/TPU, all but ragged_dot and pallas on CPU (a dense masked product, an interpreted kernel there);
      'none': skip.
    pallas_tiles: Pallas tile sizes tried in the grouped-GEMM comparison, comma-separated BMxBKxBN (rows per
      block of the layout, K tile, N tile; e.g. 64x64x128), each a variant ``pallas_BMxBKxBN``; '' for none.
    overlap: Time the sharded layer with C = 1 against the cost model's C on overlap_mesh (auto, on, off or
      predict); auto: on multi-device GPU/TPU only (on CPU the figure means nothing: XLA:CPU does not overlap
      collectives with compute); predict: on one device, time each chunk's expert compute for C = 1..8 and
      PREDICT the pipeline with the exchange modelled over link_bandwidth (:func:`predict_overlap`).
    overlap_mesh: Mesh of the overlap comparison.
    predict_ep: overlap=predict: the expert-parallel width assumed (each device holds E / predict_ep experts).
    link_bandwidth: overlap=predict: bytes/s of the expert-axis link (0: the backend's cost-model default).
    """
    models: str = ",".join(DEFAULT_MODELS)
    tokens: int = 2048
    d_model: int = 256
    dtype: str = "float32"
    impl: str = "auto"
    layer_impls: str = ""
    repeats: int = 5
    capacity_factor: float = 1.25
    grouped: str = "auto"
    pallas_tiles: str = ""
    overlap: str = "auto"
    overlap_mesh: str = "expert:-1"
    predict_ep: int = 8
    link_bandwidth: float = 0.0

    def __post_init__(self):
        run_lib.require_positive(self, "tokens", "repeats", "predict_ep")
        if not (math.isfinite(self.link_bandwidth) and self.link_bandwidth >= 0):
            raise ValueError(f"link_bandwidth={self.link_bandwidth!r} must be a finite number >= 0 (0: default)")
        if not isinstance(self.d_model, int) or self.d_model < 8:
            raise ValueError(f"d_model={self.d_model!r} must be an integer >= 8")
        for name, allowed in (("dtype", tuple(DTYPES)), ("impl", moe_lib.IMPLS), ("overlap", OVERLAP_CHOICES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        if not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor={self.capacity_factor} must be > 0")
        parse_list("models", self.models, str, tuple(MODELS))
        grouped_variants(self.grouped, "cpu")
        self.layer_impls_list, self.pallas_tiles_list  # noqa: B018 (validates both)

    @property
    def models_list(self) -> list[str]:
        return parse_list("models", self.models, str, tuple(MODELS))

    @property
    def layer_impls_list(self) -> list[str]:
        return parse_list("layer_impls", self.layer_impls, str, LAYER_IMPLS) if self.layer_impls else []

    @property
    def pallas_tiles_list(self) -> list[tuple[int, int, int]]:
        return [parse_tiles(t) for t in self.pallas_tiles.split(",") if t.strip()]


LAYER_IMPLS = tuple(i for i in moe_lib.IMPLS if i != "auto")


def parse_tiles(text: str) -> tuple[int, int, int]:
    """``"BMxBKxBN"`` -> (bm, bk, bn), each a power of two >= 16 (a Triton dot's smallest tile)."""
    try:
        tiles = tuple(int(v) for v in text.strip().split("x"))
    except ValueError:
        tiles = ()
    if len(tiles) != 3 or any(t < 16 or t & (t - 1) for t in tiles):
        raise ValueError(f"pallas_tiles entry {text.strip()!r} must be BMxBKxBN, each a power of two >= 16 "
                         "(e.g. 64x64x128)")
    return tiles


def model_shape(name: str, d_model: int) -> tuple[int, int, int, int]:
    e, k, ratio = MODELS[name]
    return e, k, d_model, max(8, int(round(ratio * d_model / 8)) * 8)


def _dense_params(key, d, h, dtype):
    kg, ku, kd = jax.random.split(key, 3)
    return {"wg": (jax.random.normal(kg, (d, h)) / d ** 0.5).astype(dtype),
            "wu": (jax.random.normal(ku, (d, h)) / d ** 0.5).astype(dtype),
            "wd": (jax.random.normal(kd, (h, d)) / h ** 0.5).astype(dtype)}


def _sum_sq(y):
    return jnp.sum(jnp.square(y.astype(jnp.float32)))


def make_variants(name: str, tokens: int, capacity_factor: float, d_model: int = 256,
                  dtype=jnp.float32, impl: str = "auto", layer_impls=()) -> tuple[dict, dict]:
    """Jitted fwd+bwd callables (with their arguments) for one configuration: ``dense_equivalent``,
    ``moe_dropless`` (``impl``), ``onehot_capacity`` and ``moe_<i>`` for each of ``layer_impls``."""
    e, k, d, h = model_shape(name, d_model)
    params = moe_lib.init_params(jax.random.PRNGKey(0), d, h, e, dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (tokens, d), dtype)

    def grad_of(cfg):
        return jax.jit(jax.value_and_grad(lambda p, xx: _sum_sq(moe_lib.moe_ffn(p, xx, cfg)[0]), argnums=(0, 1)))

    def dense_loss(p, xx):  # T*k rows through one SwiGLU: the MoE's active FLOPs as plain GEMMs
        return _sum_sq((jax.nn.silu(xx @ p["wg"]) * (xx @ p["wu"])) @ p["wd"])

    dropless = moe_lib.MoEConfig(num_experts=e, top_k=k, impl=impl)
    variants = {
        "dense_equivalent": (jax.jit(jax.value_and_grad(dense_loss, argnums=(0, 1))),
                             (_dense_params(jax.random.PRNGKey(2), d, h, dtype), jnp.tile(x, (k, 1)))),
        "moe_dropless": (grad_of(dropless), (params, x)),
        "onehot_capacity": (grad_of(moe_lib.MoEConfig(num_experts=e, top_k=k, capacity_factor=capacity_factor)),
                            (params, x)),
        **{f"moe_{i}": (grad_of(moe_lib.MoEConfig(num_experts=e, top_k=k, impl=i)), (params, x))
           for i in layer_impls},
    }
    info = {"experts": e, "top_k": k, "d_model": d, "hidden": h, "tokens": tokens,
            "dtype": jnp.dtype(dtype).name,
            "plan": moe_lib.plan_grouped_gemm(dropless, tokens * k, e)._asdict(),
            "active_gflop_fwd_bwd": 3 * 6 * tokens * k * d * h / 1e9}
    return variants, info


def per_expert_matmul(x: jax.Array, w: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    """The per-expert loop baseline: one GEMM per expert on its (static) slice of the sorted rows."""
    outs, start = [], 0
    for e, n in enumerate(sizes):
        if n:
            outs.append(x[start:start + n] @ w[e])
        start += n
    return jnp.concatenate(outs)


def make_grouped_variants(name: str, tokens: int, variants: list[str], d_model: int = 256,
                          dtype=jnp.float32, pallas_tiles=()) -> tuple[dict, dict]:
    """Fwd+bwd of the expert SwiGLU alone on rows already sorted by expert (the router's real top-k
    assignment), one grouped-GEMM implementation per variant: ``ragged_dot`` (lax.ragged_dot),
    ``per_expert_loop`` (E GEMMs on static slices), ``blocked`` (rows padded to blocks, one GEMM per
    block), ``bucketed`` (parallel/moe's default on GPU: one batched GEMM over a per-expert bulk
    capacity plus blocked overflow), ``pallas`` (the blocked layout in :mod:`parallel.moe.pallas_gemm`'s
    kernels, default tiles; ``pallas_BMxBKxBN`` for each of ``pallas_tiles``) and ``dense_equivalent`` (the
    same rows through one expert's weights: the limit)."""
    e, k, d, h = model_shape(name, d_model)
    params = moe_lib.init_params(jax.random.PRNGKey(0), d, h, e, dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (tokens, d), dtype)
    experts = moe_lib.route(x, params["router"], k).experts.reshape(-1)
    order = jnp.argsort(experts, stable=True)
    rows = jnp.repeat(x, k, axis=0)[order]
    sorted_experts = experts[order]
    sizes = tuple(int(n) for n in np.bincount(np.asarray(experts), minlength=e))

    def layout(impl, tiles=None):  # the rows in parallel/moe's padded layout for ``impl``, its grouped matmul
        plan = moe_lib.plan_grouped_gemm(moe_lib.MoEConfig(num_experts=e, top_k=k, impl=impl,
                                                           block_rows=tiles[0] if tiles else 0), tokens * k, e)
        groups = moe_lib.make_groups(sorted_experts, e, plan.block, plan.capacity)
        padded = jnp.concatenate([rows, jnp.zeros((1, d), dtype)])[groups.row_of_slot]
        if tiles:
            slots = jnp.arange(padded.shape[0], dtype=jnp.int32)
            return padded, plan, lambda a, w: pallas_gemm.gather_matmul(
                a, slots, w, groups.block_expert, groups.num_blocks, plan.block, pallas_gemm.Tiles(*tiles[1:]))
        return padded, plan, lambda a, w: moe_lib.grouped_matmul(a, w, groups, impl, plan.block, plan.capacity)

    layouts = {impl: layout(impl) for impl in ("blocked", "bucketed", "pallas")}
    layouts |= {"pallas_" + "x".join(map(str, t)): layout("pallas", t) for t in pallas_tiles}
    gmm = {"ragged_dot": lambda a, w: lax.ragged_dot(a, w, jnp.asarray(sizes, jnp.int32)),
           "per_expert_loop": lambda a, w: per_expert_matmul(a, w, sizes),
           **{v: lay[2] for v, lay in layouts.items()},
           "dense_equivalent": lambda a, w: a @ w[0]}
    variants = list(variants) + [v for v in layouts if v.startswith("pallas_")]

    def grad_of(matmul):
        def loss(a, w_gu, w_down):
            hidden = matmul(a, w_gu)
            gate, up = jnp.split(hidden, 2, axis=-1)
            return _sum_sq(matmul(jax.nn.silu(gate) * up, w_down))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    w_gu = jnp.concatenate([params["w_gate"], params["w_up"]], axis=-1)
    out = {v: (grad_of(gmm[v]), (layouts[v][0] if v in layouts else rows, w_gu, params["w_down"]))
           for v in variants}
    info = {"experts": e, "top_k": k, "d_model": d, "hidden": h, "tokens": tokens, "rows": tokens * k,
            "dtype": jnp.dtype(dtype).name, "max_group": max(sizes), "min_group": min(sizes),
            **{f"{impl}_plan": layouts[impl][1]._asdict() | {"padded_rows": int(layouts[impl][0].shape[0])}
               for impl in layouts if impl in variants},
            "pallas_default_tiles": {"bk": pallas_gemm.GPU_TILES.bk, "bn": pallas_gemm.GPU_TILES.bn}}
    return out, info


def bench(models, tokens, repeats, capacity_factor, d_model=256, dtype=jnp.float32, impl="auto",
          layer_impls=()) -> list[dict]:
    rows = []
    for name in models:
        variants, info = make_variants(name, tokens, capacity_factor, d_model, dtype, impl, layer_impls)
        variants, errors = compile_variants(variants)
        med, times = time_variants(variants, repeats)
        dropless = {v: t for v, t in med.items() if v.startswith("moe_")}
        fastest = min(dropless, key=dropless.get)
        impls = {v: (moe_lib.resolve_impl(impl) if v == "moe_dropless" else v[4:]) for v in dropless}
        rows.append({"model": name, **info, "median_s": med, "all_s": times, "errors": errors,
                     **{f"{v}_over_dense": t / med["dense_equivalent"] for v, t in dropless.items()
                        if v != "moe_dropless"},
                     "fastest_dropless": impls[fastest], "impl_resolves_to": impls["moe_dropless"],
                     "impl_is_fastest": impls[fastest] == impls["moe_dropless"],
                     "moe_over_dense": med["moe_dropless"] / med["dense_equivalent"],
                     "onehot_over_moe": med["onehot_capacity"] / med["moe_dropless"],
                     "goal_moe_over_dense_le_1.3": med["moe_dropless"] / med["dense_equivalent"] <= 1.3,
                     "goal_2x_over_onehot_at_16plus": (None if info["experts"] < 16 else
                                                       med["onehot_capacity"] / med["moe_dropless"] >= 2.0)})
    return rows


def bench_grouped(models, tokens, repeats, variants, d_model=256, dtype=jnp.float32, pallas_tiles=()) -> list[dict]:
    rows = []
    for name in models:
        fns, info = make_grouped_variants(name, tokens, variants, d_model, dtype, pallas_tiles)
        fns, errors = compile_variants(fns)
        med, times = time_variants(fns, repeats)
        info["errors"] = errors
        ratios = {f"{v}_over_dense": med[v] / med["dense_equivalent"] for v in med
                  if v != "dense_equivalent" and "dense_equivalent" in med}
        if "ragged_dot" in med and "per_expert_loop" in med:
            ratios["per_expert_loop_over_ragged_dot"] = med["per_expert_loop"] / med["ragged_dot"]
        rows.append({"model": name, **info, "median_s": med, "all_s": times, **ratios})
    return rows


def bench_overlap(models, tokens, repeats, mesh, d_model=256, dtype=jnp.float32) -> list[dict]:
    """Comet's overlap gain: the expert-parallel layer with one chunk (dispatch, GEMM, combine in
    sequence) against the cost model's C chunks (chunk i's all_to_all beside chunk i-1's GEMM), fwd+bwd,
    parameters and tokens already laid out on ``mesh``."""
    rows = []
    param_specs, token_spec = moe_lib.shard_specs(mesh)
    local = tokens // math.prod(mesh.shape[a] for a in moe_lib.mesh_token_axes(mesh))
    for name in models:
        e, k, d, h = model_shape(name, d_model)
        params = moe_lib.init_params(jax.random.PRNGKey(0), d, h, e, dtype)
        params = {n: jax.device_put(v, NamedSharding(mesh, param_specs[n])) for n, v in params.items()}
        x = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (tokens, d), dtype),
                           NamedSharding(mesh, token_spec))
        chosen, model = moe_lib.choose_num_chunks(moe_lib.MoEConfig(num_experts=e, top_k=k), local, d, h,
                                              mesh.shape.get("expert", 1), mesh.shape.get("tensor", 1),
                                              jnp.dtype(dtype).itemsize)
        fns = {}
        for label, c in (("chunks_1", 1), (f"chunks_{chosen}", chosen)):
            cfg = moe_lib.MoEConfig(num_experts=e, top_k=k, num_chunks=c)
            fns[label] = (jax.jit(jax.value_and_grad(
                lambda p, xx, cfg=cfg: _sum_sq(moe_lib.moe_ffn(p, xx, cfg, mesh)[0]), argnums=(0, 1))), (params, x))
        med, times = time_variants(fns, repeats)
        rows.append({"model": name, "experts": e, "top_k": k, "d_model": d, "hidden": h, "tokens": tokens,
                     "mesh": dict(mesh.shape), "chosen_chunks": chosen,
                     "modelled_s": {str(c): t for c, t in model["modelled_s"].items()},
                     "median_s": med, "all_s": times,
                     "overlap_gain": med["chunks_1"] / med[f"chunks_{chosen}"]})
    return rows


def predict_overlap(models, tokens, repeats, ep: int, bandwidth: float = 0.0, d_model=256, dtype=jnp.float32,
                    impl="auto", max_chunks: int = 8) -> list[dict]:
    """Comet's overlap on ONE device, as a prediction: for each C dividing ``tokens`` (<= max_chunks), the
    MEASURED fwd+bwd time g of one chunk's expert SwiGLU (``tokens / C * k`` rows, uniformly routed over the
    E / ep experts a device holds under ``ep``-way expert parallelism) and the MODELLED dispatch / combine
    a = latency + bytes / (2 C bandwidth) (bytes: the (ep-1)/ep share of 2 * tokens * k * d values that leaves
    the device, forward and backward), combined by :func:`parallel.moe.overlap.pipeline_time`."""
    defaults = moe_lib.cost_defaults()
    bandwidth, latency = bandwidth or defaults["link_bandwidth"], defaults["collective_latency_s"]
    rows = []
    for name in models:
        e, k, d, h = model_shape(name, d_model)
        local_e = max(1, e // ep)
        params = moe_lib.init_params(jax.random.PRNGKey(0), d, h, local_e, dtype)
        chunks = [c for c in range(1, max_chunks + 1) if tokens % c == 0]
        fns = {}
        for c in chunks:
            m = tokens // c * k
            x = jax.random.normal(jax.random.PRNGKey(c), (m, d), dtype)
            ids = jax.random.randint(jax.random.PRNGKey(100 + c), (m,), 0, local_e)
            plan = moe_lib.plan_grouped_gemm(moe_lib.MoEConfig(num_experts=local_e, top_k=1, impl=impl), m, local_e)
            loss = lambda xx, p, ids=ids, plan=plan: _sum_sq(moe_lib.expert_rows(  # noqa: E731
                xx, ids, p["w_gate"], p["w_up"], p["w_down"], plan))
            fns[c] = (jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (x, params))
        med, _ = time_variants(fns, repeats)
        comm_bytes = 2 * jnp.dtype(dtype).itemsize * tokens * k * d * 2 * (ep - 1) / ep
        exchange = {c: moe_lib.exchange_time(c, comm_bytes, bandwidth, latency) for c in chunks}
        predicted = {c: moe_lib.pipeline_time(c, med[c], exchange[c]) for c in chunks}
        best = min(predicted, key=lambda c: (predicted[c], c))
        rows.append({"model": name, "experts": e, "top_k": k, "d_model": d, "hidden": h, "tokens": tokens,
                     "ep": ep, "local_experts": local_e, "link_bandwidth": bandwidth, "latency_s": latency,
                     "chunk_compute_s": {str(c): med[c] for c in chunks},
                     "chunk_exchange_s": {str(c): exchange[c] for c in chunks},
                     "predicted_s": {str(c): predicted[c] for c in chunks}, "best_chunks": best,
                     "predicted_gain": predicted[1] / predicted[best],
                     "kind": "prediction: measured per-chunk compute on one device, modelled exchange"})
    return rows


def grouped_variants(value: str, backend: str | None = None) -> list[str]:
    """The grouped-GEMM variants of the setting ``grouped`` on ``backend`` (default: JAX's)."""
    if value == "none":
        return []
    if value == "auto":
        accel = (backend or jax.default_backend()) in ("gpu", "tpu")
        return [v for v in GROUPED if v != "pallas" and (accel or v != "ragged_dot")]
    return parse_list("grouped", value, str, GROUPED)


OVERLAP_NOTE = ("overlap not timed: XLA:CPU runs collectives in program order (no latency-hiding scheduler), "
                "so C=1 vs the chosen C and the collective matmuls can only be timed on multi-device GPU/TPU")


def overlap_enabled(choice: str) -> bool:
    if choice == "auto":
        return jax.default_backend() in ("gpu", "tpu") and jax.device_count() > 1
    return choice == "on"


def run(cfg: BenchMoEConfig) -> dict:
    """The record: config, ``rows`` (layer vs dense and one-hot), ``grouped_gemm`` rows and ``overlap``
    (rows, or a note saying why it was not timed)."""
    models = cfg.models_list
    grouped = grouped_variants(cfg.grouped)
    try:
        mesh = mesh_lib.make_mesh(cfg.overlap_mesh) if overlap_enabled(cfg.overlap) else None
    except ValueError as e:
        raise ValueError(f"overlap_mesh={cfg.overlap_mesh!r}: {e}") from None
    dtype = DTYPES[cfg.dtype]
    rows = bench(models, cfg.tokens, cfg.repeats, cfg.capacity_factor, cfg.d_model, dtype, cfg.impl,
                 cfg.layer_impls_list)
    if cfg.pallas_tiles_list and "dense_equivalent" not in grouped:
        grouped = grouped + ["dense_equivalent"]   # the tile sweep's reference
    grouped_rows = (bench_grouped(models, cfg.tokens, cfg.repeats, grouped, cfg.d_model, dtype, cfg.pallas_tiles_list)
                    if grouped else [])
    if cfg.overlap == "predict":
        overlap = {"note": "predicted, not measured (one device)",
                   "rows": predict_overlap(models, cfg.tokens, cfg.repeats, cfg.predict_ep, cfg.link_bandwidth,
                                           cfg.d_model, dtype, cfg.impl)}
    elif mesh is not None:
        overlap = bench_overlap(models, cfg.tokens, cfg.repeats, mesh, cfg.d_model, dtype)
        if jax.default_backend() == "cpu":
            overlap = {"note": OVERLAP_NOTE + " (timed anyway with overlap=on: not an overlap figure)",
                       "rows": overlap}
    else:
        overlap = OVERLAP_NOTE if jax.default_backend() == "cpu" else (
            "overlap not timed: one accelerator device (C = 1 vs chosen C needs an expert axis over several)")
    return {"benchmark": "moe", "config": dataclasses.asdict(cfg), "rows": rows, "grouped_gemm": grouped_rows,
            "overlap": overlap}


def format_table(record: dict) -> str:
    lines = [f"\n{'model':<10} {'E':>3} {'k':>2} {'tokens':>6} {'dense s':>8} {'moe s':>8} {'onehot s':>9} "
             f"{'moe/dense':>9} {'onehot/moe':>10}"]
    for r in record["rows"]:
        m = r["median_s"]
        lines.append(f"{r['model']:<10} {r['experts']:>3} {r['top_k']:>2} {r['tokens']:>6} "
                     f"{m['dense_equivalent']:>8.4f} {m['moe_dropless']:>8.4f} {m['onehot_capacity']:>9.4f} "
                     f"{r['moe_over_dense']:>9.2f} {r['onehot_over_moe']:>10.2f}")
    for r in record["rows"]:
        more = "  ".join(f"{n[:-len('_over_dense')]} {r[n]:.2f}" for n in r
                         if n.startswith("moe_") and n.endswith("_over_dense") and n != "moe_over_dense")
        if more:
            lines.append(f"{r['model']:<10} layer / dense by impl: {more}  |  fastest {r['fastest_dropless']}, "
                         f"impl resolves to {r['impl_resolves_to']}")
        for v, err in r.get("errors", {}).items():
            lines.append(f"{r['model']:<10} {v} FAILED: {err}")
    if record["grouped_gemm"]:
        lines.append("\ngrouped GEMM only (expert SwiGLU on sorted rows), fwd+bwd median s:")
        for r in record["grouped_gemm"]:
            cells = "  ".join(f"{v} {t:.4g}" for v, t in r["median_s"].items())
            ratios = "  ".join(f"{n} {r[n]:.2f}" for n in r
                               if n.endswith("_over_dense") or n.endswith("_over_ragged_dot"))
            lines.append(f"{r['model']:<10} {cells}  |  {ratios}")
            for v, err in r.get("errors", {}).items():
                lines.append(f"{r['model']:<10} grouped {v} FAILED: {err}")
    overlap = record["overlap"]
    if isinstance(overlap, str):
        lines.append(f"\n{overlap}")
    else:
        for r in overlap["rows"] if isinstance(overlap, dict) else overlap:
            if "predicted_s" in r:
                c, p = r["best_chunks"], r["predicted_s"]
                lines.append(f"overlap {r['model']} PREDICTED (ep={r['ep']}, {r['link_bandwidth']:.3g} B/s): "
                             f"C=1 {p['1']:.4g} s, C={c} {p[str(c)]:.4g} s, gain {r['predicted_gain']:.2f}x")
                continue
            c = r["chosen_chunks"]
            lines.append(f"overlap {r['model']}: C=1 {r['median_s']['chunks_1']:.4g} s, C={c} "
                         f"{r['median_s'][f'chunks_{c}']:.4g} s, gain {r['overlap_gain']:.2f}x")
    return "\n".join(lines)


def tour_step(workdir: pathlib.Path) -> dict:
    """Run for the tour (< 60 s): Mixtral- and Phi-shaped layers at the CPU benchmark's 2,048 tokens."""
    rows = bench(["mixtral", "phi35_moe"], 2048, 3, 1.25)
    out = {"benchmark": "moe", "rows": rows, "overlap": OVERLAP_NOTE}
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    run_lib.write_json_atomic(pathlib.Path(workdir) / "bench_moe.json", out)
    return {f"{r['model']}_moe_over_dense": round(r["moe_over_dense"], 2) for r in rows} | {
        f"{r['model']}_onehot_over_moe": round(r["onehot_over_moe"], 2) for r in rows}
