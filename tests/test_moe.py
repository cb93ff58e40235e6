"""Single-device MoE (parallel/moe/) against the NumPy loop reference of tests/test_moe_reference.py.

Tolerances (float32 against a float64 reference, values of order 1): outputs and aux losses rtol 1e-5,
atol 2e-5; gradients rtol 1e-4, atol 5e-5.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallel import mesh as mesh_lib
from parallel import moe
from test_moe_reference import make_problem, ref_forward, ref_loss_and_grads

FWD = dict(rtol=1e-5, atol=2e-5)
GRAD = dict(rtol=1e-4, atol=5e-5)


def as32(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def jax_loss_and_grads(params, x, cot, cfg, mesh=None):
    def loss(p, xx):
        y, aux = moe.moe_ffn(p, xx, cfg, mesh)
        return jnp.sum(jnp.asarray(cot, jnp.float32) * y) + aux["aux_loss"], (y, aux)
    (value, (y, aux)), (gp, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        as32(params), as32(x))
    return value, y, aux, gx, gp


def check_against_reference(params, x, cot, cfg, mesh=None):
    value, y, aux, gx, gp = jax_loss_and_grads(params, x, cot, cfg, mesh)
    ref_y, ref_aux, _ = ref_forward(params, x, cfg.top_k, cfg.gating, cfg.renormalize)
    ref_value, ref_dx, ref_g = ref_loss_and_grads(params, x, cot, cfg.top_k, cfg.gating, cfg.renormalize,
                                                  cfg.load_balance_weight, cfg.z_loss_weight)
    np.testing.assert_allclose(y, ref_y, **FWD)
    for name in ("load_balance_loss", "router_z_loss", "expert_fraction"):
        np.testing.assert_allclose(aux[name], ref_aux[name], **FWD, err_msg=name)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(gx, ref_dx, **GRAD, err_msg="d/dx")
    for name in ref_g:
        np.testing.assert_allclose(gp[name], ref_g[name], **GRAD, err_msg=f"d/d{name}")


@pytest.mark.parametrize("impl,gating,renormalize,top_k,block", [
    ("blocked", "softmax", True, 2, 4),
    ("blocked", "sigmoid", False, 3, 8),
    ("blocked", "softmax", False, 1, 0),
    ("ragged", "softmax", True, 2, 0),
    ("ragged", "sigmoid", True, 2, 0),
    ("pallas", "softmax", True, 2, 4),     # Pallas kernels in interpret mode (rows read by index)
    ("pallas", "sigmoid", False, 3, 0),
])
def test_dropless_matches_numpy_reference_outputs_and_gradients(impl, gating, renormalize, top_k, block):
    params, x, cot = make_problem(seed=1, tokens=24, d=8, h=12, experts=8)
    cfg = moe.MoEConfig(num_experts=8, top_k=top_k, gating=gating, renormalize=renormalize, impl=impl,
                        block_rows=block)
    check_against_reference(params, x, cot, cfg)


def test_pallas_gather_matmul_equals_gathered_blocked_matmul():
    """pallas_gemm.gather_matmul reads x by index inside the kernel: equal to blocked_matmul on the rows
    gathered by XLA (an empty slot, index = len(x), reads a zero row), outputs and both gradients."""
    from parallel.moe import pallas_gemm
    key = jax.random.PRNGKey(0)
    tokens, d, h, e, k, bm = 40, 16, 32, 4, 2, 8
    x = jax.random.normal(key, (tokens, d))
    w = jax.random.normal(jax.random.fold_in(key, 1), (e, d, h))
    groups = moe.make_groups(jax.random.randint(jax.random.fold_in(key, 2), (tokens * k,), 0, e), e, bm)
    token = jnp.arange(tokens * k) // k
    index = jnp.where(groups.row_of_slot < tokens * k, token[jnp.minimum(groups.row_of_slot, tokens * k - 1)],
                      tokens)
    assert int((index == tokens).sum()) > 0  # some empty slots

    def gathered(x, w):
        return moe.blocked_matmul(jnp.concatenate([x, jnp.zeros((1, d))])[index], w, groups.block_expert,
                                  groups.num_blocks, bm)

    def by_index(x, w):
        return pallas_gemm.gather_matmul(x, index, w, groups.block_expert, groups.num_blocks, bm)
    np.testing.assert_allclose(by_index(x, w), gathered(x, w), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.fold_in(key, 3), (index.shape[0], h))
    grads = lambda fn: jax.grad(lambda x, w: jnp.sum(fn(x, w) * cot), argnums=(0, 1))(x, w)  # noqa: E731
    for got, want in zip(grads(by_index), grads(gathered)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_pallas_layer_in_bfloat16_tracks_float32():
    """bf16 activations and weights through the Pallas kernels (f32 accumulation inside): the layer's output
    stays within bf16 rounding of the float32 layer's (relative error of the output norm < 1 %)."""
    params, x, _ = make_problem(seed=4, tokens=32, d=16, h=32, experts=8)
    cfg = moe.MoEConfig(num_experts=8, top_k=2, impl="pallas", block_rows=16)
    y32, _ = moe.moe_ffn(as32(params), jnp.asarray(x, jnp.float32), cfg)
    p16 = {k: jnp.asarray(v, jnp.float32 if k == "router" else jnp.bfloat16) for k, v in params.items()}
    y16, _ = moe.moe_ffn(p16, jnp.asarray(x, jnp.bfloat16), cfg)
    assert y16.dtype == jnp.bfloat16
    err = float(jnp.linalg.norm(y16.astype(jnp.float32) - y32) / jnp.linalg.norm(y32))
    assert 0 < err < 1e-2


