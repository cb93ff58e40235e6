"""DiLoCo / Streaming DiLoCo (parallel/diloco.py) against NumPy transcriptions of the papers' algorithms.

The problem is a quadratic per worker, loss(θ; batch) = ½ mean_b Σ ||θ - c_b||², on a parameter dict
shaped like a transformer's (``embed`` + ``block_i``), run on 8 virtual CPU devices as M workers × D-way
data parallelism. Tolerances: float32 arithmetic in a different order (Adam divides by sqrt(v) + eps,
which amplifies last-bit differences of near-zero gradients), rtol 2e-5 / atol 2e-5 on O(1) parameters.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from parallel import diloco, quantize

SHAPES = {"embed": (4,), "block_0": (3, 2), "block_1": (2, 2), "block_2": (5,), "block_3": (2, 3)}
BATCH = 8
LR = 0.05
B1, B2, EPS = 0.9, 0.999, 1e-8


def loss_fn(params, batch):
    return sum(0.5 * jnp.mean(jnp.sum((params[k][None] - batch[k]) ** 2, axis=tuple(range(1, batch[k].ndim))))
               for k in params)


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def batches(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=(BATCH,) + s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(steps)]


# ----------------------------------------------------------------------------- NumPy references
class NumpyAdam:
    """Adam (Kingma & Ba 2015, Algorithm 1), as optax.adam with eps outside the square root."""

    def __init__(self, params):
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        out = {}
        for k in params:
            self.m[k] = B1 * self.m[k] + (1 - B1) * grads[k]
            self.v[k] = B2 * self.v[k] + (1 - B2) * grads[k] ** 2
            mhat = self.m[k] / (1 - B1 ** self.t)
            vhat = self.v[k] / (1 - B2 ** self.t)
            out[k] = params[k] - LR * mhat / (np.sqrt(vhat) + EPS)
        return out


class NumpySGD:
    def __init__(self, params):
        pass

    def step(self, params, grads):
        return {k: params[k] - LR * grads[k] for k in params}


def numpy_e3m0(x):
    """Independent E3M0 per-tensor round trip: nearest of {0, ±2^-6..±2^0} · max|x| (argmin, ties low)."""
    s = np.abs(x).max() or 1.0
    grid = np.array([0.0] + [2.0 ** k for k in range(-6, 1)], np.float32)
    y = np.abs(x / np.float32(s))
    q = grid[np.argmin(np.abs(y[..., None] - grid), axis=-1)]
    return (np.sign(x) * q * np.float32(s)).astype(np.float32)


def numpy_streaming_diloco(params, data, M, H, P_frag, fragments, tau, alpha, outer_lr, mu, nesterov,
                           quantizer=None, inner=NumpyAdam, error_feedback=False, decay=1.0):
    """Streaming DiLoCo, Douillard et al. 2025 Algorithm 2 (P=1, τ=0, α=0: DiLoCo Algorithm 1).

    ``fragments``: list of key lists. Fragment p syncs at t with (t - t_p) mod H == 0, t_p = p H/P;
    its outer update is merged into the replicas τ steps later: θ_m ← α θ_m + (1-α) θ_global.
    ``error_feedback``: worker m sends quantizer(a) of a = decay·e_m + Δ_m and keeps e_m = a - quantizer(a)
    (Karimireddy et al. 2019). Returns the residuals as a fourth value when it is set.
    """
    theta = {k: v.copy() for k, v in params.items()}
    local = [{k: v.copy() for k, v in params.items()} for _ in range(M)]
    adam = [inner(params) for _ in range(M)]
    mom = {k: np.zeros_like(v) for k, v in params.items()}
    residual = [{k: np.zeros_like(v) for k, v in params.items()} for _ in range(M)]
    rows = BATCH // M
    offsets = [p * H // P_frag for p in range(P_frag)]
    synced_at = []
    for t, batch in enumerate(data, start=1):
        for m in range(M):
            grads = {k: local[m][k] - batch[k][m * rows:(m + 1) * rows].mean(0) for k in params}
            local[m] = adam[m].step(local[m], grads)
        for p, keys in enumerate(fragments):
            if t >= offsets[p] and (t - offsets[p]) % H == 0:
                synced_at.append((t, p))
                for k in keys:
                    deltas = [theta[k] - local[m][k] for m in range(M)]
                    if error_feedback:
                        messages = [decay * residual[m][k] + deltas[m] for m in range(M)]
                        deltas = [quantizer(a) for a in messages]
                        for m in range(M):
                            residual[m][k] = messages[m] - deltas[m]
                    elif quantizer is not None:
                        deltas = [quantizer(d) for d in deltas]
                    delta = np.sum(deltas, axis=0) / M
                    mom[k] = mu * mom[k] + delta
                    update = delta + mu * mom[k] if nesterov else mom[k]
                    theta[k] = theta[k] - outer_lr * update
        for p, keys in enumerate(fragments):
            s = t - tau
            if s >= 1 and s >= offsets[p] and (s - offsets[p]) % H == 0:
                for m in range(M):
                    for k in keys:
                        local[m][k] = alpha * local[m][k] + (1 - alpha) * theta[k]
    if error_feedback:
        return theta, local, synced_at, residual
    return theta, local, synced_at


def run_jax(cfg, params, data, backend="shard_map", devices=None, inner_opt=None):
    mesh = diloco.make_worker_mesh(cfg.workers, devices)
    inner_opt = inner_opt or optax.adam(LR, b1=B1, b2=B2, eps=EPS)
    trainer = diloco.DiLoCo(cfg, loss_fn, inner_opt, mesh, SHAPES.keys(), backend)
    state = trainer.init({k: jnp.asarray(v) for k, v in params.items()})
    synced = []
    for t, batch in enumerate(data, start=1):
        state, _ = trainer.step(state, jax.device_put(batch, trainer.batch_sharding), t)
        synced += [(t, p) for p in trainer.events(t)[0]]
    return trainer, state, synced


def assert_tree_close(a, b, rtol=2e-5, atol=2e-5):
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=rtol, atol=atol, err_msg=k)


# ----------------------------------------------------------------------------- tests
def test_one_worker_one_step_outer_lr_one_is_plain_training(devices):
    """M=1, H=1, outer SGD lr 1 without momentum: θ ← θ - (θ - θ_1) = θ_1, i.e. plain Adam training."""
    cfg = diloco.DiLoCoConfig(algo="diloco", workers=1, inner_steps=1, outer_lr=1.0, outer_momentum=0.0)
    params, data = init_params(), batches(6)
    _, state, _ = run_jax(cfg, params, data)
    opt = optax.adam(LR, b1=B1, b2=B2, eps=EPS)
    ref, opt_state = {k: jnp.asarray(v) for k, v in params.items()}, None
    opt_state = opt.init(ref)
    for batch in data:
        grads = jax.grad(loss_fn)(ref, batch)
        updates, opt_state = opt.update(grads, opt_state, ref)
        ref = optax.apply_updates(ref, updates)
    assert_tree_close(state.global_params, ref, rtol=1e-6, atol=1e-6)
    assert_tree_close(jax.tree.map(lambda x: x[0], state.params), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("M,H,mu,nesterov", [(2, 3, 0.9, True), (4, 2, 0.5, False)])
def test_diloco_matches_numpy_algorithm_1(devices, M, H, mu, nesterov):
    cfg = diloco.DiLoCoConfig(algo="diloco", workers=M, inner_steps=H, outer_lr=0.7, outer_momentum=mu,
                              nesterov=nesterov)
    params, data = init_params(), batches(3 * H + 1)
    _, state, synced = run_jax(cfg, params, data)
    theta, local, synced_ref = numpy_streaming_diloco(params, data, M, H, 1, [list(SHAPES)], 0, 0.0, 0.7, mu,
                                                      nesterov)
    assert synced == synced_ref == [(H, 0), (2 * H, 0), (3 * H, 0)]
    assert_tree_close(state.global_params, theta)
    for m in range(M):
        assert_tree_close(jax.tree.map(lambda x: x[m], state.params), local[m])
    # the outer step moved θ away from θ(0) and away from any single worker's replica
    assert not np.allclose(theta["embed"], params["embed"])


STREAMING_CASES = [
    # M, H, P, pattern, tau, alpha, precision
    # alpha != 0.5 wherever the merge runs: at 0.5 swapping alpha and 1 - alpha would go unnoticed
    (2, 4, 2, "strided", 1, 0.7, "fp32"),
    (2, 6, 3, "sequential", 0, 0.0, "fp32"),
    (4, 4, 4, "strided", 0, 0.3, "fp32"),
    (2, 4, 2, "strided", 1, 0.8, "fp4"),
]


@pytest.mark.parametrize("M,H,P_frag,pattern,tau,alpha,precision", STREAMING_CASES)
def test_streaming_matches_numpy_algorithm_2(devices, M, H, P_frag, pattern, tau, alpha, precision):
    cfg = diloco.DiLoCoConfig(algo="streaming", workers=M, inner_steps=H, fragments=P_frag, fragment_pattern=pattern,
                              overlap_tau=tau, alpha=alpha, outer_lr=0.7, outer_momentum=0.9,
                              outer_precision=precision)
    params, data = init_params(), batches(3 * H)
    trainer, state, synced = run_jax(cfg, params, data)
    # independent fragment assignment: embeddings in fragment 0, blocks strided / contiguous
    blocks = [f"block_{i}" for i in range(4)]
    if pattern == "strided":
        expected = [[b for i, b in enumerate(blocks) if i % P_frag == p] for p in range(P_frag)]
    else:
        expected = [blocks[p * 4 // P_frag:(p + 1) * 4 // P_frag] for p in range(P_frag)]
    expected[0] = ["embed"] + expected[0]
    assert [list(f) for f in trainer.fragments] == expected
    theta, local, synced_ref = numpy_streaming_diloco(
        params, data, M, H, P_frag, expected, tau, alpha, 0.7, 0.9, True,
        quantizer=numpy_e3m0 if precision == "fp4" else None)
    assert synced == synced_ref
    assert_tree_close(state.global_params, theta)
    for m in range(M):
        assert_tree_close(jax.tree.map(lambda x: x[m], state.params), local[m])


def test_fragment_schedule_sync_and_merge_steps():
    H, P_frag, tau = 12, 3, 2
    table = {t: diloco.syncs_at(t, H, P_frag) for t in range(1, 37)}
    assert [t for t, ps in table.items() if 0 in ps] == [12, 24, 36]
    assert [t for t, ps in table.items() if 1 in ps] == [4, 16, 28]
    assert [t for t, ps in table.items() if 2 in ps] == [8, 20, 32]
    assert all(len(ps) <= 1 for ps in table.values())  # staggered: never two fragments at once
    merges = [t for t in range(1, 40) if 1 in diloco.merges_at(t, H, P_frag, tau)]
    assert merges == [6, 18, 30]


def test_pmap_backend_matches_shard_map(devices):
    cfg = diloco.DiLoCoConfig(algo="streaming", workers=2, inner_steps=4, fragments=2, overlap_tau=1, alpha=0.8,
                              outer_precision="fp4", fp4_format="e2m1", quant_scale="row")
    params, data = init_params(), batches(8)
    _, a, _ = run_jax(cfg, params, data, "shard_map", devices[:2])
    _, b, _ = run_jax(cfg, params, data, "pmap", devices[:2])
    assert_tree_close(a.global_params, b.global_params, rtol=1e-6, atol=1e-7)


def test_dp_step_is_plain_sgd_on_the_global_batch_mean(devices):
    """Plain SGD (scale-sensitive, unlike Adam): the gradient must be the MEAN over all 8 devices."""
    cfg = diloco.DiLoCoConfig(algo="dp", workers=2)
    params, data = init_params(), batches(3)
    _, state, _ = run_jax(cfg, params, data, inner_opt=optax.sgd(LR))
    ref = {k: v.copy() for k, v in params.items()}
    for batch in data:
        ref = NumpySGD(ref).step(ref, {k: ref[k] - batch[k].mean(0) for k in ref})
    assert_tree_close(state.params, ref, rtol=1e-6, atol=1e-6)


def test_diloco_with_sgd_inner_steps_averages_over_data_devices(devices):
    """SGD inner optimiser: each worker's gradient is the mean over its `data` devices' rows."""
    cfg = diloco.DiLoCoConfig(algo="diloco", workers=2, inner_steps=3, outer_lr=0.7, outer_momentum=0.9)
    params, data = init_params(), batches(7)
    _, state, _ = run_jax(cfg, params, data, inner_opt=optax.sgd(LR))
    theta, local, _ = numpy_streaming_diloco(params, data, 2, 3, 1, [list(SHAPES)], 0, 0.0, 0.7, 0.9, True,
                                             inner=NumpySGD)
    assert_tree_close(state.global_params, theta, rtol=1e-6, atol=1e-6)
    assert_tree_close(jax.tree.map(lambda x: x[1], state.params), local[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(inner_steps=30, fragments=4), "inner_steps=30 must be a multiple of fragments=4"),
    (dict(inner_steps=30, fragments=3, overlap_tau=10), "overlap_tau=10 must be < "),
    (dict(alpha=1.5), "alpha=1.5 must be in [0, 1]"),
    (dict(alpha=-0.1), "alpha=-0.1"),
    (dict(algo="diloco", fragments=2, inner_steps=4), "algo=diloco"),
    (dict(outer_precision="fp2"), "outer_precision='fp2'"),
    (dict(fp4_format="e1m2"), "fp4_format='e1m2'"),
])
def test_bad_config_raises_value_error_naming_the_values(kwargs, needle):
    with pytest.raises(ValueError) as e:
        diloco.DiLoCoConfig(**kwargs)
    assert needle in str(e.value)


def test_workers_not_dividing_devices_raises(devices):
    with pytest.raises(ValueError, match="workers=3 must divide the number of devices 8"):
        diloco.make_worker_mesh(3)


def test_too_many_fragments_for_the_model():
    with pytest.raises(ValueError, match="fragments=8 exceeds the model's 4 transformer blocks"):
        diloco.assign_fragments(SHAPES.keys(), 8)


def test_outer_optimizer_is_nesterov_sgd_on_outer_gradient():
    """One optax update against the PyTorch SGD(nesterov) formula DiLoCo uses."""
    opt = diloco.outer_optimizer(0.7, 0.9, True)
    theta = jnp.array([1.0, -2.0])
    state = opt.init(theta)
    mom = np.zeros(2)
    ref = np.array([1.0, -2.0])
    for delta in ([0.5, 0.25], [-0.1, 0.3]):
        updates, state = opt.update(jnp.array(delta), state, theta)
        theta = optax.apply_updates(theta, updates)
        mom = 0.9 * mom + np.array(delta)
        ref = ref - 0.7 * (np.array(delta) + 0.9 * mom)
    np.testing.assert_allclose(np.asarray(theta), ref, rtol=1e-6)
    assert quantize.Codec().precision == "fp32"


def test_merge_weights_the_worker_by_alpha_and_the_outer_params_by_one_minus_alpha():
    local, outer = {"w": jnp.full((2, 3), 10.0)}, {"w": jnp.zeros(3)}
    np.testing.assert_allclose(np.asarray(diloco.merge(local, outer, 0.3)["w"]), 3.0)
    np.testing.assert_array_equal(np.asarray(diloco.merge(local, outer, 0.0)["w"]), 0.0)


@pytest.mark.parametrize("precision", ["fp32", "fp4"])
def test_a_diverged_worker_stops_the_run_naming_it(devices, precision):
    """A NaN in one worker's replica must not be averaged into θ (fp4 used to encode it as 0 and clip the
    rest): the sync stops with NonFiniteOuterGradient naming the worker and the step."""
    cfg = diloco.DiLoCoConfig(algo="streaming", workers=2, inner_steps=4, fragments=2, overlap_tau=1, alpha=0.6,
                              outer_precision=precision)
    params, data = init_params(), batches(4)
    trainer = diloco.DiLoCo(cfg, loss_fn, optax.adam(LR), diloco.make_worker_mesh(2), params.keys())
    state = trainer.init(params)
    for t in range(1, 3):
        state, _ = trainer.step(state, jax.device_put(data[t - 1], trainer.batch_sharding), t)
    poisoned = state.params["block_1"].at[1, 0, 0].set(jnp.nan)  # worker 1, a block of fragment 1 (syncs at t=2)
    state = state.replace(params={**state.params, "block_1": jax.device_put(poisoned, trainer.stacked)})
    state, _ = trainer.step(state, jax.device_put(data[2], trainer.batch_sharding), 3)  # fragment 0 is healthy
    with pytest.raises(diloco.NonFiniteOuterGradient, match=r"worker\(s\) \[1\] .* inner step 6, fragment 1"):
        for t in range(4, 7):
            state, _ = trainer.step(state, jax.device_put(data[t % 4], trainer.batch_sharding), t)


@pytest.mark.parametrize("precision", ["fp32", "fp4"])
def test_syncs_from_the_background_thread_equal_inline_syncs_bit_for_bit(devices, precision):
    """sync_dispatch="thread" (a fragment's sync runs beside the next τ inner steps and is folded in at its
    merge) changes when work runs, not what it computes: parameters, θ and outer states equal the inline
    run bit for bit wherever the run settles (a checkpoint or evaluation, mid-window included) and at the end."""
    cfg = diloco.DiLoCoConfig(algo="streaming", workers=2, inner_steps=4, fragments=2, overlap_tau=1, alpha=0.6,
                              outer_precision=precision)
    params, data = init_params(), batches(9)
    runs = {}
    for dispatch in ("inline", "thread"):
        trainer = diloco.DiLoCo(cfg, loss_fn, optax.adam(LR), diloco.make_worker_mesh(2), params.keys(),
                                sync_dispatch=dispatch)
        assert trainer.sync_dispatch == dispatch
        state, seen, in_flight = trainer.init(params), [], []
        for t, batch in enumerate(data, start=1):
            state, _ = trainer.step(state, jax.device_put(batch, trainer.batch_sharding), t)
            in_flight.append(trainer.syncs_in_flight)
            if t % 3 == 0 or t == len(data):
                state = trainer.settle(state)
                seen.append(jax.tree.map(np.asarray, state))
        trainer.close()
        runs[dispatch] = seen, in_flight
    assert any(runs["thread"][1]) and not any(runs["inline"][1])   # syncs were in flight across steps
    for a, b in zip(runs["inline"][0], runs["thread"][0]):
        jax.tree.map(np.testing.assert_array_equal, a, b)
