"""The AlgoPerf submission API (MLCommons algorithmic-efficiency v0.6), JAX only, no torch import.

A submission written for upstream imports ``from algoperf import spec`` and finds here the same names
and values: the enums ``LossType``, ``ForwardPassMode``, ``ParameterType``; ``ShapeTuple``; the type
aliases; ``TrainingCompleteError``; and the abstract :class:`Workload` whose members a submission may
use (``param_shapes``, ``model_params_types``, ``model_fn``, ``loss_fn``, ``step_hint``,
``max_allowed_runtime_sec``, ``eval_period_time_sec``, targets, ``num_train_examples``,
``metrics_logger``). Reference: Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms",
section 4 (the submission API) and the upstream ``algoperf/spec.py``.
"""
from __future__ import annotations

import abc
import enum
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import jax


class LossType(enum.Enum):
    SOFTMAX_CROSS_ENTROPY = 0
    SIGMOID_CROSS_ENTROPY = 1
    MEAN_SQUARED_ERROR = 2
    CTC_LOSS = 3
    MEAN_ABSOLUTE_ERROR = 4


class ForwardPassMode(enum.Enum):
    TRAIN = 0
    EVAL = 1


class ParameterType(enum.Enum):
    WEIGHT = 0
    BIAS = 1
    CONV_WEIGHT = 2
    BATCH_NORM_SCALE = 3
    BATCH_NORM_BIAS = 4
    LAYER_NORM_SCALE = 5
    LAYER_NORM_BIAS = 6
    EMBEDDING = 7
    ATTENTION_Q = 8
    ATTENTION_K = 9
    ATTENTION_V = 10
    ATTENTION_OUT = 11
    ATTENTION_QKV = 12
    ATTENTION_KV = 13
    ATTENTION_BIAS = 14


Tensor = Any


class ShapeTuple:
    """A parameter's shape as one pytree *leaf* (a plain tuple would be flattened by ``jax.tree``)."""

    def __init__(self, shape_tuple):
        self.shape_tuple = tuple(shape_tuple)

    def __repr__(self):
        return f"ShapeTuple({self.shape_tuple})"

    def __eq__(self, other):
        return isinstance(other, ShapeTuple) and self.shape_tuple == other.shape_tuple

    def __hash__(self):
        return hash(self.shape_tuple)


Shape = Union[Tuple[int], Tuple[int, int], Tuple[int, int, int], Tuple[int, int, int, int], ShapeTuple]
ParameterShapeTree = Dict[str, Dict[str, Shape]]
ParameterKey = str
ParameterContainer = Dict[ParameterKey, Any]
ParameterTypeTree = Dict[ParameterKey, Dict[ParameterKey, ParameterType]]
RandomState = Any
OptimizerState = Union[Dict[str, Any], Tuple[Any, Any]]
Hyperparameters = Any
Timing = int
Steps = int
ModelAuxiliaryState = Any
ModelInitState = Tuple[ParameterContainer, ModelAuxiliaryState]
UpdateReturn = Tuple[OptimizerState, ParameterContainer, ModelAuxiliaryState]


class TrainingCompleteError(Exception):
    """Raised by ``update_params`` to end a run early; the run gets one final free evaluation."""


