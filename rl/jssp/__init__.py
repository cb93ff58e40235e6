"""CP-based reinforcement learning for job-shop scheduling (Tassel, Gebser & Schekotihin, ICAPS'23).

Modules: ``instances`` (standard-format reader, Taillard loader, random generator), ``env`` (pure-JAX
event-driven environment with CP-style earliest-start propagation), ``validate`` (independent NumPy
schedule checker), ``rules`` (SPT, MWKR, MOPNR, FDD/MWKR), ``cpsat`` (OR-Tools CP-SAT model); the agent
for ``models.jssp_policy`` by role: ``policy_io`` (the network and its files), ``ppo`` (PPO training with
CP-SAT demonstrations), ``self_label`` (self-labelling training, Corsini et al. ICML 2024), ``inference``
(greedy and sampling), ``tuning`` (the greedy No-Op threshold and the sampling temperature); ``train`` (the
training run), ``evaluate`` and ``instance_sets`` (test sets with CP-SAT bounds).

Public API (import the module; nothing is loaded here, so ``import rl.jssp.instances`` stays light):

- ``instances``: Instance, InstanceFormatError, parse_text, read_instance, read_directory, format_instance,
  load_taillard, load_bounds, read_bounds, random_instance, random_batch_jax, Distribution, DISTRIBUTIONS
  (the generated families), parse_distributions, parse_size, generate_batch_jax, simple_lower_bound
- ``env``: Problem, State, make_problem, reset, step, observe, legal_mask, lower_bound, makespan, rollout,
  batch_reset / batch_step / batch_observe / batch_is_done / batch_makespan
- ``validate``: check_schedule, is_feasible, InfeasibleSchedule
- ``rules``: RULES, solve, solve_batch
- ``cpsat``: solve, SEARCHES (default, portfolio), check_search, CPResult, NoScheduleFound,
  schedule_to_actions, left_shift
- ``pyenv``: PyJobShopEnv, run_spt (the plain-Python reference environment)
- ``policy_io``: make_model, init_params, save_policy, load_policy, TRAINED_DIR (the shipped policy)
- ``ppo``: PPOConfig, make_optimizer, lr_schedule, bc_weight, init_state, empty_demos, cpsat_demonstrations,
  ppo_loss_terms, make_loss_fn, replay_observations, normalise_rewards, make_train_step
- ``self_label``: SelfLabelConfig, sample_schedules, pick_labels, label_cross_entropy, make_self_label_step
- ``inference``: greedy_action, without_noop, never_waits, make_solver, best_of, make_batch_greedy
- ``tuning``: NOOP_THRESHOLDS, make_threshold_sweep, best_noop_threshold, select_noop_threshold,
  SAMPLING_TEMPERATURES, select_sampling_temperature; TuneSamplingConfig, tune_sampling
  (``scripts/tune_jssp_sampling.py``)
- ``train``: TrainJSSPConfig, train, parse_curriculum, curriculum_size, refreshes_demos, step_plan,
  validation_set, keep_best (``scripts/train_jssp.py``)
- ``evaluate``: EvalConfig, run, load_instances, make_runner, policy_solver, anytime_agent_runner,
  hinted_cpsat_runner, evaluate, group_table, tour_step (``scripts/eval_jssp.py``)
- ``instance_sets``: MakeSetConfig, make_set, bounds_row (``scripts/make_jssp_instances.py``)
- ``bench``: BenchJSSPConfig, run (``scripts/bench_jssp.py``)
"""

__all__ = ["bench", "cpsat", "env", "evaluate", "inference", "instance_sets", "instances", "policy_io", "ppo",
           "pyenv", "rules", "self_label", "train", "tuning", "validate"]
