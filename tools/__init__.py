"""Checks of the project itself, run from the repository root; not part of the installed distribution
(pyproject's ``packages.find`` leaves ``tools`` out), and no installed package imports it.

- ``python -m tools.mutation_check``: plants the named bugs of :mod:`tools.mutants` one at a time in a private
  copy of the checkout and runs the tests each must trip (:mod:`tools.mutation`);
- ``bash tools/device_check_*.sh``, ``python3 -m tools.device_check_lm``, ``python3 -m tools.device_check_bucketed``:
  the checks that need a GPU, each one short script run through the session's device tool.
"""
