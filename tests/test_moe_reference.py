"""A plain NumPy (float64) MoE reference: a loop over tokens and their top-k experts, forward and a
hand-written backward; checked here against central finite differences so the other MoE tests can trust it.

Loss used for gradients: L = sum(cot * y) + lb_weight * load_balance + z_weight * z_loss, with a fixed
random cotangent ``cot``; the gradients w.r.t. x and every parameter are derived by the chain rule below.
"""
import numpy as np


def silu(v):
    return v / (1 + np.exp(-v))


def dsilu(v):
    s = 1 / (1 + np.exp(-v))
    return s * (1 + v * (1 - s))


def scores_of(logits, gating):
    if gating == "softmax":
        e = np.exp(logits - logits.max())
        return e / e.sum()
    return 1 / (1 + np.exp(-logits))


def choose(scores, top_k):
    return np.argsort(-scores, kind="stable")[:top_k]


def ref_forward(params, x, top_k, gating="softmax", renormalize=True, capacity=None, keep_rule=None):
    """Returns (y, aux dict, kept [T, k] bool). ``capacity``: GShard drop rule per expert, priority all
    first choices in token order, then all second choices, ... ``keep_rule(tops) -> kept`` overrides it."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    t_count, e_count = x.shape[0], p["router"].shape[1]
    y = np.zeros_like(x)
    tops = np.zeros((t_count, top_k), int)
    weights = np.zeros((t_count, top_k))
    probs = np.zeros((t_count, e_count))
    z = 0.0
    for t in range(t_count):
        logits = x[t] @ p["router"]
        s = scores_of(logits, gating)
        tops[t] = choose(s, top_k)
        w = s[tops[t]]
        weights[t] = w / w.sum() if renormalize else w
        probs[t] = s / s.sum()
        z += (np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()) ** 2
    kept = np.ones((t_count, top_k), bool) if keep_rule is None else keep_rule(tops)
    if capacity is not None:
        fill = np.zeros(e_count, int)
        for j in range(top_k):
            for t in range(t_count):
                e = tops[t, j]
                kept[t, j] = fill[e] < capacity
                fill[e] += 1
    for t in range(t_count):
        for j in range(top_k):
            if kept[t, j]:
                e = tops[t, j]
                a = silu(x[t] @ p["w_gate"][e]) * (x[t] @ p["w_up"][e])
                y[t] += weights[t, j] * (a @ p["w_down"][e])
    counts = np.zeros(e_count)
    for t in range(t_count):
        for e in tops[t]:
            counts[e] += 1
    f = counts / (t_count * top_k)
    aux = {"load_balance_loss": e_count * np.sum(f * probs.mean(0)), "router_z_loss": z / t_count,
           "expert_fraction": f}
    return y, aux, kept


def ref_loss_and_grads(params, x, cot, top_k, gating="softmax", renormalize=True, lb_weight=0.01,
                       z_weight=0.001):
    """L and dL/d(x, params) for L = sum(cot * y) + lb_weight * lb + z_weight * z (dropless)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    cot = np.asarray(cot, np.float64)
    y, aux, _ = ref_forward(params, x, top_k, gating, renormalize)
    loss = np.sum(cot * y) + lb_weight * aux["load_balance_loss"] + z_weight * aux["router_z_loss"]
    t_count, e_count = x.shape[0], p["router"].shape[1]
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dx = np.zeros_like(x)
    f = aux["expert_fraction"]
    for t in range(t_count):
        logits = x[t] @ p["router"]
        s = scores_of(logits, gating)
        top = choose(s, top_k)
        raw = s[top]
        # experts: y_t = sum_j w_j f_e(x_t)
        dw = np.zeros(top_k)
        for j, e in enumerate(top):
            w = raw[j] / raw.sum() if renormalize else raw[j]
            hg, hu = x[t] @ p["w_gate"][e], x[t] @ p["w_up"][e]
            a = silu(hg) * hu
            out = a @ p["w_down"][e]
            dw[j] = cot[t] @ out
            g["w_down"][e] += w * np.outer(a, cot[t])
            da = w * (p["w_down"][e] @ cot[t])
            dhg, dhu = da * hu * dsilu(hg), da * silu(hg)
            g["w_gate"][e] += np.outer(x[t], dhg)
            g["w_up"][e] += np.outer(x[t], dhu)
            dx[t] += p["w_gate"][e] @ dhg + p["w_up"][e] @ dhu
        # combine weights -> scores of the chosen experts
        ds = np.zeros(e_count)
        if renormalize:
            total = raw.sum()
            ds[top] += dw / total - np.sum(dw * raw) / total ** 2
        else:
            ds[top] += dw
        # load balance: lb = E sum_e f_e mean_t p_te, p = s / sum(s)  (f has no gradient)
        dp = lb_weight * e_count * f / t_count
        ds += (dp - np.sum(dp * s / s.sum())) / s.sum()
        if gating == "softmax":
            dlogits = s * (ds - np.sum(ds * s))
        else:
            dlogits = ds * s * (1 - s)
        # z-loss: mean_t lse^2
        softmax = np.exp(logits - logits.max())
        softmax /= softmax.sum()
        lse = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
        dlogits += z_weight * 2 * lse * softmax / t_count
        g["router"] += np.outer(x[t], dlogits)
        dx[t] += p["router"] @ dlogits
    return loss, dx, g


