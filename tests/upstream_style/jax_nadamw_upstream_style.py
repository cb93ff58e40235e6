"""A submission written here in the style of upstream AlgoPerf's published baselines, for tests that such
files run on this suite unmodified.

Modelled on upstream's ``algorithms/baselines/external_tuning/jax_nadamw_full_budget.py`` (v0.6, JAX;
Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms"), not copied from it: it imports only
what upstream's file imports from ``algoperf`` (``spec``, ``jax_sharding_utils``), builds its optimizer state
from ``workload.param_shapes``, reads ``hyperparameters.dropout_rate`` unconditionally and
``label_smoothing`` / ``grad_clip`` when present, jits its train step inside ``update_params`` with upstream's
shardings, and its ``get_batch_size`` knows only upstream's workload names, raising ``ValueError`` for any
other -- so on this suite's workloads the runner must fall back to their default batch sizes.
"""
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from algoperf import jax_sharding_utils, spec

_GRAD_CLIP_EPS = 1e-6
# Upstream's workload names and its baselines' batch sizes; nothing of this suite.
_UPSTREAM_BATCH_SIZES = {"criteo1tb": 262_144, "fastmri": 32, "imagenet_resnet": 1024, "imagenet_vit": 1024,
                         "librispeech_conformer": 256, "librispeech_deepspeech": 256, "ogbg": 512, "wmt": 128}


def init_optimizer_state(workload: spec.Workload, model_params: spec.ParameterContainer,
                         model_state: spec.ModelAuxiliaryState, hyperparameters: spec.Hyperparameters,
                         rng: spec.RandomState) -> spec.OptimizerState:
    """NAdamW with linear warm-up then cosine decay over ``step_hint`` (upstream's full-budget schedule)."""
    del model_params, model_state, rng
    warmup_steps = int(hyperparameters.warmup_factor * workload.step_hint)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, hyperparameters.learning_rate, warmup_steps),
         optax.cosine_decay_schedule(hyperparameters.learning_rate, max(workload.step_hint - warmup_steps, 1))],
        [warmup_steps])
    opt_init_fn, opt_update_fn = optax.nadamw(schedule, b1=1.0 - hyperparameters.one_minus_beta1,
                                              b2=hyperparameters.beta2, eps=1e-8,
                                              weight_decay=hyperparameters.weight_decay)
    params_zeros_like = jax.tree.map(lambda s: jnp.zeros(s.shape_tuple), workload.param_shapes)
    return opt_init_fn(params_zeros_like), opt_update_fn


def train_step(workload, opt_update_fn, model_state, optimizer_state, current_param_container, batch, rng,
               grad_clip, label_smoothing, dropout_rate):
    def _loss_fn(params):
        logits, new_model_state = workload.model_fn(params, batch, model_state, spec.ForwardPassMode.TRAIN, rng,
                                                    update_batch_norm=True, dropout_rate=dropout_rate)
        loss_dict = workload.loss_fn(label_batch=batch["targets"], logits_batch=logits,
                                     mask_batch=batch.get("weights"), label_smoothing=label_smoothing)
        return loss_dict["summed"], (loss_dict["n_valid_examples"], new_model_state)

    (summed_loss, (n_valid_examples, new_model_state)), grad = jax.value_and_grad(_loss_fn, has_aux=True)(
        current_param_container)
    loss = summed_loss / n_valid_examples
    grad = jax.tree.map(lambda x: x / n_valid_examples, grad)
    grad_norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grad)))
    if grad_clip is not None:
        scale = jax.lax.clamp(min=0.0, x=grad_clip / (grad_norm + _GRAD_CLIP_EPS), max=1.0)
        grad = jax.tree.map(lambda x: x * scale, grad)
    updates, new_optimizer_state = opt_update_fn(grad, optimizer_state, current_param_container)
    return new_optimizer_state, optax.apply_updates(current_param_container, updates), new_model_state, loss, grad_norm


def update_params(workload: spec.Workload, current_param_container: spec.ParameterContainer,
                  current_params_types: spec.ParameterTypeTree, model_state: spec.ModelAuxiliaryState,
                  hyperparameters: spec.Hyperparameters, batch: Dict[str, spec.Tensor], loss_type: spec.LossType,
                  optimizer_state: spec.OptimizerState, eval_results: List[Tuple[int, float]], global_step: int,
                  rng: spec.RandomState, train_state: Optional[Dict[str, Any]] = None) -> spec.UpdateReturn:
    del current_params_types, loss_type, train_state, eval_results
    optimizer_state, opt_update_fn = optimizer_state
    label_smoothing = hyperparameters.label_smoothing if hasattr(hyperparameters, "label_smoothing") else 0.0
    grad_clip = hyperparameters.grad_clip if hasattr(hyperparameters, "grad_clip") else None
    dropout_rate = hyperparameters.dropout_rate
    replicated = jax_sharding_utils.get_replicate_sharding()
    sharded = jax_sharding_utils.get_batch_dim_sharding()
    jitted_train_step = jax.jit(train_step, static_argnums=(0, 1), donate_argnums=(2, 3, 4),
                                in_shardings=(replicated, replicated, replicated, sharded, replicated, replicated,
                                              replicated, replicated),
                                out_shardings=(replicated,) * 5)
    new_optimizer_state, new_params, new_model_state, loss, grad_norm = jitted_train_step(
        workload, opt_update_fn, model_state, optimizer_state, current_param_container, batch, rng, grad_clip,
        label_smoothing, dropout_rate)
    if global_step % 100 == 0 and workload.metrics_logger is not None:
        workload.metrics_logger.append_scalar_metrics({"loss": loss.item(), "grad_norm": grad_norm.item()},
                                                      global_step)
    return (new_optimizer_state, opt_update_fn), new_params, new_model_state


def prepare_for_eval(workload, current_param_container, current_params_types, model_state, hyperparameters,
                     loss_type, optimizer_state, eval_results, global_step, rng) -> spec.UpdateReturn:
    del workload, hyperparameters, current_params_types, loss_type, eval_results, global_step, rng
    return optimizer_state, current_param_container, model_state


def get_batch_size(workload_name):
    if workload_name in _UPSTREAM_BATCH_SIZES:
        return _UPSTREAM_BATCH_SIZES[workload_name]
    raise ValueError(f"Unsupported workload name: {workload_name}.")


def data_selection(workload: spec.Workload, input_queue: Iterator[Dict[str, spec.Tensor]],
                   optimizer_state: spec.OptimizerState, current_param_container: spec.ParameterContainer,
                   model_state: spec.ModelAuxiliaryState, hyperparameters: spec.Hyperparameters, global_step: int,
                   rng: spec.RandomState) -> Dict[str, spec.Tensor]:
    del workload, optimizer_state, current_param_container, model_state, hyperparameters, global_step, rng
    return next(input_queue)
