"""The generated-data workloads added for issue 35: molgraph (role of upstream's ogbg) and mri (role of
fastMRI), each against an independent reference: a dense NumPy loop for message passing, hand-counted
substructures, average precision by its definition, SSIM window by window, an overfit batch."""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algoperf import workloads as workloads_lib
from algoperf.workloads import molgraph, mri

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- molgraph
def _np_layernorm(x, scale, bias, eps=1e-6):  # flax.linen.LayerNorm's default epsilon
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_graphnet(params, graph):
    """GraphNet on ONE padded graph, edge by edge in Python (the reference for the batched segment_sum)."""
    p = jax.tree.map(np.asarray, params)
    relu = lambda x: np.maximum(x, 0.0)
    nodes, edges, senders, receivers = (np.asarray(graph[k]) for k in molgraph.GRAPH_KEYS)
    h = p["atom_embedding"]["embedding"][nodes]
    for layer in range(3):
        msg_w, upd_w = p[f"message_{layer}"]["dense_0"], p[f"update_{layer}"]["dense_0"]
        aggregated = np.zeros_like(h)
        for k in range(len(edges)):
            if edges[k] == 0:
                continue  # padding edge
            s, r = senders[k], receivers[k]
            x = np.concatenate([h[s], h[r], p["bond_embedding"]["embedding"][edges[k]]])
            aggregated[r] += relu(x @ msg_w["kernel"] + msg_w["bias"])
        update = np.concatenate([h, aggregated], -1) @ upd_w["kernel"] + upd_w["bias"]
        norm = p[f"node_norm_{layer}"]
        h = _np_layernorm(h + update, norm["scale"], norm["bias"]) * (nodes > 0)[:, None]
    real = h[nodes > 0]
    pooled = np.concatenate([real.mean(0), real.sum(0) / molgraph.MAX_NODES])
    hidden = relu(pooled @ p["readout"]["dense_0"]["kernel"] + p["readout"]["dense_0"]["bias"])
    return hidden @ p["output"]["kernel"] + p["output"]["bias"]


@pytest.fixture(scope="module")
def small_graphs():
    rng = np.random.default_rng(3)
    out = {k: np.zeros((4, molgraph.MAX_NODES if k == "nodes" else molgraph.MAX_EDGES), np.int32)
           for k in molgraph.GRAPH_KEYS}
    for g in range(4):
        atoms, bonds = molgraph._grow(rng)
        out["nodes"][g, :len(atoms)] = atoms
        for k, (i, j, order) in enumerate(bonds):
            out["senders"][g, 2 * k:2 * k + 2] = (i, j)
            out["receivers"][g, 2 * k:2 * k + 2] = (j, i)
            out["edges"][g, 2 * k:2 * k + 2] = order
    return out


def test_message_passing_equals_dense_numpy_loop(small_graphs):
    model = molgraph.GraphNet()
    params = model.init(jax.random.PRNGKey(0), small_graphs)["params"]
    logits = np.asarray(model.apply({"params": params}, small_graphs))
    assert logits.shape == (4, molgraph.NUM_TASKS)
    for g in range(4):
        ref = _np_graphnet(params, {k: v[g] for k, v in small_graphs.items()})
        np.testing.assert_allclose(logits[g], ref, rtol=1e-4, atol=1e-5)
    # a graph's logits do not depend on the other graphs of its batch (the node offsets keep them apart)
    alone = np.asarray(model.apply({"params": params}, {k: v[2:3] for k, v in small_graphs.items()}))
    np.testing.assert_allclose(alone[0], logits[2], rtol=1e-5, atol=1e-6)


def test_substructure_counts_by_hand():
    C, N, OX = molgraph.C, molgraph.N, molgraph.OX
    # acetic acid: CH3-C(=O)-OH
    counts = dict(zip(molgraph.FEATURES, molgraph.substructure_counts(
        np.array([C, C, OX, OX]), [[0, 1, 1], [1, 2, 2], [1, 3, 1]])))
    assert counts == {"carbons": 2, "nitrogens": 0, "oxygens": 2, "sulfurs": 0, "halogens": 0, "double_bonds": 1,
                      "carbonyls": 1, "hydroxyls": 1, "amines_two_carbons": 0, "atoms_bonded_to_n_and_o": 0,
                      "n_o_pairs_three_bonds_apart": 0, "rings": 0}
    # a 5-ring C1-C2-N3-C4-C5 (closing C5-C1), an O on C1: N and O three bonds apart? O-C1-C2-N3 yes (and
    # O-C1-C5-C4 no); N bonded to two carbons; C2 is bonded to N only (no O) -> no atom bonded to both
    counts = dict(zip(molgraph.FEATURES, molgraph.substructure_counts(
        np.array([C, C, N, C, C, OX]), [[0, 1, 1], [1, 2, 1], [2, 3, 1], [3, 4, 1], [4, 0, 1], [0, 5, 1]])))
    assert (counts["rings"], counts["amines_two_carbons"], counts["n_o_pairs_three_bonds_apart"],
            counts["atoms_bonded_to_n_and_o"], counts["hydroxyls"]) == (1, 1, 1, 0, 1)