def make_problem(seed=0, tokens=16, d=8, h=12, experts=8):
    rng = np.random.default_rng(seed)
    params = {"router": rng.normal(size=(d, experts)) / np.sqrt(d),
              "w_gate": rng.normal(size=(experts, d, h)) / np.sqrt(d),
              "w_up": rng.normal(size=(experts, d, h)) / np.sqrt(d),
              "w_down": rng.normal(size=(experts, h, d)) / np.sqrt(h)}
    x = rng.normal(size=(tokens, d))
    cot = rng.normal(size=(tokens, d))
    return params, x, cot


def test_reference_forward_is_weighted_sum_of_chosen_experts_and_aux_are_sane():
    params, x, _ = make_problem(tokens=6, experts=4)
    y, aux, kept = ref_forward(params, x, top_k=4)  # k = E, renormalised softmax: weights = full softmax
    dense = np.zeros_like(x)
    for t in range(6):
        s = scores_of(x[t] @ params["router"], "softmax")
        for e in range(4):
            a = silu(x[t] @ params["w_gate"][e]) * (x[t] @ params["w_up"][e])
            dense[t] += s[e] * (a @ params["w_down"][e])
    np.testing.assert_allclose(y, dense, rtol=1e-12, atol=1e-12)
    assert kept.all()
    np.testing.assert_allclose(aux["expert_fraction"], np.full(4, 0.25))
    np.testing.assert_allclose(aux["load_balance_loss"], 1.0)  # f uniform -> E * sum(1/E * P_e) = 1


def test_reference_gradients_match_finite_differences():
    for gating, renorm in (("softmax", True), ("sigmoid", False)):
        params, x, cot = make_problem(seed=3, tokens=5, d=4, h=6, experts=4)

        def loss_of(pp, xx):
            yy, aux, _ = ref_forward(pp, xx, 2, gating, renorm)
            return np.sum(cot * yy) + 0.01 * aux["load_balance_loss"] + 0.001 * aux["router_z_loss"]

        loss, dx, g = ref_loss_and_grads(params, x, cot, 2, gating, renorm)
        assert np.isclose(loss, loss_of(params, x))
        eps = 1e-6
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            fd[idx] = (loss_of(params, xp) - loss_of(params, xm)) / (2 * eps)
        np.testing.assert_allclose(dx, fd, rtol=1e-5, atol=1e-7)
        for name in params:
            fd = np.zeros_like(params[name])
            for idx in np.ndindex(params[name].shape):
                pp = {k: v.copy() for k, v in params.items()}
                pm = {k: v.copy() for k, v in params.items()}
                pp[name][idx] += eps
                pm[name][idx] -= eps
                fd[idx] = (loss_of(pp, x) - loss_of(pm, x)) / (2 * eps)
            np.testing.assert_allclose(g[name], fd, rtol=1e-5, atol=1e-7, err_msg=f"{gating} {name}")
