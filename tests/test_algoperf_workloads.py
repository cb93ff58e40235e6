"""AlgoPerf workloads: losses and evaluation metrics against NumPy references; data loaders."""
import math

import jax
import numpy as np
import pytest

from algoperf import spec
from algoperf.workloads import VARIANTS, WORKLOADS, get_workload, validation_targets
from algoperf.workloads import ctr, mnist


def np_softmax_ce(logits, labels, smoothing=0.0):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    k = logits.shape[-1]
    target = np.eye(k)[labels] * (1 - smoothing) + smoothing / k
    return -(target * logp).sum(-1)


def np_sigmoid_ce(logits, labels, smoothing=0.0):
    y = labels * (1 - smoothing) + 0.5 * smoothing
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


class SmallCTR(ctr.CTRWorkload):
    _eval_batch_size = 64  # 5,000 rows -> padded last batch exercises the mask

    def load_splits(self, data_dir):
        splits = super().load_splits(data_dir)
        return {k: {kk: vv[:300] for kk, vv in v.items()} for k, v in splits.items()}


def _np_eval(workload, params, split, metric_fn):
    data = workload.splits[split]
    logits = np.asarray(workload.model.apply({"params": params}, data["inputs"]))
    return metric_fn(logits, data["targets"])


def test_classification_loss_fn_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 12)
    mask = (rng.random(12) > 0.3).astype(np.float32)
    w = mnist.MnistWorkload()
    out = w.loss_fn(labels, logits, mask, label_smoothing=0.1)
    ref = np_softmax_ce(logits, labels, 0.1) * mask
    np.testing.assert_allclose(out["per_example"], ref, rtol=1e-5, atol=1e-6)
    assert float(out["summed"]) == pytest.approx(ref.sum(), rel=1e-5)
    assert float(out["n_valid_examples"]) == mask.sum()


def test_ctr_loss_and_eval_match_numpy(devices):
    w = SmallCTR()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20,)).astype(np.float32) * 3
    labels = (rng.random(20) > 0.5).astype(np.float32)
    out = w.loss_fn(labels, logits, None, label_smoothing=0.2)
    np.testing.assert_allclose(out["per_example"], np_sigmoid_ce(logits, labels, 0.2), rtol=1e-5, atol=1e-6)
    params, state = w.init_model_fn(jax.random.PRNGKey(0))
    metrics = w._eval_model_on_split("validation", 300, 64, params, state, None, None)
    ref_loss = _np_eval(w, params, "validation", lambda z, y: np_sigmoid_ce(z, y).mean())
    ref_acc = _np_eval(w, params, "validation", lambda z, y: np.mean((z > 0) == (y > 0.5)))
    assert metrics["loss"] == pytest.approx(ref_loss, rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(ref_acc, abs=1e-6)
    assert w.loss_type == spec.LossType.SIGMOID_CROSS_ENTROPY
    # the generating model is known: its own log loss is the floor, below the target
    assert ctr.bayes_log_loss() < ctr.CTRWorkload._validation_target


def test_mnist_idx_and_npz_loaders_and_eval(tmp_path, devices):
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (96, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, 96).astype(np.uint8)
    x_test = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y_test = rng.integers(0, 10, 40).astype(np.uint8)
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    for key, array in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        mnist.write_idx(idx_dir / (mnist.IDX_FILES[key] + (".gz" if key == "x_train" else "")), array)
    np.testing.assert_array_equal(mnist.read_idx(idx_dir / "t10k-images-idx3-ubyte"), x_test)
    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(npz_dir / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    a, b = get_workload("mnist", str(idx_dir)), get_workload("mnist", str(npz_dir))
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(a.splits[split]["inputs"], b.splits[split]["inputs"])
    assert a.num_train_examples == 80 and a.num_validation_examples == 16 and a.num_test_examples == 40
    params, state = a.init_model_fn(jax.random.PRNGKey(0))
    assert a.param_shapes["hidden"]["kernel"] == spec.ShapeTuple((784, 128))
    assert a.model_params_types["hidden"]["bias"] == spec.ParameterType.BIAS
    a._eval_batch_size = 16  # 40 test rows -> 3 batches, the last padded
    metrics = a._eval_model_on_split("test", 40, 16, params, state, None, None)
    assert metrics["loss"] == pytest.approx(_np_eval(a, params, "test", lambda z, y: np_softmax_ce(z, y).mean()),
                                            rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(_np_eval(a, params, "test", lambda z, y: np.mean(z.argmax(-1) == y)))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / mnist.IDX_FILES["x_train"]).write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="neither mnist.npz nor|bad magic"):
        get_workload("mnist", str(tmp_path / "junk")).splits
    with pytest.raises(ValueError, match="^data_dir=None"):
        get_workload("mnist").splits


def test_lm_eval_matches_numpy_bits_per_byte(devices):
    w = get_workload("lm")
    params, state = w.init_model_fn(jax.random.PRNGKey(0))
    windows = w._eval_windows("validation")
    assert len(windows["inputs"]) == w.num_validation_examples
    logits = np.asarray(w.model.apply({"params": params}, windows["inputs"]))
    ref = np_softmax_ce(logits.reshape(-1, 256), windows["targets"].reshape(-1)).mean()
    # the default eval batch, and a submission's get_eval_batch_size that does not divide the windows (padded)
    for batch_size in (w.eval_batch_size, 40):
        metrics = w._eval_model_on_split("validation", 0, batch_size, params, state, None, None)
        assert metrics["loss"] == pytest.approx(ref, rel=1e-4)
        assert metrics["bits_per_byte"] == pytest.approx(ref / math.log(2), rel=1e-4)


def test_mnist1d_eval_matches_numpy(devices):
    w = get_workload("mnist1d_tanh")
    params, state = w.init_model_fn(jax.random.PRNGKey(0))
    metrics = w._eval_model_on_split("validation", 500, 256, params, state, None, None)
    assert metrics["accuracy"] == pytest.approx(_np_eval(w, params, "validation",
                                                         lambda z, y: np.mean(z.argmax(-1) == y)))
    assert metrics["loss"] == pytest.approx(_np_eval(w, params, "validation",
                                                     lambda z, y: np_softmax_ce(z, y).mean()), rel=1e-4)
    assert w.model_params_types["conv_0"]["kernel"] == spec.ParameterType.CONV_WEIGHT


def test_registry_variants_and_unknown_workload():
    assert set(VARIANTS) <= set(WORKLOADS) and all(b in WORKLOADS for b in VARIANTS.values())
    targets = validation_targets()
    assert targets["lm"].metric == "validation/bits_per_byte" and targets["lm"].minimize
    assert targets["mnist1d"].metric == "validation/accuracy" and not targets["mnist1d"].minimize
    with pytest.raises(ValueError, match="unknown; allowed"):
        get_workload("imagenet_resnet")