@pytest.mark.parametrize("tokens,experts", [(1, 8), (5, 16)])
def test_pallas_single_token_and_empty_experts(tokens, experts):
    """The Pallas kernels with one token, and with most of 16 experts receiving no row (their weight
    gradients must be exactly zero, their blocks absent)."""
    params, x, cot = make_problem(seed=5, tokens=tokens, d=8, h=12, experts=experts)
    cfg = moe.MoEConfig(num_experts=experts, top_k=2, impl="pallas", block_rows=4)
    check_against_reference(params, x, cot, cfg)
    _, _, _, _, gp = jax_loss_and_grads(params, x, cot, cfg)
    used = np.unique(np.asarray(moe.route(jnp.asarray(x, jnp.float32), jnp.asarray(params["router"], jnp.float32),
                                          2).experts))
    unused = np.setdiff1d(np.arange(experts), used)
    assert unused.size and all(float(np.abs(gp[w][unused]).max()) == 0.0 for w in ("w_gate", "w_up", "w_down"))


@pytest.mark.parametrize("factor", [0.3, 1.0, 4.0])
def test_bucketed_matches_numpy_reference_with_and_without_overflow(factor):
    """Bulk capacity below, at and above the loads: rows past it take the blocked overflow path."""
    params, x, cot = make_problem(seed=3, tokens=64, d=8, h=12, experts=4)
    cfg = moe.MoEConfig(num_experts=4, top_k=2, impl="bucketed", bucket_factor=factor)
    plan = moe.plan_grouped_gemm(cfg, 128, 4)
    loads = np.bincount(np.asarray(moe.route(jnp.asarray(x, jnp.float32), jnp.asarray(params["router"],
                                                                                     jnp.float32), 2).experts).ravel(),
                        minlength=4)
    assert (loads.max() > plan.capacity) == (factor < 4.0)  # overflow exercised except with the big bulk
    check_against_reference(params, x, cot, cfg)


