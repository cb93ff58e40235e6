"""Shared machinery of our workloads: array datasets, input queues, evaluation and parameter types.

A concrete workload defines the model (a Flax module), the dataset splits (NumPy arrays), the loss
and metrics, and the targets and budgets; this base class provides the parts of
:class:`algoperf.spec.Workload` that do not depend on them.

Input queues are pure functions of ``(seed, step)``: the batch at step k is a slice of a
per-epoch permutation seeded by ``(seed, epoch)``, so a trial resumed at step k sees the same
batches as an uninterrupted one. Batches are global arrays sharded along the batch dimension
(``jax_sharding_utils``), as the v0.6 API specifies.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from algoperf import jax_sharding_utils, spec
from algoperf.metrics import is_minimized, meets_target

SPLITS = ("train", "eval_train", "validation", "test")


def seed_from_rng(rng) -> int:
    """A 31-bit integer seed drawn from a JAX key (or an int passed through)."""
    if isinstance(rng, (int, np.integer)):
        return int(rng) % (2**31 - 1)
    data = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng)
    return int(np.uint64(data.ravel()[-1]) % (2**31 - 1))


def infer_param_type(path: tuple[str, ...], value) -> spec.ParameterType:
    """Upstream's ParameterType of a parameter from its Flax path (names and rank)."""
    names = [str(p).lower() for p in path]
    leaf, owner = names[-1], " ".join(names[:-1])
    if leaf == "embedding":
        return spec.ParameterType.EMBEDDING
    for key, kind in (("query", spec.ParameterType.ATTENTION_Q), ("key", spec.ParameterType.ATTENTION_K),
                      ("value", spec.ParameterType.ATTENTION_V), ("attention", spec.ParameterType.ATTENTION_OUT)):
        if len(names) >= 2 and key in names[-2] and leaf == "kernel":
            return kind
    if "norm" in owner:
        return spec.ParameterType.LAYER_NORM_SCALE if leaf == "scale" else spec.ParameterType.LAYER_NORM_BIAS
    if leaf == "bias":
        return spec.ParameterType.BIAS
    if leaf == "kernel" and value.ndim >= 3 and "conv" in owner:
        return spec.ParameterType.CONV_WEIGHT
    return spec.ParameterType.WEIGHT


def param_types_of(params) -> Any:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    treedef = jax.tree.structure(params)
    types = [infer_param_type(tuple(getattr(k, "key", getattr(k, "name", k)) for k in path), v) for path, v in flat]
    return jax.tree.unflatten(treedef, types)


def shapes_of(params) -> Any:
    return jax.tree.map(lambda x: spec.ShapeTuple(x.shape), params)


def epoch_batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the training batch at ``step``: slice of the permutation of epoch step // steps_per_epoch."""
    steps_per_epoch = num_examples // batch_size
    epoch, k = divmod(step, steps_per_epoch)
    permutation = _permutation(num_examples, seed, epoch)
    return permutation[k * batch_size:(k + 1) * batch_size]


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def pad_batch(batch: Dict[str, np.ndarray], size: int) -> Dict[str, np.ndarray]:
    """Pads every array to ``size`` rows and adds ``weights`` (1 for real rows, 0 for padding)."""
    n = len(next(iter(batch.values())))
    out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    weights_shape = (size,) + batch["targets"].shape[1:]
    weights = np.zeros(weights_shape, np.float32)
    weights[:n] = 1.0
    out["weights"] = weights
    return out


def masked_loss(per_example, mask_batch=None) -> Dict[str, jax.Array]:
    """Upstream's ``loss_fn`` result from per-example losses: their sum over the rows ``mask_batch`` keeps
    (all rows when it is None), the number of those rows, and the (masked) per-example losses."""
    if mask_batch is not None:
        per_example = per_example * mask_batch
        n_valid = jnp.sum(mask_batch)
    else:
        n_valid = jnp.asarray(per_example.size, per_example.dtype)
    return {"summed": jnp.sum(per_example), "n_valid_examples": n_valid, "per_example": per_example}


