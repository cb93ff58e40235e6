"""The RL losses against their papers' equations, transcribed independently in NumPy (float64):

* job-shop PPO (``rl.jssp.ppo.ppo_loss_terms``): Schulman et al. 2017, Eq. 7 (L^CLIP) and the value and
  entropy terms of Eq. 9;
* mallocMuZero (``rl.malloc.muzero.training.step_losses``): Schrittwieser et al. 2020, Eq. 1 (policy
  cross-entropy, value and reward squared errors) plus the legality binary cross-entropy.

Values are compared with rtol 1e-5 and gradients both in value and in direction (a loss whose sign is
flipped has the right magnitude but pushes the policy the wrong way). One test per agent goes through the
real loss function with the real (tiny) network and checks that the total is the configured combination
of the terms.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.attention import NEG
from models.jssp_policy import PolicyConfig
from models.malloc_muzero import MuZeroNetConfig
from rl.jssp import env, policy_io, ppo
from rl.malloc import game, instance, muzero
from rl.malloc.muzero.training import step_losses

RTOL, ATOL = 1e-5, 1e-6
KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a PRNG key's shape, for jax.eval_shape of an initialiser


# --------------------------------------------------------------------------- NumPy transcriptions

def np_policy_log_probs(logits, legal):
    """log pi(a|s) = z_a - log sum_{b legal} exp(z_b) for the legal a (-inf for the illegal ones)."""
    logits = np.asarray(logits, np.float64)
    out = np.full(logits.shape, -np.inf)
    for i in range(logits.shape[0]):
        z = logits[i][legal[i]]
        c = z.max()
        out[i, legal[i]] = z - (c + np.log(np.exp(z - c).sum()))
    return out


def np_ppo(logits, value, actions, old_logp, adv, ret, legal, alive, eps):
    """Schulman et al. 2017: r_t = pi(a_t|s_t) / pi_old(a_t|s_t);
    L^CLIP = E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)] (Eq. 7), pg_loss = -L^CLIP;
    L^VF = E_t[(V(s_t) - V^targ_t)^2]; S = E_t[-sum_a pi(a|s_t) log pi(a|s_t)] (Eq. 9).
    E_t is the mean over the alive states. Returns (pg_loss, v_loss, entropy, clip_frac)."""
    logp = np_policy_log_probs(logits, legal)
    pg, vf, ent, clipped, count = 0.0, 0.0, 0.0, 0.0, 0.0
    for i in range(len(actions)):
        if not alive[i]:
            continue
        r = np.exp(logp[i, actions[i]] - float(old_logp[i]))
        a = float(adv[i])
        pg += -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
        vf += (float(value[i]) - float(ret[i])) ** 2
        p = np.exp(logp[i][legal[i]])
        ent += -(p * np.log(p)).sum()
        clipped += float(r < 1 - eps or r > 1 + eps)
        count += 1
    return pg / count, vf / count, ent / count, clipped / count


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    c = z.max(-1, keepdims=True)
    return z - c - np.log(np.exp(z - c).sum(-1, keepdims=True))


def np_muzero_step(logits, value, legal_logits, pi, z, legal, mask, action_ok, r=None, u=None):
    """Schrittwieser et al. 2020, Eq. 1, one unroll step k:
    l^p = -sum_a pi_a log p_a (mean over the real positions), l^v = (z - v)^2, l^r = (u - r)^2 (means over the
    batch); legality: -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))] averaged over each position's existing
    actions, then over the batch. Returns (policy, value, legal, reward)."""
    B = len(value)
    logp = np_log_softmax(logits)
    pol, n_real = 0.0, 0
    for i in range(B):
        if mask[i]:
            pol += -sum(pi[i, a] * logp[i, a] for a in range(logits.shape[1]) if pi[i, a] > 0)
            n_real += 1
    pol = pol / max(n_real, 1)
    val = np.mean([(float(z[i]) - float(value[i])) ** 2 for i in range(B)])
    leg = 0.0
    for i in range(B):
        terms = []
        for a in np.flatnonzero(action_ok[i]):
            s = 1.0 / (1.0 + np.exp(-float(legal_logits[i, a])))
            y = float(legal[i, a])
            terms.append(-(y * np.log(s) + (1 - y) * np.log(1 - s)))
        leg += np.mean(terms)
    leg /= B
    rew = 0.0 if r is None else np.mean([(float(u[i]) - float(r[i])) ** 2 for i in range(B)])
    return pol, val, leg, rew


# --------------------------------------------------------------------------- PPO

def _ppo_batch(seed=0, n=6, a=5):
    rng = np.random.default_rng(seed)
    legal = rng.uniform(size=(n, a)) < 0.7
    legal[np.arange(n), rng.integers(0, a, n)] = True
    logits = np.where(legal, rng.normal(size=(n, a)), NEG).astype(np.float32)
    actions = np.array([rng.choice(np.flatnonzero(row)) for row in legal], np.int32)
    logp = np_policy_log_probs(logits, legal)[np.arange(n), actions]
    # ratios spread inside and outside [0.8, 1.2], advantages of both signs
    ratio = np.array([1.05, 1.5, 0.6, 0.9, 1.3, 0.7])[:n]
    old_logp = (logp - np.log(ratio)).astype(np.float32)
    adv = np.array([1.0, 0.7, -0.5, -1.2, -0.8, 0.4])[:n].astype(np.float32)
    value = rng.normal(size=n).astype(np.float32)
    ret = rng.normal(size=n).astype(np.float32)
    alive = np.array([True, True, True, True, True, False])[:n]
    return logits, value, actions, old_logp, adv, ret, legal, alive


def _ppo_terms(logits, value, actions, old_logp, adv, ret, legal, alive, eps=0.2):
    return ppo.ppo_loss_terms(jnp.asarray(logits), jnp.asarray(value), jnp.asarray(actions), jnp.asarray(old_logp),
                                jnp.asarray(adv), jnp.asarray(ret), jnp.asarray(legal), jnp.asarray(alive), eps)


def test_ppo_terms_match_the_papers_equations():
    b = _ppo_batch()
    got = _ppo_terms(*b)
    want = np_ppo(*b, eps=0.2)
    for name, g, w in zip(("pg_loss", "v_loss", "entropy", "clip_frac"), got, want):
        np.testing.assert_allclose(float(g), w, rtol=RTOL, atol=ATOL, err_msg=name)
    assert float(got.clip_frac) == pytest.approx(3 / 5)  # ratios 1.5, 0.6 and 1.3 of the 5 alive states


def _one_state(ratio, adv, eps=0.2):
    """One state with 3 legal actions (and an illegal one), action 0 taken with the given ratio."""
    logits = np.array([[0.3, -0.2, 0.5, NEG]], np.float32)
    legal = np.array([[True, True, True, False]])
    logp0 = np_policy_log_probs(logits, legal)[0, 0]
    old_logp = np.array([logp0 - np.log(ratio)], np.float32)
    return (logits, np.zeros(1, np.float32), np.zeros(1, np.int32), old_logp, np.array([adv], np.float32),
            np.zeros(1, np.float32), legal, np.ones(1, bool))


def _pg_grad(state, eps=0.2):
    logits, value, actions, old_logp, adv, ret, legal, alive = state
    g = jax.grad(lambda z: ppo.ppo_loss_terms(z, value, actions, old_logp, adv, ret, legal, alive, eps).pg_loss)(
        jnp.asarray(logits))
    return np.asarray(g[0])


@pytest.mark.parametrize("ratio,adv", [(1.1, 1.0), (0.9, 1.0), (1.0, 2.0), (1.1, -1.0), (0.9, -1.0), (1.5, -1.0)])
def test_ppo_gradient_moves_the_taken_action_with_the_advantage_when_unclipped(ratio, adv):
    """Unclipped, pg_loss = -r A and d(-r A)/dz_j = -A r (1[j = a] - pi_j): a positive advantage raises the
    taken action's logit (descent direction), a negative one lowers it. (1.5, -1): r A < clip(r) A, so the
    minimum picks the unclipped term."""
    state = _one_state(ratio, adv)
    g = _pg_grad(state)
    pi = np.exp(np_policy_log_probs(state[0], state[6])[0, :3])
    want = -adv * ratio * (np.eye(3)[0] - pi)
    np.testing.assert_allclose(g[:3], want, rtol=1e-4, atol=1e-6)
    assert np.sign(g[0]) == -np.sign(adv)  # descent raises a positive-advantage action's logit
    assert g[3] == 0.0  # the illegal action gets no gradient


@pytest.mark.parametrize("ratio,adv", [(1.5, 1.0), (1.3, 0.5), (0.5, -1.0), (0.7, -0.3)])
def test_ppo_gradient_is_zero_on_the_clipped_side(ratio, adv):
    """Past 1 + eps with A > 0 (or below 1 - eps with A < 0) the minimum is the clipped, constant term."""
    g = _pg_grad(_one_state(ratio, adv))
    np.testing.assert_array_equal(g, np.zeros(4, np.float32))


def test_ppo_value_and_entropy_gradients():
    logits, value, actions, old_logp, adv, ret, legal, alive = _ppo_batch()
    f = lambda v: ppo.ppo_loss_terms(logits, v, actions, old_logp, adv, ret, legal, alive, 0.2).v_loss
    g = np.asarray(jax.grad(f)(jnp.asarray(value)))
    n = alive.sum()
    np.testing.assert_allclose(g, 2 * (value - ret) * alive / n, rtol=RTOL, atol=ATOL)
    assert np.all(np.sign(g[alive]) == np.sign(value - ret)[alive]) and g[~alive].tolist() == [0.0]
    # the entropy rises when the most likely legal action's logit goes down (toward uniform)
    e = lambda z: ppo.ppo_loss_terms(z, value, actions, old_logp, adv, ret, legal, alive, 0.2).entropy
    ge = np.asarray(jax.grad(e)(jnp.asarray(logits)))
    top = np.argmax(np.where(legal, logits, -np.inf), -1)
    rows = alive & (legal.sum(-1) > 1)  # with one legal action the entropy is 0 whatever the logits
    assert rows.sum() >= 3 and np.all(ge[np.arange(len(top)), top][rows] < 0)


def _random_like(rng, shapes):
    """Seeded NumPy values for a pytree of ShapeDtypeStructs (booleans with probability 1/2; floats N(0, 0.5^2))."""
    def one(x):
        if x.dtype == bool:
            return rng.uniform(size=x.shape) < 0.5
        return rng.normal(0.0, 0.5, x.shape).astype(x.dtype)
    return jax.tree.map(one, shapes)


TINY_POLICY = PolicyConfig(window=2, d_model=8, num_heads=2, job_layers=1, mlp_dim=16)


def test_ppo_loss_fn_total_is_the_configured_combination_of_the_terms():
    cfg = ppo.PPOConfig(num_jobs=4, num_machines=3, batch=2, vf_coef=0.7, ent_coef=0.05, bc_coef=1.3)
    model = policy_io.make_model(TINY_POLICY)

    # random observations and parameters of the real shapes (jax.eval_shape: nothing to compile)
    rng = np.random.default_rng(0)
    problems = env.Problem(*[jax.ShapeDtypeStruct((6, 4, 3), jnp.int32)] * 2)
    obs = _random_like(rng, jax.eval_shape(lambda p: env.batch_observe(p, env.batch_reset(p), TINY_POLICY.window),
                                           problems))
    legal = obs["legal"].copy()
    legal[:, 0] = True  # at least one legal action per state
    obs = dict(obs, legal=legal)
    params = _random_like(rng, jax.eval_shape(model.init, KEY, obs)["params"])
    a = np.array([rng.choice(np.flatnonzero(row)) for row in legal], np.int32)
    mb = {"obs": obs, "a": jnp.asarray(a), "logp": jnp.asarray(rng.normal(-1.2, 0.3, 6), jnp.float32),
          "adv": jnp.asarray(rng.normal(size=6), jnp.float32), "ret": jnp.asarray(rng.normal(size=6), jnp.float32),
          "alive": jnp.array([True, True, True, True, False, True])}
    demo_actions = jnp.asarray(np.where(np.arange(6) == 5, -1, a))
    demo_mask = demo_actions >= 0
    loss_fn = ppo.make_loss_fn(model, cfg)
    (loss, m), (logits, value) = jax.jit(lambda p: (loss_fn(p, mb, obs, demo_actions, demo_mask, jnp.float32(0.8)),
                                                    model.apply({"params": p}, obs)))(params)
    # the total is the configured combination of the reported terms
    want = m["pg_loss"] + cfg.vf_coef * m["v_loss"] - cfg.ent_coef * m["entropy"] + cfg.bc_coef * 0.8 * m["bc_loss"]
    np.testing.assert_allclose(float(loss), float(want), rtol=RTOL, atol=ATOL)
    # and each term is the paper's equation on the network's outputs
    ref = np_ppo(np.asarray(logits), np.asarray(value), a, np.asarray(mb["logp"]), np.asarray(mb["adv"]),
                 np.asarray(mb["ret"]), legal, np.asarray(mb["alive"]), cfg.clip_eps)
    for name, w in zip(("pg_loss", "v_loss", "entropy", "clip_frac"), ref):
        np.testing.assert_allclose(float(m[name]), w, rtol=RTOL, atol=ATOL, err_msg=name)
    logp = np_policy_log_probs(np.asarray(logits), legal)[np.arange(6), a]
    np.testing.assert_allclose(float(m["bc_loss"]), -logp[:5].mean(), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- MuZero

def _muzero_step_batch(seed=0, b=5, a=6):
    rng = np.random.default_rng(seed)
    action_ok = np.ones((b, a), bool)
    action_ok[:, 4:] = rng.uniform(size=(b, 2)) < 0.5  # padding slots of smaller instances
    logits = np.where(action_ok, rng.normal(size=(b, a)), NEG).astype(np.float32)
    pi = np.where(action_ok, rng.gamma(1.0, size=(b, a)), 0.0)
    pi = (pi / pi.sum(-1, keepdims=True)).astype(np.float32)
    legal = (rng.uniform(size=(b, a)) < 0.6) & action_ok
    legal_logits = np.where(action_ok, rng.normal(size=(b, a)), NEG).astype(np.float32)
    value, z, r, u = (rng.uniform(size=b).astype(np.float32) for _ in range(4))
    mask = np.array([True, True, False, True, True])[:b]
    return logits, value, legal_logits, pi, z, legal, mask, action_ok, r, u


def _step(logits, value, legal_logits, pi, z, legal, mask, action_ok, r=None, u=None):
    j = lambda x: None if x is None else jnp.asarray(x)
    return step_losses(*(j(x) for x in (logits, value, legal_logits, pi, z, legal, mask, action_ok, r, u)))


def test_muzero_step_losses_match_the_papers_equation():
    b = _muzero_step_batch()
    for args in (b, b[:8]):  # with and without the reward of a dynamics step
        got = _step(*args)
        want = np_muzero_step(*args)
        for name, g, w in zip(("policy", "value", "legal", "reward"), got, want):
            np.testing.assert_allclose(float(g), w, rtol=RTOL, atol=ATOL, err_msg=name)
    assert float(_step(*b[:8]).reward) == 0.0


def test_muzero_policy_gradient_pushes_the_logits_toward_the_search_policy():
    logits, value, legal_logits, pi, z, legal, mask, action_ok, r, u = _muzero_step_batch()
    f = lambda x: step_losses(x, value, legal_logits, pi, z, legal, mask, action_ok).policy
    g = np.asarray(jax.grad(f)(jnp.asarray(logits)))
    p = np.exp(np_log_softmax(logits))
    # d l^p / dz = (softmax(z) - pi) on each real position (sum pi = 1), / the number of real positions
    np.testing.assert_allclose(g, (p - pi) * mask[:, None] / mask.sum(), rtol=1e-4, atol=1e-6)
    real = mask[:, None] & action_ok
    assert np.all(np.sign(-g[real]) == np.sign(pi - p)[real])  # descent raises a_logit where pi_a > p_a
    assert np.all(g[~mask] == 0.0)
    # a small descent step brings the predicted policy closer to the target (KL(pi || p) falls)
    kl = lambda zz: sum((pi[i] * (np.log(np.maximum(pi[i], 1e-30)) - np_log_softmax(zz)[i]))[pi[i] > 0].sum()
                        for i in np.flatnonzero(mask))
    assert kl(logits - 0.1 * g) < kl(logits)


def test_muzero_value_reward_and_legal_gradients():
    logits, value, legal_logits, pi, z, legal, mask, action_ok, r, u = _muzero_step_batch()
    B = len(value)
    terms = lambda v, rr, ll: step_losses(logits, v, ll, pi, z, legal, mask, action_ok, rr, u)
    gv = np.asarray(jax.grad(lambda v: terms(v, r, legal_logits).value)(jnp.asarray(value)))
    np.testing.assert_allclose(gv, 2 * (value - z) / B, rtol=RTOL, atol=ATOL)
    assert np.all(np.sign(gv) == np.sign(value - z))
    gr = np.asarray(jax.grad(lambda rr: terms(value, rr, legal_logits).reward)(jnp.asarray(r)))
    np.testing.assert_allclose(gr, 2 * (r - u) / B, rtol=RTOL, atol=ATOL)
    assert np.all(np.sign(gr) == np.sign(r - u))
    gl = np.asarray(jax.grad(lambda ll: terms(value, r, ll).legal)(jnp.asarray(legal_logits)))
    sig = 1 / (1 + np.exp(-np.clip(legal_logits.astype(np.float64), -50, 50)))  # NEG (padding): 0
    want = (sig - legal) * action_ok / action_ok.sum(-1, keepdims=True) / B
    np.testing.assert_allclose(gl, want, rtol=1e-4, atol=1e-7)
    assert np.all(gl[legal] < 0) and np.all(gl[action_ok & ~legal] > 0)  # legal moves pushed up, others down


N = 8
TINY_NET = MuZeroNetConfig(width=16, num_heads=2, mlp_dim=32, repr_layers=1, dyn_layers=1)


def test_muzero_loss_fn_total_is_the_configured_combination_of_the_terms():
    K, B = 1, 4
    cfg = muzero.MuZeroConfig(max_buffers=N, unroll=K, value_coef=0.7, reward_coef=1.3, legal_coef=0.4)
    model = muzero.make_model(TINY_NET)
    rng = np.random.default_rng(0)
    # random parameters of the real shapes (jax.eval_shape: compiling the initialiser would take longer)
    params = _random_like(rng, jax.eval_shape(lambda k: muzero.init_params(model, k, N), KEY))
    inst = game.pad([instance.random_instance(rng, num_buffers=n, horizon=12, max_size=16) for n in (3, 5, 8, 6)], N)
    state = game.State(offset=np.full((B, N), -1, np.int32), t=np.zeros(B, np.int32), ret=np.zeros(B, np.float32))
    A = game.num_actions(N)
    valid = np.asarray(inst.valid)  # moves: slow, floor, ceiling, on top of each slot, under each slot
    action_ok = np.concatenate([np.ones((B, 3), bool), valid, valid], -1)
    pi = np.where(action_ok[:, None], rng.gamma(1.0, size=(B, K + 1, A)), 0.0)
    batch = muzero.Batch(
        inst=inst, state=state,
        actions=np.array([[rng.choice(np.flatnonzero(row)) for _ in range(K)] for row in action_ok], np.int32),
        policy=(pi / pi.sum(-1, keepdims=True)).astype(np.float32),
        value=rng.uniform(size=(B, K + 1)).astype(np.float32), reward=rng.uniform(size=(B, K)).astype(np.float32),
        legal=(rng.uniform(size=(B, K + 1, A)) < 0.5) & action_ok[:, None],
        mask=np.array([[True, True], [True, False], [False, False], [True, True]]))

    @jax.jit
    def loss_and_unroll(p, bb):
        """loss_fn, and the network's own unroll: representation, then prediction and dynamics."""
        slots, glob, valid = jax.vmap(muzero.observation)(bb.inst, bb.state)
        latent = model.apply(p, slots, glob, valid, method=model.represent)
        preds, rewards = [], []
        for k in range(K + 1):
            preds.append(model.apply(p, latent, method=model.predict))
            if k < K:
                latent, r = model.apply(p, latent, bb.actions[:, k], method=model.dynamics)
                rewards.append(r)
        return muzero.loss_fn(model, p, bb, cfg), preds, rewards

    (loss, m), preds, rewards = jax.tree.map(np.asarray, loss_and_unroll(params, batch))
    want = (m["policy_loss"] + cfg.value_coef * m["value_loss"] + cfg.legal_coef * m["legal_loss"]
            + cfg.reward_coef * m["reward_loss"])
    np.testing.assert_allclose(float(loss), float(want), rtol=RTOL, atol=ATOL)
    # each term is Eq. 1 on the network's outputs
    tot = np.zeros(4)
    for k, pred in enumerate(preds):
        r, u = (rewards[k], batch.reward[:, k]) if k < K else (None, None)
        tot += np_muzero_step(pred.logits, pred.value, pred.legal_logits, batch.policy[:, k], batch.value[:, k],
                              batch.legal[:, k], batch.mask[:, k], action_ok, r, u)
    want_terms = {"policy_loss": tot[0] / (K + 1), "value_loss": tot[1] / (K + 1), "legal_loss": tot[2] / (K + 1),
                  "reward_loss": tot[3] / K}
    for name, w in want_terms.items():
        np.testing.assert_allclose(float(m[name]), w, rtol=1e-4, atol=ATOL, err_msg=name)
