"""SGD with momentum and decoupled weight decay: v <- beta v + g; step = lr (g + beta v) with Nesterov
(Sutskever et al. 2013, eq. 3-4) or lr v for heavy ball (Polyak 1964); warm-up then cosine decay."""
import optax

from algoperf.baselines import common


def make_init_optimizer_state(nesterov: bool):
    def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
        del model_state, rng
        schedule = common.warmup_cosine(workload.step_hint, hyperparameters.learning_rate,
                                        hyperparameters.warmup_factor)
        optimizer = optax.chain(
            optax.add_decayed_weights(hyperparameters.weight_decay),
            optax.sgd(schedule, momentum=1.0 - hyperparameters.one_minus_beta1, nesterov=nesterov))
        return common.make_state(optimizer, model_params)
    return init_optimizer_state
