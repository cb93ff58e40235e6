"""Baseline: NAdamW (Dozat 2016 Nesterov Adam + Loshchilov & Hutter 2019 decoupled weight decay)
with linear warm-up and cosine decay; AlgoPerf submission format (external tuning)."""
import optax

from algoperf.baselines import common
from algoperf.baselines.common import data_selection, get_batch_size, prepare_for_eval, update_params  # noqa: F401


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
    del model_state, rng
    schedule = common.warmup_cosine(workload.step_hint, hyperparameters.learning_rate,
                                    hyperparameters.warmup_factor)
    optimizer = optax.nadamw(schedule, b1=1.0 - hyperparameters.one_minus_beta1, b2=hyperparameters.beta2,
                             eps=1e-8, weight_decay=hyperparameters.weight_decay)
    return common.make_state(optimizer, model_params)