class Workload(metaclass=abc.ABCMeta):
    """A model, a dataset, a loss, an evaluation metric with targets, and a runtime budget."""

    def __init__(self, *args, **kwargs) -> None:
        del args, kwargs
        self._param_shapes: Optional[ParameterShapeTree] = None
        self._param_types: Optional[ParameterTypeTree] = None
        self._eval_iters: Dict[str, Iterator] = {}
        self.metrics_logger = None

    def attach_metrics_logger(self, metrics_logger) -> None:
        self.metrics_logger = metrics_logger

    # -- targets and budget ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def target_metric_name(self) -> str:
        """The metric (without split prefix) whose validation/test values are compared to targets."""

    @abc.abstractmethod
    def has_reached_validation_target(self, eval_result: Dict[str, float]) -> bool:
        """Whether ``eval_result['validation/<target_metric_name>']`` meets the validation target."""

    @abc.abstractmethod
    def has_reached_test_target(self, eval_result: Dict[str, float]) -> bool:
        """Whether ``eval_result['test/<target_metric_name>']`` meets the test target."""

    @property
    @abc.abstractmethod
    def validation_target_value(self) -> float: ...

    @property
    @abc.abstractmethod
    def test_target_value(self) -> float: ...

    @property
    @abc.abstractmethod
    def loss_type(self) -> LossType: ...

    @property
    @abc.abstractmethod
    def num_train_examples(self) -> int: ...

    @property
    @abc.abstractmethod
    def eval_batch_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def num_eval_train_examples(self) -> int: ...

    @property
    @abc.abstractmethod
    def num_validation_examples(self) -> int: ...

    @property
    @abc.abstractmethod
    def num_test_examples(self) -> int: ...

    @property
    @abc.abstractmethod
    def train_mean(self) -> Any: ...

    @property
    @abc.abstractmethod
    def train_stddev(self) -> Any: ...

    @property
    @abc.abstractmethod
    def max_allowed_runtime_sec(self) -> int: ...

    @property
    @abc.abstractmethod
    def eval_period_time_sec(self) -> int: ...

    @property
    @abc.abstractmethod
    def step_hint(self) -> int:
        """Approximate number of steps the reference algorithm takes within the runtime budget."""

    # -- model -----------------------------------------------------------------------------
    @property
    def param_shapes(self):
        if self._param_shapes is None:
            raise ValueError("workload.init_model_fn() must be called before workload.param_shapes")
        return self._param_shapes

    @property
    def model_params_types(self):
        if self._param_types is None:
            raise ValueError("workload.init_model_fn() must be called before workload.model_params_types")
        return self._param_types

    @abc.abstractmethod
    def is_output_params(self, param_key: ParameterKey) -> bool: ...

    @abc.abstractmethod
    def init_model_fn(self, rng: RandomState, dropout_rate: Optional[float] = None,
                      aux_dropout_rate: Optional[float] = None) -> ModelInitState:
        """Returns ``(initial_params, initial_model_state)`` and sets ``param_shapes``/types."""

    @abc.abstractmethod
    def model_fn(self, params: ParameterContainer, augmented_and_preprocessed_input_batch: Dict[str, Tensor],
                 model_state: ModelAuxiliaryState, mode: ForwardPassMode, rng: RandomState,
                 update_batch_norm: bool, dropout_rate: Optional[float] = None
                 ) -> Tuple[Tensor, ModelAuxiliaryState]:
        """Returns ``(logits_batch, new_model_state)``."""

    def output_activation_fn(self, logits_batch: Tensor, framework: str = "jax") -> Tensor:
        """Turns logits into predictions according to ``loss_type`` (JAX only here)."""
        if framework != "jax":
            raise ValueError(f"framework={framework!r}; this implementation supports only 'jax'")
        activation = {
            LossType.SOFTMAX_CROSS_ENTROPY: jax.nn.softmax,
            LossType.SIGMOID_CROSS_ENTROPY: jax.nn.sigmoid,
            LossType.CTC_LOSS: jax.nn.softmax,
            LossType.MEAN_SQUARED_ERROR: lambda z: z,
            LossType.MEAN_ABSOLUTE_ERROR: lambda z: z,
        }
        return activation[self.loss_type](logits_batch)

    @abc.abstractmethod
    def loss_fn(self, label_batch, logits_batch, mask_batch=None, label_smoothing: float = 0.0
                ) -> Dict[str, Tensor]:
        """``{'summed', 'n_valid_examples', 'per_example'}`` of the (masked) loss; no regularisation."""

    # -- data and evaluation ---------------------------------------------------------------
    @abc.abstractmethod
    def _build_input_queue(self, data_rng: RandomState, split: str, data_dir: str, global_batch_size: int,
                           cache: Optional[bool] = None, repeat_final_dataset: Optional[bool] = None,
                           num_batches: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """The batches of ``split``; the only member a submission may not call."""

    @abc.abstractmethod
    def _eval_model_on_split(self, split: str, num_examples: int, global_batch_size: int,
                             params: ParameterContainer, model_state: ModelAuxiliaryState, rng: RandomState,
                             data_dir: str, global_step: int = 0) -> Dict[str, float]: ...

    def eval_model(self, global_batch_size: int, params: ParameterContainer, model_state: ModelAuxiliaryState,
                   rng: RandomState, data_dir: str, imagenet_v2_data_dir: Optional[str], global_step: int
                   ) -> Dict[str, float]:
        """Evaluates on ``eval_train``, ``validation`` and ``test``; keys prefixed by the split."""
        del imagenet_v2_data_dir
        results: Dict[str, float] = {}
        for split, prefix, n in (("eval_train", "train", self.num_eval_train_examples),
                                 ("validation", "validation", self.num_validation_examples),
                                 ("test", "test", self.num_test_examples)):
            if n is None:
                continue
            metrics = self._eval_model_on_split(split, n, global_batch_size, params, model_state, rng,
                                                data_dir, global_step)
            results.update({f"{prefix}/{k}": v for k, v in metrics.items()})
            if prefix != "train":
                results[f"{prefix}/num_examples"] = n
        return results


# -- the submission functions (documentation of the signatures; a submission defines them) --------
InitOptimizerFn = Callable[[Workload, ParameterContainer, ModelAuxiliaryState, Hyperparameters, RandomState],
                           OptimizerState]
UpdateParamsFn = Callable[..., UpdateReturn]
PrepareForEvalFn = Callable[..., UpdateReturn]
DataSelectionFn = Callable[..., Dict[str, Tensor]]
REQUIRED_SUBMISSION_FUNCTIONS = ("get_batch_size", "init_optimizer_state", "update_params", "data_selection")
OPTIONAL_SUBMISSION_FUNCTIONS = ("prepare_for_eval",)


def init_optimizer_state(workload: Workload, model_params: ParameterContainer, model_state: ModelAuxiliaryState,
                         hyperparameters: Hyperparameters, rng: RandomState) -> OptimizerState:
    """Returns the initial optimizer state."""


def update_params(workload: Workload, current_param_container: ParameterContainer,
                  current_params_types: ParameterTypeTree, model_state: ModelAuxiliaryState,
                  hyperparameters: Hyperparameters, batch: Dict[str, Tensor], loss_type: LossType,
                  optimizer_state: OptimizerState, eval_results: List[Tuple[int, float]], global_step: int,
                  rng: RandomState, train_state: Optional[Dict[str, Any]] = None) -> UpdateReturn:
    """One step: returns ``(new_optimizer_state, new_params, new_model_state)``."""


def prepare_for_eval(workload: Workload, current_param_container: ParameterContainer,
                     current_params_types: ParameterTypeTree, model_state: ModelAuxiliaryState,
                     hyperparameters: Hyperparameters, loss_type: LossType, optimizer_state: OptimizerState,
                     eval_results: List[Tuple[int, float]], global_step: int, rng: RandomState) -> UpdateReturn:
    """Timed hook before each evaluation (e.g. swap in averaged weights)."""


def data_selection(workload: Workload, input_queue: Iterator[Dict[str, Any]], optimizer_state: OptimizerState,
                   current_param_container: ParameterContainer, model_state: ModelAuxiliaryState,
                   hyperparameters: Hyperparameters, global_step: int, rng: RandomState) -> Dict[str, Tensor]:
    """Selects the next batch from the (infinitely repeating, shuffled) input queue."""


def get_batch_size(workload_name: str) -> int:
    """The global training batch size for ``workload_name``; ValueError for an unknown name."""
