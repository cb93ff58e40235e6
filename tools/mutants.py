r"""The planted bugs of the mutation check (:mod:`tools.mutation`, ``tools/mutation_check.py``).

Each :class:`Mutant` replaces one exact snippet of one file (``old``, which must occur exactly once there,
else the mutant is STALE and the check fails) by ``new``, and names the tests that must fail on it: pytest
paths or node ids (``tests``) and an optional ``-k`` expression (``k``, applied to all of them). Keep each
selection tight (one mutant's run well under a minute on two cores); a selection may name a test file that
does not exist yet (the mutant is then reported as ERROR until it does). When a module is refactored, its
mutants go STALE: rewrite ``old``/``new`` against the new text (``--list_mutants`` shows which).

``bug`` says what the mutant models, in the words of the documented rule it breaks.
"""
from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    name: str
    file: str                # repository-relative path
    old: str                 # exact text, occurring exactly once in ``file``
    new: str
    tests: tuple[str, ...]   # pytest paths or node ids
    bug: str
    k: str = ""              # pytest -k expression (empty: none)


CANARY = "canary_import_raises"
CANARY_MARKER = "mutation-check canary"

_SCORING_TESTS = ("tests/test_algoperf_core.py",)
_SCORING_K = "time_to_target or study_rule or ratio_cut or profiles_and_scores"
_MOE_TESTS = ("tests/test_moe.py",)
_MOE_ROUTING_K = "router_weights or dropless_matches"
_JSSP_ENV_TESTS = ("tests/test_jssp_timing.py",
                   "tests/test_jssp_core.py::test_env_random_legal_policies_vs_validator_and_python_env",
                   "tests/test_jssp_core.py::test_observation_shapes_and_masks")
_RL_LOSS_TESTS = ("tests/test_rl_losses.py",)
_SELF_LABEL_TESTS = ("tests/test_jssp_self_label.py",)
_DILOCO_TESTS = ("tests/test_diloco.py",)
_DILOCO_K = "not pmap_backend"  # the pmap twin compiles everything again (a third of the file's time)

MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- the harness's own sanity check
    Mutant(CANARY, "algoperf/scoring.py",
           'TIME_COLUMN = "score"\n',
           f'raise RuntimeError("{CANARY_MARKER}: the copy\'s algoperf/scoring.py was imported")\n',
           _SCORING_TESTS, "raises at import: proves the tests import the mutated copy, not the editable "
           "install", k="test_trial_study_workload_time_to_target"),

    # ---------------------------------------------------------------- parallel/quantize.py
    Mutant("fp4_ties_round_up", "parallel/quantize.py",
           "jnp.sum(jnp.abs(y)[..., None] > midpoints, axis=-1)",
           "jnp.sum(jnp.abs(y)[..., None] >= midpoints, axis=-1)",
           ("tests/test_quantize.py",), "fp4 rounding sends a value exactly halfway between two grid points "
           "up; the documented rule is ties to the smaller magnitude"),
    Mutant("fp4_scale_to_second_top", "parallel/quantize.py",
           "s = _scale(_absmax(x2d, scale), float(grid[-1]))",
           "s = _scale(_absmax(x2d, scale), float(grid[-2]))",
           ("tests/test_quantize.py",), "fp4 scale maps the largest magnitude to the grid's second-largest "
           "value instead of its top"),
    Mutant("fp4_sign_dropped", "parallel/quantize.py",
           "value = jnp.where((codes >> 3) > 0, -magnitude, magnitude)",
           "value = magnitude",
           ("tests/test_quantize.py",), "fp4 decode ignores the sign bit"),
    Mutant("fp4_nibble_order_swapped", "parallel/quantize.py",
           "return (pairs[:, 0] | (pairs[:, 1] << 4)).astype(jnp.uint8)",
           "return (pairs[:, 1] | (pairs[:, 0] << 4)).astype(jnp.uint8)",
           ("tests/test_quantize.py",), "pack puts the first code in the high nibble; unpack reads it from "
           "the low one"),
    Mutant("fp4_row_scale_is_tensor_max", "parallel/quantize.py",
           "return jnp.max(jnp.abs(x2d), axis=1, keepdims=True)",
           "return jnp.max(jnp.abs(x2d)) * jnp.ones((x2d.shape[0], 1), x2d.dtype)",
           ("tests/test_quantize.py",), "scale='row' uses the whole tensor's largest magnitude for every row"),
    Mutant("payload_nbytes_floor", "parallel/quantize.py",
           "return (n + 1) // 2 + scales",
           "return n // 2 + scales",
           ("tests/test_quantize.py",), "an odd number of fp4 codes is counted as floor(n/2) bytes, not "
           "ceil(n/2)"),

    # ---------------------------------------------------------------- parallel/moe (routing, combine, capacity)
    Mutant("moe_topk_picks_lowest", "parallel/moe/routing.py",
           "    weights, experts = lax.top_k(scores, top_k)\n",
           "    weights, experts = lax.top_k(-scores, top_k)\n    weights = -weights\n",
           _MOE_TESTS, "top-k routing chooses the k lowest-scoring experts", k=_MOE_ROUTING_K),
    Mutant("moe_renormalize_skipped", "parallel/moe/routing.py",
           "weights = weights / jnp.sum(weights, axis=-1, keepdims=True)",
           "weights = weights",
           _MOE_TESTS, "renormalize=True leaves the k weights as raw scores (no division by their sum)",
           k=_MOE_ROUTING_K),
    Mutant("moe_combine_weights_reversed", "parallel/moe/routing.py",
           'y = jnp.einsum("tk,tkd->td", weights.astype(jnp.float32),',
           'y = jnp.einsum("tk,tkd->td", weights[:, ::-1].astype(jnp.float32),',
           _MOE_TESTS, "the combine gives expert j the weight of the token's (k-1-j)-th choice",
           k=_MOE_ROUTING_K),
    Mutant("moe_capacity_keeps_one_more", "parallel/moe/capacity.py",
           "keep = pos < cap",
           "keep = pos <= cap",
           _MOE_TESTS, "the capacity baseline counts an expert's (C+1)-th assignment as kept (dropped_fraction "
           "too low)", k="capacity_variant"),
    Mutant("moe_capacity_token_major_priority", "parallel/moe/capacity.py",
           "    onehot = jax.nn.one_hot(bins.T.reshape(-1), num_bins, dtype=jnp.int32)  # slot-major order [k*T, B]\n"
           "    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)\n"
           "    return position.reshape(k, t).T\n",
           "    onehot = jax.nn.one_hot(bins.reshape(-1), num_bins, dtype=jnp.int32)\n"
           "    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)\n"
           "    return position.reshape(t, k)\n",
           _MOE_TESTS, "capacity priority is token-major (a token's second choice before the next token's "
           "first) instead of GShard's all-first-choices-first", k="capacity_variant"),
    Mutant("moe_load_balance_missing_E", "parallel/moe/routing.py",
           "return num_experts * jnp.sum(f * p)",
           "return jnp.sum(f * p)",
           _MOE_TESTS, "Switch load-balancing loss without the factor E (1/E instead of 1 when uniform)",
           k=_MOE_ROUTING_K),

    # ---------------------------------------------------------------- parallel/diloco.py
    Mutant("diloco_merge_alpha_swapped", "parallel/diloco.py",
           "lambda l, g: alpha * l + (1.0 - alpha) * g",
           "lambda l, g: (1.0 - alpha) * l + alpha * g",
           _DILOCO_TESTS, "fragment merge computes (1-α)·θ_m + α·θ instead of α·θ_m + (1-α)·θ",
           k=_DILOCO_K),
    Mutant("diloco_outer_gradient_sign", "parallel/diloco.py",
           "lambda g, l: g - l, global_params, local_params",
           "lambda g, l: l - g, global_params, local_params",
           _DILOCO_TESTS, "outer gradient Δ = θ_m - θ instead of θ - θ_m (outer step goes backwards)",
           k=_DILOCO_K),
    Mutant("diloco_momentum_sign", "parallel/diloco.py",
           "momentum=momentum if momentum > 0 else None",
           "momentum=-momentum if momentum > 0 else None",
           _DILOCO_TESTS, "outer Nesterov momentum with the wrong sign (m ← Δ - μ m)", k=_DILOCO_K),
    Mutant("diloco_outer_lr_ignored", "parallel/diloco.py",
           "self.outer_opt = outer_optimizer(cfg.outer_lr, cfg.outer_momentum, cfg.nesterov)",
           "self.outer_opt = outer_optimizer(0.7, cfg.outer_momentum, cfg.nesterov)",
           _DILOCO_TESTS, "the trainer ignores outer_lr (always the paper's 0.7)", k=_DILOCO_K),
    Mutant("diloco_quantized_sum_not_mean", "parallel/diloco.py",
           "return jnp.sum(decoded, axis=0) / workers",
           "return jnp.sum(decoded, axis=0)",
           _DILOCO_TESTS, "quantised outer gradients are summed over workers, not averaged", k=_DILOCO_K),
    Mutant("diloco_merge_without_tau_delay", "parallel/diloco.py",
           "return syncs_at(t - tau, inner_steps, fragments) if t - tau >= 1 else []",
           "return syncs_at(t, inner_steps, fragments)",
           _DILOCO_TESTS, "a fragment's outer update is merged at its sync step, not τ steps later", k=_DILOCO_K),

    # ---------------------------------------------------------------- algoperf/scoring.py
    Mutant("algoperf_target_direction_flipped", "algoperf/scoring.py",
           "return value <= target if minimize else value >= target",
           "return value >= target if minimize else value <= target",
           _SCORING_TESTS, "time to target: a minimised metric counts as reaching its target when >= target",
           k=_SCORING_K),
    Mutant("algoperf_target_strict", "algoperf/scoring.py",
           "return value <= target if minimize else value >= target",
           "return value < target if minimize else value > target",
           _SCORING_TESTS, "time to target: a value exactly at the target does not count (< instead of <=)",
           k=_SCORING_K),
    Mutant("algoperf_profile_strict_tau", "algoperf/scoring.py",
           "(r <= tau).sum() / num_base_workloads",
           "(r < tau).sum() / num_base_workloads",
           _SCORING_TESTS, "performance profile counts r < τ instead of r <= τ (the best submission has ρ(1) = 0)",
           k=_SCORING_K),
    Mutant("algoperf_ratio_cut_inclusive", "algoperf/scoring.py",
           "math.inf if t > max_ratio * best[w] else t",
           "math.inf if t >= max_ratio * best[w] else t",
           _SCORING_TESTS, "a time exactly max_ratio (4x) the best is cut to inf", k=_SCORING_K),
    Mutant("algoperf_study_tie_last_trial", "algoperf/scoring.py",
           "return next(time for index, time in pairs if index == best_index)",
           "return [time for index, time in pairs if index == best_index][-1]",
           _SCORING_TESTS, "study time: ties on the evaluation index go to the last trial, not the first",
           k=_SCORING_K),

    # ---------------------------------------------------------------- rl/jssp/env.py
    Mutant("jssp_op_starts_before_now", "rl/jssp/env.py",
           "s = jnp.maximum(state.t, est[j])",
           "s = est[j]",
           _JSSP_ENV_TESTS,
           "a dispatched operation starts at its earliest start, which may lie before the "
           "current time t (event-driven rule: it starts at t)"),
    Mutant("jssp_machine_availability_ignored", "rl/jssp/env.py",
           "est = jnp.maximum(state.job_ready, state.mach_ready[m])\n    return jnp.where(job_done",
           "est = state.job_ready\n    return jnp.where(job_done",
           _JSSP_ENV_TESTS, "a job's next operation may start while its machine is still busy"),
    Mutant("jssp_reward_sign", "rl/jssp/env.py",
           "reward = (lb_before - lower_bound(problem, new))",
           "reward = (lower_bound(problem, new) - lb_before)",
           _JSSP_ENV_TESTS, "reward is the increase of the makespan lower bound instead of its decrease"),
    Mutant("jssp_propagate_ignores_machines", "rl/jssp/env.py",
           "est = jnp.where(decided, s, jnp.maximum(prev_end, state.mach_ready[m]))",
           "est = jnp.where(decided, s, prev_end)",
           _JSSP_ENV_TESTS, "propagation of undecided operations ignores machine availability (lower bound "
           "and observation too low mid-episode; the episode return still telescopes)"),
    Mutant("jssp_noop_jumps_to_last_event", "rl/jssp/env.py",
           "next_event = jnp.min(jnp.where(est > state.t, est, BIG))",
           "next_event = jnp.max(jnp.where((est > state.t) & (est < BIG), est, -1))",
           _JSSP_ENV_TESTS, "the No-Op moves time to the latest pending event instead of the next one"),

    # ---------------------------------------------------------------- rl/jssp/agent.py (PPO loss)
    Mutant("ppo_pg_sign_flip", "rl/jssp/agent.py",
           "pg = -jnp.minimum(ratio * adv, ",
           "pg = jnp.minimum(ratio * adv, ",
           _RL_LOSS_TESTS, "PPO clipped surrogate without its minus sign (gradient ascent on the loss)", k="ppo"),
    Mutant("ppo_clip_around_zero", "rl/jssp/agent.py",
           "jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv",
           "jnp.clip(ratio, -clip_eps, clip_eps) * adv",
           _RL_LOSS_TESTS, "PPO clips the ratio to [-eps, eps] instead of [1-eps, 1+eps]", k="ppo"),
    Mutant("ppo_entropy_bonus_sign", "rl/jssp/agent.py",
           "- cfg.ent_coef * terms.entropy",
           "+ cfg.ent_coef * terms.entropy",
           _RL_LOSS_TESTS, "PPO entropy term penalises entropy instead of rewarding it", k="ppo"),

    # ---------------------------------------------------------------- rl/jssp/self_label.py, train.py, instances.py
    Mutant("self_label_picks_worst_sample", "rl/jssp/self_label.py",
           "best = jnp.argmin(score, axis=1)",
           "best = jnp.argmax(jnp.where(finished, makespans, -1), axis=1)",
           _SELF_LABEL_TESTS, "the label is the worst finished sample instead of the best", k="pick_labels or replay"),
    Mutant("self_label_ce_sign_flip", "rl/jssp/self_label.py",
           "nll = -jnp.take_along_axis(",
           "nll = jnp.take_along_axis(",
           _SELF_LABEL_TESTS, "the label cross-entropy without its minus sign (the policy moves away from its label)",
           k="cross_entropy"),
    Mutant("model_selection_keeps_the_worse", "rl/jssp/train.py",
           'if not report["val_gap_lb_pct"] < float(best["val_gap_lb_pct"]):',
           'if not report["val_gap_lb_pct"] > float(best["val_gap_lb_pct"]):',
           _SELF_LABEL_TESTS, "model selection takes a worse validation instead of a better one (the exported "
           "parameters are not the best validation's)", k="model_selection or exports"),
    Mutant("two_sets_routing_unsorted", "rl/jssp/instances.py",
           "noise = noise + (jnp.arange(num_machines) >= num_machines // 2)",
           "noise = noise + 0 * (jnp.arange(num_machines) >= num_machines // 2)",
           _SELF_LABEL_TESTS, "the two_sets family's jobs visit the machines in any order (a plain random routing)",
           k="family"),

    # ---------------------------------------------------------------- rl/malloc/muzero/training.py
    Mutant("muzero_policy_ce_sign_flip", "rl/malloc/muzero/training.py",
           "ce = -(policy_target * jax.nn.log_softmax(logits)).sum(-1)",
           "ce = (policy_target * jax.nn.log_softmax(logits)).sum(-1)",
           _RL_LOSS_TESTS, "MuZero policy cross-entropy without its minus sign (the policy moves away from the "
           "search's)", k="muzero"),
    Mutant("muzero_value_reward_terms_swapped", "rl/malloc/muzero/training.py",
           "loss = scale * (pol + cfg.value_coef * val + cfg.legal_coef * leg) + cfg.reward_coef * rew / "
           "max(k_steps, 1)",
           "loss = scale * (pol + cfg.value_coef * rew + cfg.legal_coef * leg) + cfg.reward_coef * val / "
           "max(k_steps, 1)",
           _RL_LOSS_TESTS, "MuZero loss swaps the value and reward sums (each normalised by the other's count "
           "and weighted by the other's coefficient)", k="muzero"),

    # ---------------------------------------------------------------- parallel/checkpoint.py
    Mutant("checkpoint_restore_check_removed", "parallel/checkpoint.py",
           "\n            if saved is not None:\n"
           "                _check_saved_matches(saved, abstract_state, self.step_path(step))",
           "",
           ("tests/test_checkpoint.py",), "restore no longer checks the saved tree (names, shapes, dtypes) "
           "against the target before Orbax casts it"),
    Mutant("checkpoint_saved_dtype_not_checked", "parallel/checkpoint.py",
           "and (np.dtype(saved[name].dtype) != np.dtype(leaf.dtype) "
           "or tuple(saved[name].shape) != tuple(leaf.shape))]",
           "and tuple(saved[name].shape) != tuple(leaf.shape)]",
           ("tests/test_checkpoint.py",), "the pre-restore check of the saved leaves ignores dtypes, so Orbax "
           "silently casts a saved int32 leaf to a float32 target"),
    Mutant("checkpoint_leaf_names_not_compared", "parallel/checkpoint.py",
           'problems += [f"{name}: saved but not expected" for name in saved if name not in want]',
           "",
           ("tests/test_checkpoint.py",), "the pre-restore check ignores saved leaves the target lacks"),
    Mutant("checkpoint_restores_oldest", "parallel/checkpoint.py",
           "for step in reversed(steps):",
           "for step in steps:",
           ("tests/test_checkpoint.py",), "restore takes the oldest readable step instead of the latest"),
    Mutant("checkpoint_abstract_casts_to_f32", "parallel/checkpoint.py",
           "jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)",
           "jax.ShapeDtypeStruct(x.shape, np.float32, sharding=s)",
           ("tests/test_checkpoint.py",), "abstract_like targets float32 for every leaf, so a restore silently "
           "casts integer and key leaves"),
)
