"""CP-based reinforcement learning for job-shop scheduling (Tassel, Gebser & Schekotihin, ICAPS'23).

Modules: ``instances`` (standard-format reader, Taillard loader, random generator), ``env`` (pure-JAX
event-driven environment with CP-style earliest-start propagation), ``validate`` (independent NumPy
schedule checker), ``rules`` (SPT, MWKR, MOPNR, FDD/MWKR), ``cpsat`` (OR-Tools CP-SAT model) and
``agent`` (PPO training, greedy and sampling inference for ``models.jssp_policy``).
"""