def test_generated_graphs_are_valid_molecules_and_deterministic():
    generate = molgraph.generate.__wrapped__  # bypass the cache: two real draws
    a, b = generate("validation", 0), generate("validation", 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = generate("validation", 1)
    assert not np.array_equal(a["nodes"], c["nodes"])
    assert not np.array_equal(a["nodes"], molgraph.generate("test")["nodes"])  # splits differ
    valence = np.array([0, 4, 3, 2, 2, 1, 1])
    for g in range(200):
        nodes, edges = a["nodes"][g], a["edges"][g]
        n = int((nodes > 0).sum())
        assert 6 <= n <= molgraph.MAX_NODES and np.all(nodes[:n] > 0) and np.all(nodes[n:] == 0)
        used = np.zeros(molgraph.MAX_NODES)
        np.add.at(used, a["senders"][g][edges > 0], edges[edges > 0])  # each bond once per direction
        assert np.all(used <= valence[nodes]), g
        pairs = {(s, r, e) for s, r, e in zip(a["senders"][g], a["receivers"][g], edges) if e > 0}
        assert pairs == {(r, s, e) for s, r, e in pairs}  # both directions of every bond
    rate = a["targets"].mean(0)
    assert np.all((rate > 0.1) & (rate < 0.6)), rate


def _ap_by_definition(scores, labels):
    """Mean over the positives of the precision among the items scored at least as high (distinct scores)."""
    return np.mean([np.sum(labels[scores >= s]) / np.sum(scores >= s) for s in scores[labels == 1]])


def test_average_precision_by_definition():
    assert molgraph.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0.])) == \
        pytest.approx((1 / 1 + 2 / 3) / 2)
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(300, 3)), (rng.random((300, 3)) < 0.3).astype(np.float32)
    weights = np.ones_like(labels)
    weights[:50, 1] = 0  # masked labels do not count
    ref = np.mean([_ap_by_definition(scores[weights[:, t] > 0, t], labels[weights[:, t] > 0, t]) for t in range(3)])
    assert molgraph.mean_average_precision(scores, labels, weights) == pytest.approx(ref, rel=1e-6)  # float32 labels
    # the generating model ranks better than chance and below perfect
    bayes = molgraph.bayes_mean_average_precision()
    assert molgraph.generate("validation")["targets"].mean() + 0.2 < bayes < 0.95


def test_molgraph_eval_matches_reference(devices):
    w = workloads_lib.get_workload("molgraph")
    assert w.target_metric_name == "mean_average_precision" and w.has_targets
    # the target set by the procedure lies between chance and the generating model's own ranking
    assert 0.5 < w.validation_target_value < molgraph.bayes_mean_average_precision()
    params, state = w.init_model_fn(jax.random.PRNGKey(1))
    metrics = w._eval_model_on_split("validation", None, 1000, params, state, None, None)
    data = w.splits["validation"]
    logits = np.asarray(w.model.apply({"params": params}, {k: data[k] for k in molgraph.GRAPH_KEYS}))
    y = data["targets"]
    ref_map = np.mean([_ap_by_definition(logits[:, t], y[:, t]) for t in range(y.shape[1])])
    ref_loss = np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits))))
    assert metrics["mean_average_precision"] == pytest.approx(ref_map, rel=1e-5)
    assert metrics["loss"] == pytest.approx(ref_loss, rel=1e-4)


# ------------------------------------------------------------------------------------------------- mri
def _np_ssim(x, y, win=7, k1=0.01, k2=0.03):
    """SSIM of one image pair, window by window (sample variances), averaged over the windows inside."""
    data_range = y.max()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            a, b = x[i:i + win, j:j + win].ravel(), y[i:i + win, j:j + win].ravel()
            cov = np.cov(a, b, ddof=1)
            values.append((2 * a.mean() * b.mean() + c1) * (2 * cov[0, 1] + c2)
                          / ((a.mean() ** 2 + b.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)))
    return np.mean(values)


