"""What the baseline submissions share: batch sizes, the LR schedule, and the jitted train step.

Every baseline is an optax GradientTransformation with a linear warm-up and a cosine decay over
``decay_fraction * step_hint`` steps (as upstream's external-tuning baselines, which decay over 75%
of the step hint), optional gradient clipping and label smoothing, and a train step jitted with the
v0.6 shardings (parameters and optimizer state replicated, the batch split along its first axis).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from algoperf import jax_sharding_utils, spec

DECAY_FRACTION = 0.75
LOG_EVERY = 100
# Global batch sizes: ours, then upstream's workloads (the values of upstream's baselines).
BATCH_SIZES = {"mnist1d": 128, "lm": 32, "ctr": 256, "molgraph": 64, "mri": 32, "mnist": 128,
               "criteo1tb": 262_144, "fastmri": 32, "imagenet_resnet": 1024, "imagenet_vit": 1024,
               "librispeech_conformer": 256, "librispeech_deepspeech": 256, "ogbg": 512, "wmt": 128,
               "finewebedu_lm": 256}


def get_batch_size(workload_name: str) -> int:
    if workload_name not in BATCH_SIZES:
        raise ValueError(f"unsupported workload {workload_name!r}; known: {sorted(BATCH_SIZES)}")
    return BATCH_SIZES[workload_name]


def warmup_cosine(step_hint: int, learning_rate: float, warmup_factor: float) -> optax.Schedule:
    """Linear warm-up over ``warmup_factor`` of the decay steps, then cosine decay to zero."""
    decay_steps = max(int(DECAY_FRACTION * step_hint), 2)
    warmup_steps = min(max(int(warmup_factor * decay_steps), 1), decay_steps - 1)
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, decay_steps, 0.0)


def hparam(hyperparameters, name: str, default=None):
    value = getattr(hyperparameters, name, default) if hyperparameters is not None else default
    return default if value is None else value


def adam_state(adam, step_hint: int, hyperparameters, model_params):
    """``make_state`` of ``adam`` (``optax.adamw`` or ``optax.nadamw``) with warm-up + cosine decay over
    ``step_hint``, the hyperparameters' beta1 (as ``one_minus_beta1``), beta2 and weight decay, eps 1e-8."""
    schedule = warmup_cosine(step_hint, hyperparameters.learning_rate, hyperparameters.warmup_factor)
    optimizer = adam(schedule, b1=1.0 - hyperparameters.one_minus_beta1, b2=hyperparameters.beta2, eps=1e-8,
                     weight_decay=hyperparameters.weight_decay)
    return make_state(optimizer, model_params)


def make_state(optimizer: optax.GradientTransformation, model_params):
    """``(optax state, update fn)``: upstream baselines keep the update function in the state."""
    replicated = jax_sharding_utils.get_replicate_sharding()
    opt_state = jax.jit(optimizer.init, out_shardings=replicated)(model_params)
    return opt_state, optimizer.update


def _train_step(workload, opt_update_fn, grad_clip, label_smoothing, model_state, optimizer_state, params,
                batch, rng):
    def loss_fn(p):
        logits, new_model_state = workload.model_fn(p, batch, model_state, spec.ForwardPassMode.TRAIN, rng,
                                                    update_batch_norm=True)
        losses = workload.loss_fn(label_batch=batch["targets"], logits_batch=logits,
                                  mask_batch=batch.get("weights"), label_smoothing=label_smoothing)
        return losses["summed"] / losses["n_valid_examples"], new_model_state

    (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grad_norm = optax.tree.norm(grads)
    if grad_clip is not None:
        scale = jnp.minimum(1.0, grad_clip / (grad_norm + 1e-6))
        grads = jax.tree.map(lambda g: g * scale, grads)
    updates, new_optimizer_state = opt_update_fn(grads, optimizer_state, params)
    return new_optimizer_state, optax.apply_updates(params, updates), new_model_state, loss, grad_norm


@functools.lru_cache(maxsize=None)
def _jitted_train_step():
    replicated = jax_sharding_utils.get_replicate_sharding()
    sharded = jax_sharding_utils.get_batch_dim_sharding()
    return jax.jit(_train_step, static_argnums=(0, 1, 2, 3), donate_argnums=(4, 5, 6),
                   in_shardings=(replicated, replicated, replicated, sharded, replicated),
                   out_shardings=(replicated,) * 5)


def update_params(workload, current_param_container, current_params_types, model_state, hyperparameters,
                  batch, loss_type, optimizer_state, eval_results, global_step, rng, train_state=None):
    """One optimizer step; logs loss and gradient norm every LOG_EVERY steps through the metrics logger."""
    del current_params_types, loss_type, eval_results, train_state
    opt_state, opt_update_fn = optimizer_state
    grad_clip = hparam(hyperparameters, "grad_clip")
    label_smoothing = float(hparam(hyperparameters, "label_smoothing", 0.0))
    new_opt_state, new_params, new_model_state, loss, grad_norm = _jitted_train_step()(
        workload, opt_update_fn, grad_clip, label_smoothing, model_state, opt_state, current_param_container,
        batch, rng)
    if global_step % LOG_EVERY == 0 and workload.metrics_logger is not None:
        workload.metrics_logger.append_scalar_metrics({"loss": float(loss), "grad_norm": float(grad_norm)},
                                                      global_step)
    return (new_opt_state, opt_update_fn), new_params, new_model_state


def prepare_for_eval(workload, current_param_container, current_params_types, model_state, hyperparameters,
                     loss_type, optimizer_state, eval_results, global_step, rng):
    del workload, current_params_types, hyperparameters, loss_type, eval_results, global_step, rng
    return optimizer_state, current_param_container, model_state


def data_selection(workload, input_queue, optimizer_state, current_param_container, model_state,
                   hyperparameters, global_step, rng):
    del workload, optimizer_state, current_param_container, model_state, hyperparameters, global_step, rng
    return next(input_queue)
