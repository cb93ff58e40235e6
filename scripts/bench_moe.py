r"""Benchmark of the MoE layer (parallel/moe.py): forward+backward time of the dropless layer against
(a) dense SwiGLU matmuls doing the same active FLOPs (the physical limit here) and (b) the GShard one-hot
capacity dispatch baseline, side by side in one process, at configurations scaled down from Mixtral
(8 experts, top-2), Qwen2-MoE (64 experts, top-4) and Phi-3.5-MoE (16 experts, top-2).

    python -m scripts.bench_moe --out=bench_moe.json
    python -m scripts.bench_moe --tokens=512 --repeats=3 --models=mixtral

Each repeat runs every variant once (interleaved, so drift of a shared machine hits all alike); figures are
medians over repeats of jitted value-and-grad calls, compilation and one warm-up call excluded.
Overlap (Comet chunks, collective matmuls) CANNOT be timed on CPU: XLA:CPU runs collectives in program
order without a latency-hiding scheduler, so this script reports the C = 1 vs chosen-C comparison only on
multi-device accelerators; on CPU it says so. On a GPU it also times ragged_dot against a per-expert loop.
"""
from __future__ import annotations

import json
import math
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax
from jax.sharding import NamedSharding

from parallel import mesh as mesh_lib
from parallel import moe
from scripts import common

# (experts, top-k, expert hidden / d_model) of the real models: Mixtral 14336/4096, Qwen2-MoE 1408/2048,
# Phi-3.5-MoE 6400/4096; scaled down to --d_model (256 on CPU: hidden 896, 176, 400).
MODELS = {"mixtral": (8, 2, 3.5), "qwen2_moe": (64, 4, 0.6875), "phi35_moe": (16, 2, 1.5625)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GROUPED = ("ragged_dot", "per_expert_loop", "blocked", "bucketed", "dense_equivalent")

flags.DEFINE_string("models", ",".join(MODELS), "Configurations to run (comma-separated).")
flags.DEFINE_integer("tokens", 2048, "Tokens per call.", lower_bound=1)
flags.DEFINE_integer("d_model", 256, "Model width; the expert width keeps the real model's ratio.", lower_bound=8)
flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Activations and weights.")
flags.DEFINE_enum("impl", "auto", list(moe.IMPLS), "Grouped GEMM of the dropless layer (MoEConfig.impl).")
flags.DEFINE_integer("repeats", 5, "Timed repeats per variant (medians).", lower_bound=1)
flags.DEFINE_float("capacity_factor", 1.25, "Capacity factor of the one-hot baseline.")
flags.DEFINE_string("grouped", "auto", "Grouped-GEMM-only comparison (the expert SwiGLU on expert-sorted rows), "
                    f"comma-separated from {GROUPED}; 'auto': all on GPU/TPU, all but ragged_dot on CPU "
                    "(a dense masked product there); 'none': skip.")
flags.DEFINE_enum("overlap", "auto", ["auto", "on", "off"], "Time the sharded layer with C = 1 against the "
                  "cost model's C on --overlap_mesh; auto: on multi-device GPU/TPU only (on CPU the figure "
                  "means nothing: XLA:CPU does not overlap collectives with compute).")
flags.DEFINE_string("overlap_mesh", "expert:-1", "Mesh of the overlap comparison.")
flags.DEFINE_string("out", "", "Write every figure as JSON to this file.")
FLAGS = flags.FLAGS


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
                  dtype=jnp.float32, impl: str = "auto") -> tuple[dict, dict]:
    """Jitted fwd+bwd callables (with their arguments) for one configuration."""
    e, k, d, h = model_shape(name, d_model)
    params = moe.init_params(jax.random.PRNGKey(0), d, h, e, dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (tokens, d), dtype)

    def grad_of(cfg):
        return jax.jit(jax.value_and_grad(lambda p, xx: _sum_sq(moe.moe_ffn(p, xx, cfg)[0]), argnums=(0, 1)))

    def dense_loss(p, xx):  # T*k rows through one SwiGLU: the MoE's active FLOPs as plain GEMMs
        return _sum_sq((jax.nn.silu(xx @ p["wg"]) * (xx @ p["wu"])) @ p["wd"])

    dropless = moe.MoEConfig(num_experts=e, top_k=k, impl=impl)
    variants = {
        "dense_equivalent": (jax.jit(jax.value_and_grad(dense_loss, argnums=(0, 1))),
                             (_dense_params(jax.random.PRNGKey(2), d, h, dtype), jnp.tile(x, (k, 1)))),
        "moe_dropless": (grad_of(dropless), (params, x)),
        "onehot_capacity": (grad_of(moe.MoEConfig(num_experts=e, top_k=k, capacity_factor=capacity_factor)),
                            (params, x)),
    }
    info = {"experts": e, "top_k": k, "d_model": d, "hidden": h, "tokens": tokens,
            "dtype": jnp.dtype(dtype).name,
            "plan": moe.plan_grouped_gemm(dropless, tokens * k, e)._asdict(),
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
                          dtype=jnp.float32) -> tuple[dict, dict]:
    """Fwd+bwd of the expert SwiGLU alone on rows already sorted by expert (the router's real top-k
    assignment), one grouped-GEMM implementation per variant: ``ragged_dot`` (lax.ragged_dot),
    ``per_expert_loop`` (E GEMMs on static slices), ``blocked`` (rows padded to blocks, one GEMM per
    block), ``bucketed`` (parallel/moe.py's default on GPU: one batched GEMM over a per-expert bulk
    capacity plus blocked overflow) and ``dense_equivalent`` (the same rows through one expert's weights: the limit)."""
    e, k, d, h = model_shape(name, d_model)
    params = moe.init_params(jax.random.PRNGKey(0), d, h, e, dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (tokens, d), dtype)
    experts = moe.route(x, params["router"], k).experts.reshape(-1)
    order = jnp.argsort(experts, stable=True)
    rows = jnp.repeat(x, k, axis=0)[order]
    sorted_experts = experts[order]
    sizes = tuple(int(n) for n in np.bincount(np.asarray(experts), minlength=e))

    def layout(impl):  # the rows in parallel/moe.py's padded layout for ``impl`` and its grouped matmul
        plan = moe.plan_grouped_gemm(moe.MoEConfig(num_experts=e, top_k=k, impl=impl), tokens * k, e)
        groups = moe.make_groups(sorted_experts, e, plan.block, plan.capacity)
        padded = jnp.concatenate([rows, jnp.zeros((1, d), dtype)])[groups.row_of_slot]
        return padded, plan, lambda a, w: moe.grouped_matmul(a, w, groups, impl, plan.block, plan.capacity)

    layouts = {impl: layout(impl) for impl in ("blocked", "bucketed")}
    gmm = {"ragged_dot": lambda a, w: lax.ragged_dot(a, w, jnp.asarray(sizes, jnp.int32)),
           "per_expert_loop": lambda a, w: per_expert_matmul(a, w, sizes),
           "blocked": layouts["blocked"][2], "bucketed": layouts["bucketed"][2],
           "dense_equivalent": lambda a, w: a @ w[0]}

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
               for impl in layouts}}
    return out, info


