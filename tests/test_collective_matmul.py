"""Collective matmuls (parallel/collective_matmul.py) on 8 virtual devices: against NumPy in outputs and
gradients, and the compiled HLO's structure (a ring of collective-permutes between the dots, no all-gather
or reduce-scatter of the operand). Tolerances: float32 vs float64 NumPy, rtol 1e-5, atol 1e-5."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from parallel import collective_matmul as cm
from parallel import mesh as mesh_lib

TOL = dict(rtol=1e-5, atol=1e-5)


def problem(seed=0, m=32, k=16, n=24):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)


def ag_fn(mesh, bidirectional):
    # rows of x sharded over the ring, columns of w sharded: out [m, n] with columns sharded
    return jax.jit(jax.shard_map(lambda x, w: cm.ag_matmul(x, w, "tensor", bidirectional=bidirectional),
                                 mesh=mesh, in_specs=(P("tensor", None), P(None, "tensor")),
                                 out_specs=P(None, "tensor")))


def rs_fn(mesh, bidirectional):
    # contraction dim sharded: a [m, k/n], w [k/n, n]; out rows sharded
    return jax.jit(jax.shard_map(lambda a, w: cm.matmul_rs(a, w, "tensor", bidirectional=bidirectional),
                                 mesh=mesh, in_specs=(P(None, "tensor"), P("tensor", None)),
                                 out_specs=P("tensor", None)))


@pytest.mark.parametrize("ring,bidirectional", [(8, True), (8, False), (3, True), (2, True)])
def test_all_gather_matmul_and_reduce_scatter_match_numpy(devices, ring, bidirectional):
    mesh = mesh_lib.make_mesh(f"tensor:{ring}", devices[:ring])
    x, w = problem(m=8 * ring, k=4 * ring, n=6 * ring)
    expect = x.astype(np.float64) @ w
    np.testing.assert_allclose(ag_fn(mesh, bidirectional)(x, w), expect, **TOL)
    np.testing.assert_allclose(rs_fn(mesh, bidirectional)(x, w), expect, **TOL)
    # gradients of <cot, x @ w> through both rings: d/dx = cot w^T, d/dw = x^T cot
    cot = np.random.default_rng(1).normal(size=expect.shape).astype(np.float32)
    for fn in (ag_fn(mesh, bidirectional), rs_fn(mesh, bidirectional)):
        gx, gw = jax.grad(lambda a, b: jnp.sum(fn(a, b) * cot), argnums=(0, 1))(x, w)
        np.testing.assert_allclose(gx, cot.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gw, x.T.astype(np.float64) @ cot, rtol=1e-4, atol=1e-4)


def entry_instructions(hlo: str) -> list[tuple[str, str, list[str], bool]]:
    """(name, opcode, operand names, is_dot) of the scheduled entry computation, in schedule order
    (is_scheduled=true: program order is XLA's schedule). A dot may sit inside a fusion; its metadata
    op_name still says dot_general."""
    entry = hlo[hlo.index("ENTRY"):]
    entry = entry[:entry.index("\n}")]
    out = []
    for line in entry.splitlines()[1:]:
        m = re.match(r"\s*(?:ROOT )?%([^ ]+) = \S+ ([a-z][a-z0-9\-]*)\((.*?)\)", line)
        if m:
            operands = re.findall(r"%([^ ,)]+)", m.group(3))
            out.append((m.group(1), m.group(2), operands, "dot_general" in line.split("metadata=")[-1]))
    return out


def depends_on(instrs, predicate) -> dict[str, bool]:
    """name -> whether the instruction transitively consumes an instruction satisfying ``predicate``."""
    by_name = {i[0]: i for i in instrs}
    dep: dict[str, bool] = {}
    for name, _, operands, _ in instrs:
        dep[name] = any(dep.get(o, False) or predicate(by_name[o]) for o in operands if o in by_name)
    return dep


@pytest.mark.parametrize("kind", ["ag", "rs"])
def test_compiled_hlo_rings_of_permutes_hide_behind_independent_dots(devices, kind):
    mesh = mesh_lib.make_mesh("tensor:8", devices)
    x, w = problem(m=64, k=32, n=48)
    fn = ag_fn(mesh, True) if kind == "ag" else rs_fn(mesh, True)
    hlo = fn.lower(x, w).compile().as_text()
    assert "is_scheduled=true" in hlo
    instrs = entry_instructions(hlo)
    ops = [op for _, op, _, _ in instrs]
    is_permute = lambda i: i[1].startswith("collective-permute")  # noqa: E731
    is_dot = lambda i: i[3]  # noqa: E731
    permutes = [k for k, i in enumerate(instrs) if is_permute(i) and not i[1].endswith("-done")]
    dots = [k for k, i in enumerate(instrs) if is_dot(i)]
    # no monolithic collective of the operand or of the result
    assert not any(op.startswith(("all-gather", "reduce-scatter", "all-reduce", "all-to-all")) for op in ops), ops
    if kind == "ag":
        # bidirectional ring of 8: 4 hops one way + 3 the other; one dot per source shard
        assert (len(permutes), len(dots)) == (7, 8), ops
        # every transfer moves data that existed before any GEMM: no permute depends on a dot
        dep = depends_on(instrs, is_dot)
        assert not any(dep[instrs[k][0]] for k in permutes)
        # program order interleaves them: after the first two sends, a dot runs between consecutive sends
        between = sum(1 for a, b in zip(permutes, permutes[1:]) if any(a < d < b for d in dots))
        assert between >= len(permutes) - 2, ops
        assert min(dots) < permutes[-1] < max(dots)
    else:
        # 7 hops each way (half of the columns each way); one dot per (destination, direction)
        assert (len(permutes), len(dots)) == (14, 16), ops
        # no GEMM waits for a transfer (each step's GEMM can run while the previous partial travels)
        dep = depends_on(instrs, is_permute)
        assert not any(dep[instrs[k][0]] for k in dots)
        # and the ring is a chain: every send after the first of each direction carries a received sum
        dep_p = depends_on(instrs, is_permute)
        assert sum(dep_p[instrs[k][0]] for k in permutes) == 12