def test_ssim_matches_window_loop():
    data = mri.generate("validation")
    x, y = data["inputs"][:3].astype(np.float64), data["targets"][:3].astype(np.float64)
    ours = np.asarray(mri.ssim_per_image(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    np.testing.assert_allclose(ours, [_np_ssim(a, b) for a, b in zip(x, y)], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(mri.ssim_per_image(jnp.asarray(y), jnp.asarray(y))), 1.0, rtol=1e-5)


def test_mri_data_deterministic_and_corruption_invertible_in_principle():
    generate = mri.generate.__wrapped__
    a, b = generate("validation", 0), generate("validation", 0)
    assert np.array_equal(a["inputs"], b["inputs"]) and np.array_equal(a["targets"], b["targets"])
    assert not np.array_equal(a["targets"], generate("validation", 1)["targets"])
    assert a["targets"].min() >= 0 and a["targets"].max() <= 1 and a["inputs"].shape == (500, mri.SIZE, mri.SIZE)
    rng = np.random.default_rng(0)
    image = a["targets"][0]
    full = np.ones(mri.SIZE, bool)
    np.testing.assert_allclose(mri.corrupt(image, rng, noise=0.0, keep=full), image, atol=1e-5)  # nothing lost
    keep = mri.column_mask(rng)
    assert keep.sum() == mri.CENTER_COLUMNS + mri.OTHER_COLUMNS and keep[[0, 1, -1, -2]].all()  # centre kept
    assert not np.allclose(mri.corrupt(image, rng, noise=0.0, keep=keep), image, atol=1e-2)  # undersampling aliases
    # the task is learnable but not trivial: the corrupted input is far from the target
    ssim_in = float(jnp.mean(mri.ssim_per_image(jnp.asarray(a["inputs"]), jnp.asarray(a["targets"]))))
    assert 0.3 < ssim_in < 0.8


def test_unet_shape_and_overfits_a_batch():
    data = mri.generate("train")
    x, y = jnp.asarray(data["inputs"][:8]), jnp.asarray(data["targets"][:8])
    model = mri.UNet()
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert model.apply({"params": params}, x).shape == x.shape
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x) - y)))(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(150):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_mri_eval_matches_reference(devices):
    w = workloads_lib.get_workload("mri")
    assert w.target_metric_name == "ssim" and w.has_targets and w.eval_batch_size % len(devices) == 0
    params, state = w.init_model_fn(jax.random.PRNGKey(1))
    metrics = w._eval_model_on_split("validation", None, w.eval_batch_size, params, state, None, None)
    data = w.splits["validation"]
    out = np.asarray(w.model.apply({"params": params}, jnp.asarray(data["inputs"])))
    assert metrics["loss"] == pytest.approx(np.mean(np.abs(out - data["targets"])), rel=1e-4)
    ssim = np.asarray(mri.ssim_per_image(jnp.asarray(out), jnp.asarray(data["targets"])))
    assert metrics["ssim"] == pytest.approx(ssim.mean(), rel=1e-5)  # padding images (500 = 256 + 244) weigh 0
    assert math.isfinite(metrics["ssim"])


def test_new_workloads_registered_as_base_with_targets(monkeypatch):
    assert {"molgraph", "mri"} <= set(workloads_lib.BASE_WORKLOADS)
    assert {"molgraph", "mri"} <= set(workloads_lib.validation_targets())
    assert workloads_lib.untargeted_workloads(["mnist1d", "molgraph", "mri"]) == []
    # a workload whose targets are not set yet (None) runs but is refused by the suite, named
    monkeypatch.setattr(workloads_lib.workload_class("mri"), "_validation_target", None)
    assert "mri" not in workloads_lib.validation_targets()
    assert workloads_lib.untargeted_workloads(["mnist1d", "molgraph", "mri"]) == ["mri"]
    with pytest.raises(ValueError, match=r"\['mri'\] have no targets yet"):
        workloads_lib.check_targets_set("workloads", ["mnist1d", "mri"])


@pytest.mark.parametrize("name", ["molgraph", "mri"])
def test_new_workloads_targets_match_their_record(name):
    record = json.loads((ROOT / "results" / "algoperf" / f"targets_{name}.json").read_text())["workloads"][name]
    cls = workloads_lib.workload_class(name)
    assert (cls._validation_target, cls._test_target, cls._max_runtime) == (
        record["validation_target"], record["test_target"], record["max_runtime_s"])
    assert cls._target_setting == {"baseline": record["best"]["baseline"],
                                   "runtime_s": record["target_setting_runtime_s"],
                                   "hyperparameters": record["best"]["hyperparameters"]}