def time_variants(variants: dict, repeats: int) -> tuple[dict, dict]:
    """Medians (and all times) of each variant's call; compilation and one warm-up call excluded, the
    variants interleaved within each repeat so drift of a shared machine hits all alike."""
    for fn, args in variants.values():
        jax.block_until_ready(fn(*args))
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for v, (fn, args) in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}, times


def bench(models, tokens, repeats, capacity_factor, d_model=256, dtype=jnp.float32, impl="auto") -> list[dict]:
    rows = []
    for name in models:
        variants, info = make_variants(name, tokens, capacity_factor, d_model, dtype, impl)
        med, times = time_variants(variants, repeats)
        rows.append({"model": name, **info, "median_s": med, "all_s": times,
                     "moe_over_dense": med["moe_dropless"] / med["dense_equivalent"],
                     "onehot_over_moe": med["onehot_capacity"] / med["moe_dropless"],
                     "goal_moe_over_dense_le_1.3": med["moe_dropless"] / med["dense_equivalent"] <= 1.3,
                     "goal_2x_over_onehot_at_16plus": (None if info["experts"] < 16 else
                                                       med["onehot_capacity"] / med["moe_dropless"] >= 2.0)})
    return rows


def bench_grouped(models, tokens, repeats, variants, d_model=256, dtype=jnp.float32) -> list[dict]:
    rows = []
    for name in models:
        fns, info = make_grouped_variants(name, tokens, variants, d_model, dtype)
        med, times = time_variants(fns, repeats)
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
    param_specs, token_spec = moe.shard_specs(mesh)
    local = tokens // math.prod(mesh.shape[a] for a in moe.mesh_token_axes(mesh))
    for name in models:
        e, k, d, h = model_shape(name, d_model)
        params = moe.init_params(jax.random.PRNGKey(0), d, h, e, dtype)
        params = {n: jax.device_put(v, NamedSharding(mesh, param_specs[n])) for n, v in params.items()}
        x = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (tokens, d), dtype),
                           NamedSharding(mesh, token_spec))
        chosen, model = moe.choose_num_chunks(moe.MoEConfig(num_experts=e, top_k=k), local, d, h,
                                              mesh.shape.get("expert", 1), mesh.shape.get("tensor", 1),
                                              jnp.dtype(dtype).itemsize)
        fns = {}
        for label, c in (("chunks_1", 1), (f"chunks_{chosen}", chosen)):
            cfg = moe.MoEConfig(num_experts=e, top_k=k, num_chunks=c)
            fns[label] = (jax.jit(jax.value_and_grad(
                lambda p, xx, cfg=cfg: _sum_sq(moe.moe_ffn(p, xx, cfg, mesh)[0]), argnums=(0, 1))), (params, x))
        med, times = time_variants(fns, repeats)
        rows.append({"model": name, "experts": e, "top_k": k, "d_model": d, "hidden": h, "tokens": tokens,
                     "mesh": dict(mesh.shape), "chosen_chunks": chosen,
                     "modelled_s": {str(c): t for c, t in model["modelled_s"].items()},
                     "median_s": med, "all_s": times,
                     "overlap_gain": med["chunks_1"] / med[f"chunks_{chosen}"]})
    return rows


