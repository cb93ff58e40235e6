"""Logical-axis sharding of model parameters (MaxText style: named axes, not device indices).

Modules annotate parameters with logical names (``embed``, ``mlp``, ``heads``, ...); a rule table maps
each logical name to a mesh axis or to None (replicated). Rules that name an axis the mesh lacks are
dropped, so one rule table serves a data-only mesh and a data x tensor x expert mesh alike.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh

# Megatron-style tensor parallelism over `tensor`, experts over `expert`; the rest replicated.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("vocab", None),
    ("embed", None),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("layers", None),
)


def logical_rules(mesh: Mesh, rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES):
    """Keeps the rules whose mesh axis exists in ``mesh`` with size > 1; others become replicated."""
    return tuple((logical, axis if axis in mesh.shape and mesh.shape[axis] > 1 else None)
                 for logical, axis in rules)


def param_shardings(abstract_boxed_params, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a (boxed, logically annotated) parameter tree, e.g. from ``jax.eval_shape(init)``."""
    specs = nn.get_partition_spec(abstract_boxed_params)
    return nn.logical_to_mesh_sharding(specs, mesh, logical_rules(mesh, rules))


def init_sharded(init_fn, mesh: Mesh, *args, rules=DEFAULT_RULES):
    """Runs ``init_fn(*args)`` (returning boxed params) under jit so each parameter is born sharded.

    Returns the unboxed parameter tree and its shardings.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = param_shardings(abstract, mesh, rules)
    params = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return params, shardings


def like_params(abstract_tree, params, param_shardings, default):
    """Shardings for an optimiser-state tree: every subtree with the parameters' structure (Adam's
    moments, momentum buffers) takes the parameters' shardings; any other leaf (step counts) ``default``."""
    params_def = jax.tree.structure(params)
    matches = lambda x: jax.tree.structure(x) == params_def  # noqa: E731
    return jax.tree.map(lambda sub: param_shardings if matches(sub) else default, abstract_tree,
                        is_leaf=matches)
