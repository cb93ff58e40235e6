"""The MoE FFN layer: parameters, input checks, the one entry point :func:`moe_ffn` that picks the
execution path, and its Flax glue for the ``ffn_factory`` slot of models.transformer.DecoderLM.

Parameters (a plain dict, see :func:`init_params`): ``router`` [d, E], ``w_gate``/``w_up`` [E, d, h],
``w_down`` [E, h, d]. Expert i computes ``SwiGLU_i(x) = (silu(x W_gate_i) * x W_up_i) W_down_i``; the layer
returns ``y_t = sum_{j<k} g_{t,j} SwiGLU_{e_{t,j}}(x_t)`` (Shazeer et al. 2017, eq. 1). Execution paths, all
numerically the same dropless function unless a capacity factor is set: one device (dropless grouped
GEMMs, :mod:`parallel.moe.grouped_gemm`, or the GShard baseline, :mod:`parallel.moe.capacity`) and
``shard_map`` over a mesh (:mod:`parallel.moe.overlap`).

:class:`MoEFFN` owns the parameters -- router [embed, E], SwiGLU experts w_gate/w_up [E, embed, mlp] and
w_down [E, mlp, embed], annotated with the logical axes ``expert``, ``embed`` and ``mlp`` so that the rules
of parallel/sharding.py put experts on the ``expert`` mesh axis and the expert hidden dimension on
``tensor`` -- and delegates the computation to ``layer_fn(params, x, initializing) -> (y, aux)``;
:func:`moe_ffn_factory` (``moe_config, mesh``) builds the factory that plugs it into DecoderLM (models
imports only JAX libraries, so the layer lives here). The auxiliary losses are sown into the
``intermediates`` collection: ``aux_loss`` (already weighted, to be added to the training loss; summed by
:func:`sown_aux_loss`), ``load_balance_loss`` and ``router_z_loss`` (unweighted, for metrics).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh, PartitionSpec as P

from parallel.moe.capacity import moe_capacity_onehot
from parallel.moe import pallas_gemm
from parallel.moe.config import MoEConfig
from parallel.moe.grouped_gemm import expert_ffn_by_index, expert_rows, plan_grouped_gemm
from parallel.moe.overlap import TOKEN_AXES, _axis, _sharded_body, choose_num_chunks, mesh_token_axes, shard_specs
from parallel.moe.routing import _aux, _combine, load_balance_terms, route, router_z_loss

LayerFn = Callable[[dict, Any, bool], tuple[Any, dict]]


def init_params(key: jax.Array, d_model: int, hidden: int, num_experts: int, dtype=jnp.float32) -> dict:
    """Router and expert weights with fan-in scaled normal initialisation."""
    kr, kg, ku, kd = jax.random.split(key, 4)
    normal = lambda k, shape, fan_in: (jax.random.normal(k, shape, dtype) / math.sqrt(fan_in))  # noqa: E731
    return {"router": normal(kr, (d_model, num_experts), d_model),
            "w_gate": normal(kg, (num_experts, d_model, hidden), d_model),
            "w_up": normal(ku, (num_experts, d_model, hidden), d_model),
            "w_down": normal(kd, (num_experts, hidden, d_model), hidden)}


def validate(cfg: MoEConfig, params: dict, x_shape: tuple, mesh: Mesh | None) -> None:
    """ValueError naming the values for every shape problem, before anything is traced or compiled."""
    if len(x_shape) != 2:
        raise ValueError(f"moe_ffn: x must be [tokens, d_model], got shape {tuple(x_shape)}")
    t, d = x_shape
    e, dw, h = params["w_gate"].shape
    if e != cfg.num_experts:
        raise ValueError(f"w_gate has {e} experts but MoEConfig.num_experts={cfg.num_experts}")
    if dw != d or params["router"].shape != (d, e) or params["w_up"].shape != (e, d, h) \
            or params["w_down"].shape != (e, h, d):
        raise ValueError(f"parameter shapes { {k: tuple(v.shape) for k, v in params.items()} } do not fit "
                         f"d_model={d}, num_experts={e}")
    if cfg.top_k > e:
        raise ValueError(f"top_k={cfg.top_k} must not exceed num_experts={e}")
    ep, tp = _axis(mesh, "expert"), _axis(mesh, "tensor")
    if e % ep:
        raise ValueError(f"num_experts={e} must be divisible by the 'expert' mesh axis size {ep}")
    if h % tp:
        raise ValueError(f"expert hidden size {h} must be divisible by the 'tensor' mesh axis size {tp}")
    shards = math.prod(_axis(mesh, a) for a in TOKEN_AXES)
    if t % shards:
        raise ValueError(f"tokens={t} must be divisible by the token-sharding mesh axes "
                         f"{[a for a in TOKEN_AXES if _axis(mesh, a) > 1]} (product {shards})")
    if cfg.num_chunks and (t // shards) % cfg.num_chunks:
        raise ValueError(f"num_chunks={cfg.num_chunks} must divide the tokens per device {t // shards} "
                         f"(tokens={t} over {shards} devices)")


def moe_dropless_local(params: dict, x: jax.Array, cfg: MoEConfig) -> tuple[jax.Array, dict]:
    """Dropless MoE on one device: x [T, d] -> (y [T, d], aux losses)."""
    t = x.shape[0]
    r = route(x, params["router"], cfg.top_k, cfg.gating, cfg.renormalize)
    plan = plan_grouped_gemm(cfg, t * cfg.top_k, cfg.num_experts)
    if plan.impl == "pallas":
        y = expert_ffn_by_index(x, r.experts, r.weights, params["w_gate"], params["w_up"], params["w_down"], plan)
    else:
        token = jnp.arange(t * cfg.top_k) // cfg.top_k
        out = expert_rows(x[token], r.experts.reshape(-1), params["w_gate"], params["w_up"], params["w_down"], plan)
        y = _combine(r.weights, out, x.dtype)
    counts, probs = load_balance_terms(r, cfg.num_experts)
    return y.astype(x.dtype), _aux(cfg, counts, probs, router_z_loss(r.logits), t)


def moe_ffn(params: dict, x: jax.Array, cfg: MoEConfig, mesh: Mesh | None = None) -> tuple[jax.Array, dict]:
    """The MoE FFN on tokens ``x`` [T, d] (or [..., d]); returns ``(y, aux)`` with y shaped like x.

    ``aux``: ``load_balance_loss``, ``router_z_loss``, ``aux_loss`` (their weighted sum with the config's
    weights) and ``expert_fraction`` [E]. Without a mesh (or a mesh whose ``expert`` and ``tensor`` axes are
    both 1 and no token axis > 1) the single-device path runs; ``cfg.capacity_factor > 0`` without a mesh
    runs the GShard one-hot baseline.
    """
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    validate(cfg, params, x2.shape, mesh)
    ep, tp = _axis(mesh, "expert"), _axis(mesh, "tensor")
    token_axes = mesh_token_axes(mesh)
    if mesh is None or (ep == 1 and tp == 1 and not token_axes):
        fn = moe_capacity_onehot if cfg.capacity_factor else moe_dropless_local
        y, aux = fn(params, x2, cfg)
        return y.reshape(shape), aux
    t_loc = x2.shape[0] // math.prod(_axis(mesh, a) for a in token_axes)
    h = params["w_gate"].shape[-1]
    chunks = cfg.num_chunks
    if not chunks:
        chunks, info = choose_num_chunks(cfg, t_loc, shape[-1], h, ep, tp, x.dtype.itemsize)
        logging.info("MoE Comet chunks: C=%d for %d tokens/device, ep=%d tp=%d (modelled s per C: %s)",
                     chunks, t_loc, ep, tp, {c: f"{s:.3g}" for c, s in info["modelled_s"].items()})
    # every device receives, on average, its own chunk's tokens x k assignments (for its E/ep experts)
    plan = plan_grouped_gemm(cfg, (t_loc // chunks) * cfg.top_k, cfg.num_experts // ep)
    param_specs, tok = shard_specs(mesh)
    aux_specs = {"load_balance_loss": P(), "router_z_loss": P(), "aux_loss": P(), "expert_fraction": P()}
    body = functools.partial(_sharded_body, cfg=cfg, ep=ep, tp=tp, chunks=chunks, plan=plan,
                             token_axes=token_axes, total_tokens=x2.shape[0])
    # Pallas's interpret mode (off GPU) runs a kernel body with program ids that vary over no mesh axis,
    # which shard_map's varying-axes check rejects (jax 0.10.2): the pallas impl runs with the check off.
    check_vma = not (plan.impl == "pallas" and pallas_gemm.interpret())
    y, aux = jax.shard_map(body, mesh=mesh, in_specs=(param_specs, tok), out_specs=(tok, aux_specs),
                           check_vma=check_vma)(
        {k: params[k] for k in param_specs}, x2)
    return y.reshape(shape), aux


class MoEFFN(nn.Module):
    """x [..., d_model] -> y [..., d_model] through ``num_experts`` SwiGLU experts of width ``hidden``."""
    d_model: int
    num_experts: int
    hidden: int
    layer_fn: LayerFn
    num_layers: int = 1  # scales the down-projection init like DecoderLM's dense FFN

    @nn.compact
    def __call__(self, x):
        d, e, h = self.d_model, self.num_experts, self.hidden
        fan_in = lambda scale=1.0: nn.initializers.variance_scaling(  # noqa: E731
            scale, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,))
        params = {
            "router": self.param("router", nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), ("embed", None)), (d, e)),
            "w_gate": self.param("w_gate", nn.with_logical_partitioning(fan_in(), ("expert", "embed", "mlp")),
                                 (e, d, h)),
            "w_up": self.param("w_up", nn.with_logical_partitioning(fan_in(), ("expert", "embed", "mlp")),
                               (e, d, h)),
            "w_down": self.param("w_down", nn.with_logical_partitioning(
                fan_in(1.0 / self.num_layers), ("expert", "mlp", "embed")), (e, h, d)),
        }
        # Experts compute in the activations' dtype (bfloat16 under mixed precision); the router stays float32.
        params = {k: jnp.asarray(nn.unbox(v)).astype(jnp.float32 if k == "router" else x.dtype)
                  for k, v in params.items()}
        y, aux = self.layer_fn(params, x, self.is_initializing())
        for name in ("aux_loss", "load_balance_loss", "router_z_loss"):
            self.sow("intermediates", name, aux[name])
        return y.astype(x.dtype)


def moe_ffn_factory(cfg: MoEConfig, mesh: Mesh | None = None, hidden: int | None = None):
    """An ``ffn_factory`` for models.transformer.DecoderLM: every block's FFN becomes a
    :class:`MoEFFN` running :func:`moe_ffn` (sharded over ``mesh`` when given; the initialising call
    runs unsharded since only shapes matter). ``hidden``: expert width (default: the config's mlp_dim)."""

    def layer_fn(params, x, initializing):
        return moe_ffn(params, x, cfg, None if initializing else mesh)

    def factory(model_config, name):
        return MoEFFN(model_config.d_model, cfg.num_experts, hidden or model_config.mlp_dim, layer_fn,
                      num_layers=model_config.num_layers, name=name)
    return factory


def sown_aux_loss(intermediates) -> jax.Array:
    """Sum of every ``aux_loss`` sown into an ``intermediates`` collection (0.0 when there is none)."""
    total = jnp.zeros((), jnp.float32)
    flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]
    for path, leaf in flat:
        if any(getattr(k, "key", None) == "aux_loss" for k in path):
            total = total + jnp.sum(leaf)
    return total
