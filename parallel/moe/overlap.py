"""Expert parallelism with Comet-style overlap (Zhang et al. 2025, "Comet", MLSys'25: fine-grained
overlap of MoE communication and computation).

Inside ``shard_map`` (:func:`_sharded_body`) experts live on the ``expert`` mesh axis and tokens travel to
them with ``all_to_all`` at a fixed per-destination capacity (XLA:CPU has no ``ragged_all_to_all``;
dropless when ``capacity_factor == 0``: capacity = the worst case, else GShard's priority order). Inside
experts the hidden dimension is split over ``tensor`` and the expert GEMMs are collective matmuls
(:mod:`parallel.collective_matmul`). The local tokens are cut into C chunks: chunk i's dispatch
``all_to_all`` does not depend on chunk i-1's expert GEMM, nor chunk i-1's combine on chunk i's GEMM, so
a latency-hiding scheduler overlaps them. C comes from the cost model :func:`choose_num_chunks`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from parallel.moe.capacity import priority_positions
from parallel.moe.config import MoEConfig
from parallel.moe.grouped_gemm import GemmPlan, expert_rows
from parallel.moe.routing import _aux, _combine, load_balance_terms, route, router_z_loss

TOKEN_AXES = ("data", "expert", "tensor")  # mesh axes that split tokens (batch and sequence parallel)


COST_DEFAULTS = {  # per device: FLOP/s, bytes/s of the expert-axis link, per-collective and per-GEMM latency
    "cpu": dict(device_flops=5e10, link_bandwidth=1e10, collective_latency_s=2e-5, gemm_overhead_s=1e-5),
    "gpu": dict(device_flops=4e14, link_bandwidth=2e11, collective_latency_s=1e-5, gemm_overhead_s=5e-6),
    "tpu": dict(device_flops=1.9e14, link_bandwidth=9e10, collective_latency_s=1e-5, gemm_overhead_s=5e-6),
}


def chunk_time(num_chunks: int, gemm_flops: float, comm_bytes: float, flops: float, bandwidth: float,
               latency: float, overhead: float) -> float:
    """Modelled time of the dispatch -> expert GEMM -> combine pipeline cut into C chunks.

    Per chunk: a = latency + comm_bytes / (2 C bandwidth) for each of dispatch and combine, and
    g = overhead + gemm_flops / (C flops). Without overlap (C = 1) the time is 2a + g; with C chunks the
    first dispatch and last (GEMM, combine) are exposed and the rest runs at the pace of the slower of the
    GEMM and the link: T(C) = 2a + g + (C - 1) max(g, 2a). Smaller chunks hide more but pay the fixed
    latencies C times, so T has an interior minimum when communication and compute are comparable.
    """
    g = overhead + gemm_flops / (num_chunks * flops)
    return pipeline_time(num_chunks, g, exchange_time(num_chunks, comm_bytes, bandwidth, latency))


def exchange_time(num_chunks: int, comm_bytes: float, bandwidth: float, latency: float) -> float:
    """One chunk's dispatch (or combine) ``all_to_all``: a = latency + comm_bytes / (2 C bandwidth)."""
    return latency + comm_bytes / (2 * num_chunks * bandwidth)


def pipeline_time(num_chunks: int, chunk_compute_s: float, chunk_exchange_s: float) -> float:
    """T(C) = 2a + g + (C - 1) max(g, 2a) for per-chunk compute g and per-chunk dispatch / combine a (see
    :func:`chunk_time`); also used with g MEASURED on one device to predict the overlap (bench_moe)."""
    g, a = chunk_compute_s, chunk_exchange_s
    return 2 * a + g + (num_chunks - 1) * max(g, 2 * a)


def cost_defaults(backend: str | None = None) -> dict:
    """:data:`COST_DEFAULTS` of ``backend`` (default: JAX's; cuda / rocm count as gpu, anything unknown as cpu)."""
    backend = backend or jax.default_backend()
    return COST_DEFAULTS.get(backend if backend in COST_DEFAULTS else ("gpu" if backend in ("cuda", "rocm") else "cpu"))


def choose_num_chunks(cfg: MoEConfig, local_tokens: int, d_model: int, hidden: int, ep: int, tp: int,
                      itemsize: int = 4, backend: str | None = None) -> tuple[int, dict]:
    """Comet's C: the divisor of ``local_tokens`` (<= cfg.max_chunks) minimising :func:`chunk_time`.

    FLOPs per device: 6 * tokens * k * d * h / tp (SwiGLU: three GEMMs). Bytes per device: the dispatch
    plus combine ``all_to_all`` (the (ep-1)/ep share of 2 * tokens * k * d values that leaves the device)
    plus the tensor rings ((tp-1)/tp of the gathered rows and of the reduce-scattered partials).
    """
    defaults = cost_defaults(backend)
    flops = cfg.device_flops or defaults["device_flops"]
    bandwidth = cfg.link_bandwidth or defaults["link_bandwidth"]
    latency = cfg.collective_latency_s or defaults["collective_latency_s"]
    overhead = cfg.gemm_overhead_s or defaults["gemm_overhead_s"]
    assignments = local_tokens * cfg.top_k
    gemm_flops = 6.0 * assignments * d_model * hidden / tp
    comm_bytes = itemsize * assignments * d_model * (2 * (ep - 1) / ep + 2 * (tp - 1))
    candidates = [c for c in range(1, cfg.max_chunks + 1) if local_tokens % c == 0]
    times = {c: chunk_time(c, gemm_flops, comm_bytes, flops, bandwidth, latency, overhead) for c in candidates}
    best = min(times, key=lambda c: (times[c], c))
    info = {"chosen": best, "modelled_s": times, "gemm_flops": gemm_flops, "comm_bytes": comm_bytes,
            "device_flops": flops, "link_bandwidth": bandwidth}
    return best, info


