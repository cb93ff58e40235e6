"""Baseline: SGD with Nesterov momentum, warm-up and cosine decay (external tuning)."""
from algoperf.baselines.common import data_selection, get_batch_size, prepare_for_eval, update_params  # noqa: F401
from algoperf.baselines.momentum_sgd import make_init_optimizer_state

init_optimizer_state = make_init_optimizer_state(nesterov=True)
