"""CP-based reinforcement learning for job-shop scheduling (Tassel, Gebser & Schekotihin, ICAPS'23).

Modules: ``instances`` (standard-format reader, Taillard loader, random generator), ``env`` (pure-JAX
event-driven environment with CP-style earliest-start propagation), ``validate`` (independent NumPy
schedule checker), ``rules`` (SPT, MWKR, MOPNR, FDD/MWKR), ``cpsat`` (OR-Tools CP-SAT model) and
``agent`` (PPO training, greedy and sampling inference for ``models.jssp_policy``).

Public API (import the module; nothing is loaded here, so ``import rl.jssp.instances`` stays light):

- ``instances``: Instance, InstanceFormatError, parse_text, read_instance, read_directory, format_instance,
  load_taillard, load_bounds, random_instance, random_batch_jax
- ``env``: Problem, State, make_problem, reset, step, observe, legal_mask, lower_bound, makespan, rollout,
  batch_reset / batch_step / batch_observe / batch_is_done / batch_makespan
- ``validate``: check_schedule, is_feasible, InfeasibleSchedule
- ``rules``: RULES, solve, solve_batch
- ``cpsat``: solve, CPResult, schedule_to_actions, left_shift
- ``pyenv``: PyJobShopEnv, run_spt (the plain-Python reference environment)
- ``agent``: PPOConfig, make_model, make_optimizer, init_state, make_train_step, make_solver, best_of,
  cpsat_demonstrations, select_noop_threshold, select_sampling_temperature, save_policy, load_policy,
  TRAINED_DIR (the shipped policy)
- ``train``: TrainJSSPConfig, train, refreshes_demos, validation_set (``scripts/train_jssp.py``)
- ``evaluate``: EvalConfig, run, load_instances, make_runner, evaluate, group_table, tour_step
  (``scripts/eval_jssp.py``); TuneConfig, tune (``scripts/tune_jssp_sampling.py``)
- ``bench``: BenchJSSPConfig, run (``scripts/bench_jssp.py``)
"""

__all__ = ["agent", "bench", "cpsat", "env", "evaluate", "instances", "pyenv", "rules", "train", "validate"]