def grouped_variants_from_flag(value: str) -> list[str]:
    if value == "none":
        return []
    if value == "auto":
        accel = jax.default_backend() in ("gpu", "tpu")
        return [v for v in GROUPED if accel or v != "ragged_dot"]
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in chosen if v not in GROUPED]
    if bad or not chosen:
        raise ValueError(f"--grouped={value!r}: unknown {bad}; allowed: {list(GROUPED)}, 'auto' or 'none'")
    return chosen


OVERLAP_NOTE = ("overlap not timed: XLA:CPU runs collectives in program order (no latency-hiding scheduler), "
                "so C=1 vs the chosen C and the collective matmuls can only be timed on multi-device GPU/TPU")


def print_table(rows) -> None:
    print(f"\n{'model':<10} {'E':>3} {'k':>2} {'tokens':>6} {'dense s':>8} {'moe s':>8} {'onehot s':>9} "
          f"{'moe/dense':>9} {'onehot/moe':>10}")
    for r in rows:
        m = r["median_s"]
        print(f"{r['model']:<10} {r['experts']:>3} {r['top_k']:>2} {r['tokens']:>6} {m['dense_equivalent']:>8.4f} "
              f"{m['moe_dropless']:>8.4f} {m['onehot_capacity']:>9.4f} {r['moe_over_dense']:>9.2f} "
              f"{r['onehot_over_moe']:>10.2f}")


def tour_step(workdir: pathlib.Path) -> dict:
    """Run for scripts/tour.py (< 60 s): Mixtral- and Phi-shaped layers at the CPU benchmark's 2,048 tokens."""
    rows = bench(["mixtral", "phi35_moe"], 2048, 3, 1.25)
    out = {"benchmark": "moe", "rows": rows, "overlap": OVERLAP_NOTE}
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(workdir) / "bench_moe.json").write_text(json.dumps(out, indent=2) + "\n")
    return {f"{r['model']}_moe_over_dense": round(r["moe_over_dense"], 2) for r in rows} | {
        f"{r['model']}_onehot_over_moe": round(r["onehot_over_moe"], 2) for r in rows}


def print_grouped_table(rows) -> None:
    print("\ngrouped GEMM only (expert SwiGLU on sorted rows), fwd+bwd median s:")
    for r in rows:
        cells = "  ".join(f"{v} {t:.4g}" for v, t in r["median_s"].items())
        ratios = "  ".join(f"{n} {r[n]:.2f}" for n in r if n.endswith("_over_dense") or n.endswith("_over_ragged_dot"))
        print(f"{r['model']:<10} {cells}  |  {ratios}")


def overlap_enabled(choice: str) -> bool:
    if choice == "auto":
        return jax.default_backend() in ("gpu", "tpu") and jax.device_count() > 1
    return choice == "on"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.use_async_collectives()
    models = [m.strip() for m in FLAGS.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"--models={FLAGS.models!r}: unknown {bad}; allowed: {list(MODELS)}")
    if not FLAGS.capacity_factor > 0:
        raise ValueError(f"--capacity_factor={FLAGS.capacity_factor} must be > 0")
    grouped = grouped_variants_from_flag(FLAGS.grouped)
    mesh = mesh_lib.make_mesh(FLAGS.overlap_mesh) if overlap_enabled(FLAGS.overlap) else None
    dtype = DTYPES[FLAGS.dtype]
    rows = bench(models, FLAGS.tokens, FLAGS.repeats, FLAGS.capacity_factor, FLAGS.d_model, dtype, FLAGS.impl)
    print_table(rows)
    grouped_rows = bench_grouped(models, FLAGS.tokens, FLAGS.repeats, grouped, FLAGS.d_model, dtype) if grouped else []
    if grouped_rows:
        print_grouped_table(grouped_rows)
    if mesh is not None:
        overlap = bench_overlap(models, FLAGS.tokens, FLAGS.repeats, mesh, FLAGS.d_model, dtype)
        for r in overlap:
            c = r["chosen_chunks"]
            print(f"overlap {r['model']}: C=1 {r['median_s']['chunks_1']:.4g} s, C={c} "
                  f"{r['median_s'][f'chunks_{c}']:.4g} s, gain {r['overlap_gain']:.2f}x")
        if jax.default_backend() == "cpu":
            overlap = {"note": OVERLAP_NOTE + " (timed anyway with --overlap=on: not an overlap figure)",
                       "rows": overlap}
    else:
        overlap = OVERLAP_NOTE if jax.default_backend() == "cpu" else (
            "overlap not timed: one accelerator device (C = 1 vs chosen C needs an expert axis over several)")
        print(f"\n{overlap}")
    if FLAGS.out:
        report = {"benchmark": "moe", "config": {k: FLAGS[k].value for k in (
                      "models", "tokens", "d_model", "dtype", "impl", "repeats", "capacity_factor", "grouped")},
                  "machine": common.machine_info(),
                  "rows": rows, "grouped_gemm": grouped_rows, "overlap": overlap}
        pathlib.Path(FLAGS.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
