"""The mallocGame (DeepMind 2023, "Optimizing Memory Mapping Using Deep Reinforcement Learning") and mallocMuZero.

Modules (import the one you need; this file imports nothing, so ``rl.malloc.instance`` pulls in neither mctx
nor OR-Tools):
- ``instance``: buffers + capacity, validating JSON I/O, random generator;
- ``extract``: instances from XLA's scheduled HLO with a roofline benefit model, builders for the toolkit's programs;
- ``game``: the pure-JAX, vmap-able game with masked candidate-offset moves, ready for mctx;
- ``baselines``: XLA-style heuristic, first-fit decreasing, random;
- ``cpsat``: exact OR-Tools CP-SAT model (optionally restricted to the game's moves);
- ``validate``: independent NumPy checker and normalised benefit;
- ``demos``: CP-SAT expert episodes as demonstrations for mallocMuZero;
- ``muzero``: mallocMuZero, a package (search on mctx, replay, training, inference and the shipped network);
- ``train``: the training experiment (self-play + demonstrations, checkpointed, export);
- ``evaluate``: every solver on an instance set, the table and the tour's step;
- ``bench``: game and search throughput; ``instance_sets``: the shipped train/test instance sets;
- ``pygame_ref``: a plain-Python reference of the game, the oracle the JAX game is tested against and the
  baseline of ``scripts/bench_malloc.py``.
"""
