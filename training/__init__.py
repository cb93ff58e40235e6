"""The run skeleton every trainer shares, and the language-model experiments built on it.

Above :mod:`parallel` and :mod:`models`, below :mod:`algoperf` and :mod:`rl` (whose training loops use the
skeleton). Submodules (import the one you need; none is imported here, so ``import training.config`` does
not pull in JAX):

* :mod:`training.config` -- one source per setting: nested frozen config dataclasses and their flat view
  (``group``, ``flat_fields``, ``from_flat``, ``to_flat``, ``help_texts``, ``renamed``, ``upgrade_flat``,
  ``rename_fields``, ``flag_message``: a library message's setting names in command-line form);
* :mod:`training.run` -- the skeleton from workdir to summary (``RunConfig``, ``TrainState``, ``begin``,
  ``open_run``, ``Run`` with ``loop`` and ``finish``, ``run_checkpointed_steps``, ``MetricsWriter``,
  ``Progress``, ``require_positive``, ``require_workdir``, ``require_output_file``, ``write_json_atomic``,
  ``write_csv_atomic``, ``command_line``, ``machine_info``, ``provenance``, ``plot_curves``);
* :mod:`training.workdir_lock` -- one running training per workdir (``acquire``, ``is_held_by_this_process``,
  ``holder_text``, ``holder_pid``, ``lock_path``);
* :mod:`training.events` -- TensorBoard event files beside ``metrics.jsonl`` (``ScalarEventWriter``,
  ``read_scalars``);
* :mod:`training.watchdog` -- multi-process runs: a lost peer or a stalled step becomes one line and exit 1
  (``Watchdog``, ``WatchdogConfig``, ``DistributedStore``, ``exit_with_line``);
* :mod:`training.link` -- a shaped network link for multi-process runs (``netns``: namespace and htb;
  ``workers``: bounded launcher; ``probe``; ``timeline``: per-process compute/sync intervals, utilisation);
* :mod:`training.lm` -- the byte-level decoder LM experiment, dense or MoE (``TrainLMConfig``, ``train``,
  ``make_optimizer``, ``make_train_step``, ``next_token_loss``, ``evaluate``, ``check_devices``);
* :mod:`training.diloco` -- the Streaming DiLoCo experiment (Douillard et al. 2023, 2025) and the comparison
  of finished runs (``TrainDiLoCoConfig``, ``train``, ``compare``, ``byte_budget``);
* :mod:`training.throughput` -- tokens per second and model FLOPs utilisation (Chowdhery et al. 2022)
  (``throughput``, ``flops_per_token``, ``active_params``, ``peak_flops``);
* :mod:`training.data` -- datasets the experiments read (``text``: byte-level corpora, Tiny Shakespeare
  embedded);
* :mod:`training.benchmarks` -- the measuring code of ``scripts/bench_*.py`` (checkpoint, DiLoCo, DiLoCo over
  a shaped link, multi-process reliability, MoE, the LM on a GPU against nanoGPT) and their shared timing.
"""
