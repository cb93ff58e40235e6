"""A real (shaped) network link for multi-process runs, and what is measured on it.

- :mod:`training.link.netns` -- a network namespace made for one run, its loopback rate-limited with htb,
  its byte counters (``/proc/net/dev``), and its removal on every exit path;
- :mod:`training.link.workers` -- M worker processes started inside it, every wait bounded, a dead or hung
  worker ending the run (its peers killed) instead of waiting for the coordination service's timeout;
- :mod:`training.link.probe` -- a TCP transfer inside the namespace that checks the shaped rate for
  large and small messages;
- :mod:`training.link.timeline` -- the per-process timeline format (compute and sync intervals), its
  writer, reader, compute-utilisation computation and plot.

The comparison of DP / DiLoCo / Streaming DiLoCo over rates is :mod:`training.benchmarks.diloco_link`
(``scripts/bench_diloco_link.py``).
"""
