"""Expert- and tensor-parallel MoE on 8 virtual devices against the NumPy loop reference, in outputs and
in gradients w.r.t. the inputs and every parameter (tolerances of tests/test_moe.py), plus the structure
of the Comet chunked schedule. The default run covers every variant once; ``-m slow`` the full grid."""
import jax
import numpy as np
import pytest

from parallel import mesh as mesh_lib
from parallel import moe
from test_moe import FWD, as32, check_against_reference
from test_moe_reference import make_problem, ref_forward

DEFAULT = [("expert:4,tensor:2", 2)]  # plus data:2,expert:2,tensor:2 (ragged) below; expert:8 is in the slow grid
GRID = [(spec, c) for spec in ("expert:8", "tensor:8", "expert:4,tensor:2", "expert:2,tensor:4",
                               "data:2,expert:2,tensor:2") for c in (1, 2, 4, 8) if (spec, c) not in DEFAULT]


def run_case(devices, spec, chunks, gating="softmax", renormalize=True, top_k=2, impl="blocked"):
    params, x, cot = make_problem(seed=7, tokens=64, d=8, h=16, experts=8)
    cfg = moe.MoEConfig(num_experts=8, top_k=top_k, gating=gating, renormalize=renormalize, num_chunks=chunks,
                        impl=impl, block_rows=4, bucket_factor=0.5)
    check_against_reference(params, x, cot, cfg, mesh_lib.make_mesh(spec, devices))


@pytest.mark.parametrize("spec,chunks", DEFAULT)
def test_sharded_matches_reference(devices, spec, chunks):
    run_case(devices, spec, chunks)


@pytest.mark.parametrize("spec", ["expert:4,tensor:2", pytest.param("tensor:8", marks=pytest.mark.slow)])
def test_sharded_bucketed_matches_reference(devices, spec):
    """The bucketed layout (bulk batched GEMM + blocked overflow; bucket_factor 0.5 forces overflow)
    through the expert all_to_all and the tensor collective-matmul rings."""
    run_case(devices, spec, 2, impl="bucketed")


@pytest.mark.parametrize("spec", ["expert:4,tensor:2", pytest.param("expert:8", marks=pytest.mark.slow)])
def test_sharded_pallas_matches_reference(devices, spec):
    """The Pallas grouped GEMMs (interpret mode) inside shard_map: through the expert all_to_all and the
    tensor collective-matmul rings (there the rows arrive gathered; the kernels read them in place)."""
    run_case(devices, spec, 2, impl="pallas")


@pytest.mark.slow
@pytest.mark.parametrize("spec,chunks", GRID)
def test_sharded_matches_reference_full_grid(devices, spec, chunks):
    run_case(devices, spec, chunks)


def test_sharded_ragged_sigmoid_top3_on_the_three_axis_mesh(devices):
    """The default-run representative of the rest of the grid: the ``ragged`` grouped GEMM (the TPU
    default), sigmoid gating with top-3 and no renormalisation, on data x expert x tensor at once."""
    params, x, cot = make_problem(seed=8, tokens=64, d=8, h=16, experts=8)
    cfg = moe.MoEConfig(num_experts=8, top_k=3, gating="sigmoid", renormalize=False, num_chunks=2, impl="ragged")
    check_against_reference(params, x, cot, cfg, mesh_lib.make_mesh("data:2,expert:2,tensor:2", devices))


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["ragged", "blocked"])
def test_sharded_sigmoid_top3_and_ragged(devices, impl):
    params, x, cot = make_problem(seed=8, tokens=64, d=8, h=16, experts=8)
    cfg = moe.MoEConfig(num_experts=8, top_k=3, gating="sigmoid", renormalize=False, num_chunks=2, impl=impl)
    check_against_reference(params, x, cot, cfg, mesh_lib.make_mesh("expert:4,tensor:2", devices))


def test_expert_parallel_capacity_drops_per_destination_device(devices):
    """With a capacity factor, each (source device, chunk) sends at most ``cap`` assignments to each
    destination device, GShard priority; the rest are dropped. NumPy re-derives the kept set."""
    params, x, _ = make_problem(seed=9, tokens=64, d=8, h=16, experts=8)
    ep, chunks, top_k, e_loc = 4, 2, 2, 2
    cfg = moe.MoEConfig(num_experts=8, top_k=top_k, capacity_factor=0.5, num_chunks=chunks, block_rows=4)
    tc = 64 // 8 // chunks  # tokens per device per chunk (8 devices split the tokens)
    cap = int(np.ceil(0.5 * tc * top_k / ep))

    def keep_rule(tops):
        kept = np.zeros(tops.shape, bool)
        for start in range(0, 64, tc):  # one (source device, chunk) block of tokens
            fill = np.zeros(ep, int)
            for j in range(top_k):
                for t in range(start, start + tc):
                    dev = tops[t, j] // e_loc
                    kept[t, j] = fill[dev] < cap
                    fill[dev] += 1
        return kept

    ref_y, _, kept = ref_forward(params, x, top_k, keep_rule=keep_rule)
    assert 0 < (~kept).sum() < kept.size
    y, _ = jax.jit(lambda p, xx: moe.moe_ffn(p, xx, cfg, mesh_lib.make_mesh("expert:4,data:2", devices)))(
        as32(params), as32(x))
    # tokens are split over (data, expert) with data major: device blocks of 8 tokens in order, and the
    # expert axis is the inner one, so the all_to_all peers of a token are the devices with its data index
    np.testing.assert_allclose(y, ref_y, **FWD)


def _is_gemm(eqn) -> bool:
    name = eqn.primitive.name
    # expert GEMMs: the blocked grouped GEMM (a custom_vjp around a while loop) or ragged_dot; the
    # router's dense matmul is not one (dispatch legitimately depends on it)
    if name in ("while", "ragged_dot_general") or name.startswith("custom_vjp_call"):
        return True
    return any("while" in str(v) for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr"))


def test_chunked_dispatch_never_waits_for_an_expert_gemm(devices):
    """Comet structure: with C chunks the shard_map body has 3C all_to_alls (tokens and expert ids out,
    results back); the 2C dispatches depend on no expert GEMM at all (so chunk i's dispatch can run
    beside chunk i-1's GEMM) and each of the C combines depends on a GEMM."""
    params, x, _ = make_problem(seed=1, tokens=64, d=8, h=16, experts=8)
    mesh = mesh_lib.make_mesh("expert:8", devices)
    for chunks in (1, 4):
        cfg = moe.MoEConfig(num_experts=8, top_k=2, num_chunks=chunks, block_rows=4)
        closed = jax.make_jaxpr(lambda p, xx: moe.moe_ffn(p, xx, cfg, mesh)[0])(as32(params), as32(x))
        body = next(e for e in closed.jaxpr.eqns if e.primitive.name == "shard_map").params["jaxpr"]
        tainted, dispatch_clean, combine_after_gemm = set(), 0, 0
        for eqn in body.eqns:
            inputs_tainted = any(v in tainted for v in eqn.invars if not hasattr(v, "val"))
            if eqn.primitive.name == "all_to_all":
                if inputs_tainted:
                    combine_after_gemm += 1
                else:
                    dispatch_clean += 1
            if inputs_tainted or _is_gemm(eqn):
                tainted.update(eqn.outvars)
        assert (dispatch_clean, combine_after_gemm) == (2 * chunks, chunks)
