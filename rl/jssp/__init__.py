"""CP-based reinforcement learning for job-shop scheduling (Tassel, Gebser & Schekotihin, ICAPS'23).

Modules: ``instances`` (standard-format reader, Taillard loader, random generator), ``env`` (pure-JAX
event-driven environment with CP-style earliest-start propagation), ``validate`` (independent NumPy
schedule checker), ``rules`` (SPT, MWKR, MOPNR, FDD/MWKR), ``cpsat`` (OR-Tools CP-SAT model) and
``agent`` (PPO training, greedy and sampling inference for ``models.jssp_policy``) and ``self_label``
(self-labelling training, Corsini et al. ICML 2024).

Public API (import the module; nothing is loaded here, so ``import rl.jssp.instances`` stays light):

- ``instances``: Instance, InstanceFormatError, parse_text, read_instance, read_directory, format_instance,
  load_taillard, load_bounds, read_bounds, random_instance, random_batch_jax, Distribution, DISTRIBUTIONS
  (the generated families), parse_distributions, generate_batch_jax, simple_lower_bound
- ``env``: Problem, State, make_problem, reset, step, observe, legal_mask, lower_bound, makespan, rollout,
  batch_reset / batch_step / batch_observe / batch_is_done / batch_makespan
- ``validate``: check_schedule, is_feasible, InfeasibleSchedule
- ``rules``: RULES, solve, solve_batch
- ``cpsat``: solve, SEARCHES (default, portfolio), check_search, CPResult, NoScheduleFound,
  schedule_to_actions, left_shift
- ``pyenv``: PyJobShopEnv, run_spt (the plain-Python reference environment)
- ``agent``: PPOConfig, make_model, make_optimizer, init_state, make_train_step, make_solver, best_of,
  cpsat_demonstrations, make_threshold_sweep, best_noop_threshold, select_noop_threshold,
  select_sampling_temperature, save_policy, load_policy, TRAINED_DIR (the shipped policy)
- ``self_label``: SelfLabelConfig, sample_schedules, pick_labels, label_cross_entropy, make_self_label_step
- ``train``: TrainJSSPConfig, train, refreshes_demos, step_plan, validation_set, keep_best (``scripts/train_jssp.py``)
- ``evaluate``: EvalConfig, run, load_instances, make_runner, policy_solver, anytime_agent_runner,
  hinted_cpsat_runner, evaluate, group_table, tour_step
  (``scripts/eval_jssp.py``); TuneConfig, tune (``scripts/tune_jssp_sampling.py``); MakeSetConfig, make_set
  (``scripts/make_jssp_instances.py``)
- ``bench``: BenchJSSPConfig, run (``scripts/bench_jssp.py``)
"""

__all__ = ["agent", "bench", "cpsat", "env", "evaluate", "instances", "pyenv", "rules", "self_label", "train", "validate"]