class BaseWorkload(spec.Workload):
    """An AlgoPerf workload over in-memory NumPy splits (see the module doc)."""

    # Set by subclasses (grouped as they do) ------------------------------------------------------
    workload_name = ""
    default_batch_size, _eval_batch_size = 128, 256
    _target_metric_name, _eval_period, _step_hint = "accuracy", 5, 1000  # eval period in seconds
    _validation_target, _test_target, _max_runtime = 0.0, 0.0, 60  # what target setting sets; budget in seconds
    _loss_type = spec.LossType.SOFTMAX_CROSS_ENTROPY
    _num_eval_train = 1000  # examples of the eval_train split (the first ones of train)

    def __init__(self, data_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self._splits: Optional[Dict[str, Dict[str, np.ndarray]]] = None
        self._model: Optional[nn.Module] = None
        self._eval_fn = None

    # -- subclass hooks ------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def load_splits(self, data_dir: str | None) -> Dict[str, Dict[str, np.ndarray]]:
        """``{'train', 'validation', 'test': {'inputs', 'targets'}}`` as NumPy arrays."""
        raise NotImplementedError

    def example_inputs(self) -> np.ndarray:
        return self.splits["train"]["inputs"][:1]

    def eval_metrics_from_sums(self, sums: Dict[str, float]) -> Dict[str, float]:
        """Final metrics from summed per-example quantities (``loss``, ``correct``, ``n``)."""
        n = max(sums["n"], 1.0)
        return {"accuracy": sums["correct"] / n, "loss": sums["loss"] / n}

    def per_example_eval(self, logits, targets, weights) -> Dict[str, jax.Array]:
        losses = self.loss_fn(targets, logits, weights)["per_example"]
        correct = (jnp.argmax(logits, -1) == targets) * weights
        return {"loss": jnp.sum(losses), "correct": jnp.sum(correct), "n": jnp.sum(weights)}

    # -- data ----------------------------------------------------------------------------------
    @property
    def splits(self) -> Dict[str, Dict[str, np.ndarray]]:
        if self._splits is None:
            splits = self.load_splits(self.data_dir)
            train = splits["train"]
            k = min(self._num_eval_train, len(train["targets"]))
            splits["eval_train"] = {key: v[:k] for key, v in train.items()}
            self._splits = splits
        return self._splits

    def _build_input_queue(self, data_rng, split: str, data_dir: str, global_batch_size: int,
                           cache: Optional[bool] = None, repeat_final_dataset: Optional[bool] = None,
                           num_batches: Optional[int] = None, start_step: int = 0) -> Iterator[Dict[str, Any]]:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; allowed: {SPLITS}")
        data = self.splits[split]
        n = len(data["targets"])
        if split == "train":
            if global_batch_size > n:
                raise ValueError(f"batch size {global_batch_size} exceeds the {n} training examples of "
                                 f"{self.workload_name}")
            seed = seed_from_rng(data_rng)
            return self._train_queue(data, seed, global_batch_size, start_step)
        return self._eval_queue(data, global_batch_size, num_batches)

    def _train_queue(self, data, seed: int, batch_size: int, start_step: int):
        n = len(data["targets"])
        step = start_step
        while True:
            idx = epoch_batch_indices(n, batch_size, seed, step)
            yield jax_sharding_utils.shard_along_batch_dim({k: v[idx] for k, v in data.items()})
            step += 1

    def _eval_queue(self, data, batch_size: int, num_batches: Optional[int]):
        n = len(data["targets"])
        total = math.ceil(n / batch_size) if num_batches is None else num_batches
        for b in range(total):
            chunk = {k: v[b * batch_size:(b + 1) * batch_size] for k, v in data.items()}
            yield jax_sharding_utils.shard_along_batch_dim(pad_batch(chunk, batch_size))

    # -- model -----------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = self.build_model()
        return self._model

    def init_model_fn(self, rng, dropout_rate: Optional[float] = None, aux_dropout_rate: Optional[float] = None):
        del dropout_rate, aux_dropout_rate  # our models have no dropout
        variables = jax.jit(self.model.init)(rng, jnp.asarray(self.example_inputs()))
        params = jax.tree.map(lambda x: x, dict(variables["params"]))
        params = nn.meta.unbox(params)
        self._param_shapes = shapes_of(params)
        self._param_types = param_types_of(params)
        return jax_sharding_utils.replicate(params), None

    def is_output_params(self, param_key) -> bool:
        return param_key == self.output_param_key

    output_param_key = "output"

    def model_fn(self, params, augmented_and_preprocessed_input_batch, model_state, mode, rng,
                 update_batch_norm: bool, dropout_rate: Optional[float] = None):
        del mode, rng, update_batch_norm, dropout_rate
        logits = self.model.apply({"params": params}, augmented_and_preprocessed_input_batch["inputs"])
        return logits, model_state

    def loss_fn(self, label_batch, logits_batch, mask_batch=None, label_smoothing: float = 0.0):
        """Softmax cross-entropy with integer labels and optional label smoothing (summed over valid rows)."""
        num_classes = logits_batch.shape[-1]
        one_hot = jax.nn.one_hot(label_batch, num_classes)
        smoothed = one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes
        per_example = -jnp.sum(smoothed * jax.nn.log_softmax(logits_batch), axis=-1)
        return masked_loss(per_example, mask_batch)

    # -- evaluation ------------------------------------------------------------------------------
    def _eval_batch(self, params, model_state, batch):
        logits, _ = self.model_fn(params, batch, model_state, spec.ForwardPassMode.EVAL, None, False)
        return self.per_example_eval(logits, batch["targets"], batch["weights"])

    def _eval_model_on_split(self, split, num_examples, global_batch_size, params, model_state, rng,
                             data_dir, global_step=0):
        """Metric sums over the split in batches of ``global_batch_size`` (the submission's
        ``get_eval_batch_size`` when it defines one, else ``eval_batch_size``); padding rows weigh 0."""
        del num_examples, rng, data_dir, global_step
        if self._eval_fn is None:
            replicated = jax_sharding_utils.get_replicate_sharding()
            self._eval_fn = jax.jit(self._eval_batch, out_shardings=replicated)
        sums: Dict[str, float] = {}
        for batch in self._build_input_queue(None, split, self.data_dir, global_batch_size):
            out = self._eval_fn(params, model_state, batch)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return self.eval_metrics_from_sums(sums)

    # -- targets and budget ----------------------------------------------------------------------
    @property
    def target_metric_name(self) -> str:
        return self._target_metric_name

    def _reached(self, eval_result, split: str, target: float) -> bool:
        value = eval_result.get(f"{split}/{self.target_metric_name}")
        return meets_target(value, target, is_minimized(self.target_metric_name))

    def has_reached_validation_target(self, eval_result) -> bool:
        return self._reached(eval_result, "validation", self.validation_target_value)

    def has_reached_test_target(self, eval_result) -> bool:
        return self._reached(eval_result, "test", self.test_target_value)

    validation_target_value = property(lambda self: self._validation_target)
    test_target_value = property(lambda self: self._test_target)
    loss_type = property(lambda self: self._loss_type)
    num_train_examples = property(lambda self: len(self.splits["train"]["targets"]))
    eval_batch_size = property(lambda self: self._eval_batch_size)
    num_eval_train_examples = property(lambda self: len(self.splits["eval_train"]["targets"]))
    num_validation_examples = property(lambda self: len(self.splits["validation"]["targets"]))
    num_test_examples = property(lambda self: len(self.splits["test"]["targets"]))
    train_mean = property(lambda self: 0.0)
    train_stddev = property(lambda self: 1.0)
    max_allowed_runtime_sec = property(lambda self: self._max_runtime)
    eval_period_time_sec = property(lambda self: self._eval_period)
    step_hint = property(lambda self: self._step_hint)
