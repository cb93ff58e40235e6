"""Baseline for the self-tuning ruleset: NAdamW with fixed hyperparameters (no search space; the
runner gives it 1.5x the runtime budget, 3x under v0.5). The values are those of upstream's self-tuning NAdamW
baseline (learning rate ~1.75e-3, beta1 ~0.933, beta2 ~0.9955, weight decay ~0.081), with 5% warm-up."""
import collections

import optax

from algoperf.baselines import common
from algoperf.baselines.common import data_selection, get_batch_size, prepare_for_eval  # noqa: F401
from algoperf.baselines.common import update_params as _update_params

HPARAMS = {"learning_rate": 0.0017486387539278373, "one_minus_beta1": 0.06733926164, "beta2": 0.9955159689799007,
           "weight_decay": 0.08121616522670176, "warmup_factor": 0.05, "label_smoothing": 0.0}
FIXED = collections.namedtuple("Hyperparameters", list(HPARAMS))(**HPARAMS)


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
    del model_state, rng, hyperparameters  # self-tuning: ignores any given hyperparameters
    return common.adam_state(optax.nadamw, workload.step_hint, FIXED, model_params)


def update_params(workload, current_param_container, current_params_types, model_state, hyperparameters,
                  batch, loss_type, optimizer_state, eval_results, global_step, rng, train_state=None):
    return _update_params(workload, current_param_container, current_params_types, model_state, FIXED, batch,
                          loss_type, optimizer_state, eval_results, global_step, rng, train_state)