def _axis(mesh: Mesh | None, name: str) -> int:
    return int(mesh.shape[name]) if mesh is not None and name in mesh.shape else 1


def mesh_token_axes(mesh: Mesh | None) -> tuple[str, ...]:
    """The axes of ``mesh`` (of size > 1) that split the tokens."""
    return tuple(a for a in TOKEN_AXES if _axis(mesh, a) > 1)


def shard_specs(mesh: Mesh) -> tuple[dict, P]:
    """How the sharded layer lays out its inputs on ``mesh``: the parameters' PartitionSpecs (experts over
    ``expert``, the hidden dimension over ``tensor``) and the tokens' (over every token axis)."""
    ea = "expert" if _axis(mesh, "expert") > 1 else None
    ta = "tensor" if _axis(mesh, "tensor") > 1 else None
    params = {"router": P(), "w_gate": P(ea, None, ta), "w_up": P(ea, None, ta), "w_down": P(ea, ta, None)}
    return params, P(mesh_token_axes(mesh) or None)


def _sharded_body(params, x, *, cfg: MoEConfig, ep: int, tp: int, chunks: int, plan: GemmPlan,
                  token_axes: tuple, total_tokens: int):
    """Inside shard_map: local tokens x [T_loc, d]; local experts [E/ep, d, h/tp]."""
    e_loc = cfg.num_experts // ep
    r = route(x, params["router"], cfg.top_k, cfg.gating, cfg.renormalize)
    t_loc, d = x.shape
    tc = t_loc // chunks
    tensor_axis = "tensor" if tp > 1 else None
    if ep > 1:
        if cfg.capacity_factor:
            cap = max(1, math.ceil(cfg.capacity_factor * tc * cfg.top_k / ep))
        else:
            cap = tc * min(cfg.top_k, e_loc)  # worst case: every token sends all it can to one device
        cap = min(cap, tc * min(cfg.top_k, e_loc))
    outputs = []
    for c in range(chunks):  # Comet: chunk c's all_to_all is independent of chunk c-1's expert GEMM
        xc = lax.dynamic_slice_in_dim(x, c * tc, tc)
        experts = lax.dynamic_slice_in_dim(r.experts, c * tc, tc)
        token = jnp.arange(tc * cfg.top_k) // cfg.top_k
        flat_e = experts.reshape(-1)
        if ep == 1:
            out = expert_rows(xc[token], flat_e, params["w_gate"], params["w_up"], params["w_down"], plan,
                              tensor_axis, cfg.bidirectional)
        else:
            dev = experts // e_loc
            pos = priority_positions(experts, ep, lambda ex: ex // e_loc).reshape(-1)
            dev = dev.reshape(-1)
            keep = pos < cap
            slot = jnp.where(keep, dev * cap + pos, ep * cap)
            m = tc * cfg.top_k
            row_of_slot = jnp.full((ep * cap,), m, jnp.int32).at[slot].set(jnp.arange(m, dtype=jnp.int32),
                                                                           mode="drop")
            send_x = jnp.concatenate([xc[token], jnp.zeros((1, d), x.dtype)])[row_of_slot]
            send_e = jnp.concatenate([flat_e % e_loc, jnp.full((1,), -1, jnp.int32)])[row_of_slot]
            recv_x = lax.all_to_all(send_x, "expert", 0, 0, tiled=True)
            recv_e = lax.all_to_all(send_e, "expert", 0, 0, tiled=True)
            done = expert_rows(recv_x, recv_e, params["w_gate"], params["w_up"], params["w_down"], plan,
                               tensor_axis, cfg.bidirectional)
            back = lax.all_to_all(done, "expert", 0, 0, tiled=True)
            back = jnp.concatenate([back, jnp.zeros((1, d), back.dtype)])
            out = back[slot]
        outputs.append(_combine(lax.dynamic_slice_in_dim(r.weights, c * tc, tc), out, x.dtype))
    y = jnp.concatenate(outputs) if chunks > 1 else outputs[0]
    counts, probs = load_balance_terms(r, cfg.num_experts)
    z = router_z_loss(r.logits)
    counts, probs, z = (lax.psum(v, token_axes) for v in (counts, probs, z))
    return y, _aux(cfg, counts, probs, z, total_tokens)