def test_router_weights_and_aux_losses_against_numpy():
    params, x, _ = make_problem(seed=2, tokens=32, experts=8)
    for gating in moe.GATINGS:
        r = moe.route(jnp.asarray(x, jnp.float32), jnp.asarray(params["router"], jnp.float32), 3, gating, True)
        for t in range(32):
            s = x[t] @ params["router"]
            s = np.exp(s - s.max()) / np.exp(s - s.max()).sum() if gating == "softmax" else 1 / (1 + np.exp(-s))
            top = np.argsort(-s, kind="stable")[:3]
            np.testing.assert_array_equal(r.experts[t], top)
            np.testing.assert_allclose(r.weights[t], s[top] / s[top].sum(), rtol=1e-5)
        counts, probs = moe.load_balance_terms(r, 8)
        lb = moe.load_balance_loss(counts, probs, 32, 3)
        _, ref_aux, _ = ref_forward(params, x, 3, gating)
        np.testing.assert_allclose(lb, ref_aux["load_balance_loss"], rtol=1e-5)
        np.testing.assert_allclose(moe.router_z_loss(r.logits) / 32, ref_aux["router_z_loss"], rtol=1e-5)
    # a perfectly uniform router: f_e = P_e = 1/E -> loss 1; logits 0 -> z = log(E)^2
    uniform = moe.Routing(jnp.ones((8, 1)), jnp.arange(8)[:, None], jnp.zeros((8, 8)), jnp.full((8, 8), 1 / 8))
    c, p = moe.load_balance_terms(uniform, 8)
    np.testing.assert_allclose(moe.load_balance_loss(c, p, 8, 1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(moe.router_z_loss(uniform.logits) / 8, np.log(8) ** 2, rtol=1e-6)


def test_block_layout_invariants():
    rng = np.random.default_rng(0)
    ids = rng.integers(-1, 5, size=50)  # -1: invalid rows
    g = moe.make_groups(jnp.asarray(ids, jnp.int32), 5, 4)
    slot, row_of_slot = np.asarray(g.slot_of_row), np.asarray(g.row_of_slot)
    n_pad = row_of_slot.shape[0]
    counts = np.bincount(ids[ids >= 0], minlength=5)
    assert int(g.num_blocks) == int(np.sum(-(-counts // 4)))
    for r, e in enumerate(ids):
        if e < 0:
            assert slot[r] == n_pad
        else:
            assert row_of_slot[slot[r]] == r and g.block_expert[slot[r] // 4] == e
    assert np.sum(row_of_slot < 50) == np.sum(ids >= 0)  # every valid row has exactly one slot
    np.testing.assert_array_equal(g.group_sizes, -(-counts // 4) * 4)


def test_bucketed_layout_invariants():
    rng = np.random.default_rng(1)
    ids = rng.integers(-1, 5, size=80)
    cap, block = 8, 4
    g = moe.make_groups(jnp.asarray(ids, jnp.int32), 5, block, cap)
    slot, row_of_slot = np.asarray(g.slot_of_row), np.asarray(g.row_of_slot)
    n_pad, bulk = row_of_slot.shape[0], 5 * cap
    counts = np.bincount(ids[ids >= 0], minlength=5)
    over = np.maximum(counts - cap, 0)
    assert int(g.num_blocks) == int(np.sum(-(-over // block)))
    for e in range(5):
        rows_e = np.flatnonzero(ids == e)  # in row order: the first cap fill the bulk, in order
        np.testing.assert_array_equal(slot[rows_e[:cap]], e * cap + np.arange(min(cap, len(rows_e))))
        for r in rows_e[cap:]:
            assert slot[r] >= bulk and g.block_expert[(slot[r] - bulk) // block] == e
    assert np.all(slot[ids < 0] == n_pad)
    assert np.all(row_of_slot[slot[ids >= 0]] == np.flatnonzero(ids >= 0))
    assert np.sum(row_of_slot < 80) == np.sum(ids >= 0)


def test_capacity_variant_drops_exactly_the_right_tokens():
    params, x, cot = make_problem(seed=4, tokens=32, d=8, h=12, experts=4)
    cfg = moe.MoEConfig(num_experts=4, top_k=2, capacity_factor=0.75)
    cap = moe.expert_capacity(32, 2, 4, 0.75)
    assert cap == 12
    ref_y, _, ref_kept = ref_forward(params, x, 2, capacity=cap)
    assert 0 < (~ref_kept).sum() < ref_kept.size  # the case really drops some, not all
    r = moe.route(jnp.asarray(x, jnp.float32), jnp.asarray(params["router"], jnp.float32), 2)
    kept = np.asarray(moe.priority_positions(r.experts, 4)) < cap
    np.testing.assert_array_equal(kept, ref_kept)
    y, aux = jax.jit(lambda p, xx: moe.moe_ffn(p, xx, cfg))(as32(params), as32(x))
    np.testing.assert_allclose(y, ref_y, **FWD)
    np.testing.assert_allclose(aux["dropped_fraction"], 1 - ref_kept.mean(), rtol=1e-6)
    # generous capacity: the one-hot baseline equals the dropless layer
    big = moe.MoEConfig(num_experts=4, top_k=2, capacity_factor=2.0)
    y_big, _ = moe.moe_ffn(as32(params), as32(x), big)
    y_dropless, _ = moe.moe_ffn(as32(params), as32(x), moe.MoEConfig(num_experts=4, top_k=2))
    np.testing.assert_allclose(y_big, y_dropless, **FWD)


def test_capacity_variant_gradients_match_dropless_when_nothing_drops():
    params, x, cot = make_problem(seed=5, tokens=16, d=8, h=12, experts=4)
    _, _, _, gx, gp = jax_loss_and_grads(params, x, cot, moe.MoEConfig(num_experts=4, top_k=2,
                                                                       capacity_factor=2.0))
    _, ref_dx, ref_g = ref_loss_and_grads(params, x, cot, 2)
    np.testing.assert_allclose(gx, ref_dx, **GRAD)
    for name in ref_g:
        np.testing.assert_allclose(gp[name], ref_g[name], **GRAD, err_msg=name)


def test_bad_input_is_a_value_error_naming_the_values(devices):
    params, x, _ = make_problem(tokens=16, d=8, h=12, experts=6)
    p32, x32 = as32(params), as32(x)
    with pytest.raises(ValueError, match="top_k=7 must not exceed num_experts=6"):
        moe.MoEConfig(num_experts=6, top_k=7)
    cfg = moe.MoEConfig(num_experts=6, top_k=2)
    with pytest.raises(ValueError, match=r"num_experts=6 must be divisible by the 'expert' mesh axis size 4"):
        moe.moe_ffn(p32, x32, cfg, mesh_lib.make_mesh("expert:4,data:2", devices))
    with pytest.raises(ValueError, match=r"hidden size 12 must be divisible by the 'tensor' mesh axis size 8"):
        moe.moe_ffn(p32, x32, cfg, mesh_lib.make_mesh("tensor:8", devices))
    with pytest.raises(ValueError, match=r"num_chunks=3 must divide the tokens per device 8"):
        moe.moe_ffn(p32, x32, moe.MoEConfig(num_experts=6, top_k=2, num_chunks=3),
                    mesh_lib.make_mesh("expert:2,data:1", devices[:2]))
    with pytest.raises(ValueError, match=r"tokens=16 must be divisible"):
        moe.moe_ffn(p32, x32, cfg, mesh_lib.make_mesh("tensor:3", devices[:3]))
    with pytest.raises(ValueError, match="gating='relu'"):
        moe.MoEConfig(gating="relu")
    with pytest.raises(ValueError, match="w_gate has 6 experts but MoEConfig.num_experts=8"):
        moe.moe_ffn(p32, x32, moe.MoEConfig(num_experts=8))


def test_cost_model_choice():
    cfg = moe.MoEConfig(num_experts=8, top_k=2)
    # communication-free (ep = tp = 1): chunking only adds fixed costs -> C = 1
    c, info = moe.choose_num_chunks(cfg, 64, 64, 128, ep=1, tp=1, backend="cpu")
    assert c == 1
    # comparable comm and compute -> an interior optimum > 1, consistent with the modelled times
    c, info = moe.choose_num_chunks(cfg, 4096, 1024, 4096, ep=8, tp=1, backend="gpu")
    assert c > 1 and info["modelled_s"][c] == min(info["modelled_s"].values())
    assert info["modelled_s"][c] < info["modelled_s"][1]
    # overrides are honoured
    _, info = moe.choose_num_chunks(moe.MoEConfig(device_flops=1.0, link_bandwidth=2.0), 8, 4, 4, 2, 1)
    assert info["device_flops"] == 1.0 and info["link_bandwidth"] == 2.0
