"""Baseline: AdamW (Loshchilov & Hutter 2019) with linear warm-up and cosine decay (external tuning)."""
import optax

from algoperf.baselines import common
from algoperf.baselines.common import data_selection, get_batch_size, prepare_for_eval, update_params  # noqa: F401


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
    del model_state, rng
    return common.adam_state(optax.adamw, workload.step_hint, hyperparameters, model_params)
