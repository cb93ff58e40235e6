"""The mallocGame (DeepMind 2023, "Optimizing Memory Mapping Using Deep Reinforcement Learning").

Modules: ``instance`` (buffers + capacity, validating JSON I/O, random generator), ``extract`` (instances
from XLA's scheduled HLO with a roofline benefit model, builders for the toolkit's programs), ``game``
(the pure-JAX, vmap-able game with masked candidate-offset moves, ready for mctx), ``validate``
(independent NumPy checker), ``baselines`` (XLA-style heuristic, first-fit decreasing, random) and
``cpsat`` (exact OR-Tools CP-SAT model).
"""
