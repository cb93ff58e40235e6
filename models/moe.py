"""Mixture-of-Experts feed-forward block (Flax linen) for the ``ffn_factory`` slot of DecoderLM.

The module owns the parameters -- router [embed, E], SwiGLU experts w_gate/w_up [E, embed, mlp] and
w_down [E, mlp, embed], annotated with the logical axes ``expert``, ``embed`` and ``mlp`` so that the rules
of parallel/sharding.py put experts on the ``expert`` mesh axis and the expert hidden dimension on
``tensor`` -- and delegates the computation to ``layer_fn(params, x, initializing) -> (y, aux)``. The
routing / dispatch / grouped-GEMM code lives in parallel/moe.py (this package imports only JAX libraries);
``parallel.moe.moe_ffn_factory(moe_config, mesh)`` builds the factory that plugs the two together.

The auxiliary losses are sown into the ``intermediates`` collection: ``aux_loss`` (already weighted, to be
added to the training loss), ``load_balance_loss`` and ``router_z_loss`` (unweighted, for metrics).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

LayerFn = Callable[[dict, Any, bool], tuple[Any, dict]]


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
        params = {k: jnp.asarray(nn.unbox(v)) for k, v in params.items()}
        y, aux = self.layer_fn(params, x, self.is_initializing())
        for name in ("aux_loss", "load_balance_loss", "router_z_loss"):
            self.sow("intermediates", name, aux[name])
        return y.astype(x.dtype)
