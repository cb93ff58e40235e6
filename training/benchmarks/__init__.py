"""Benchmarks of the library, one module each: measuring code, a frozen config (its settings documented in
the docstring) and ``run(cfg) -> record``, ``format_table(record) -> str``.

- :mod:`training.benchmarks.checkpoint` -- Orbax saves by mode, and checkpointing inside the LM loop;
- :mod:`training.benchmarks.diloco` -- DiLoCo's inner and outer step vs data-parallel, Table 4 simulator;
- :mod:`training.benchmarks.moe` -- the MoE layer vs dense GEMMs and the one-hot baseline;
- :mod:`training.benchmarks.timing` -- interleaved repeats, warm-up excluded, medians (shared by all).

``scripts/bench_*.py`` are their command lines: flags -> config -> :func:`report`.
"""
from __future__ import annotations

import pathlib
from typing import Any

OUT_HELP = "Write the configuration, the machine and every figure as JSON to this file."


def parse_list(name: str, value: str, cast, allowed=None) -> list:
    """The comma-separated setting ``name=value`` as a list of ``cast`` (ints must be positive, entries in
    ``allowed`` if given); ValueError naming the setting otherwise."""
    try:
        items = [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a comma-separated list of {cast.__name__}") from None
    bad = [v for v in items if (allowed is not None and v not in allowed) or (cast is int and v < 1)]
    if not items or bad:
        raise ValueError(f"{name}={value!r}: bad entries {bad}; allowed: {allowed or 'positive integers'}")
    return items


def report(module, cfg, out: str = "") -> dict[str, Any]:
    """Runs benchmark ``module`` (``module.run(cfg)``), prints its table and, given ``out``, writes the
    record with the machine's description (``training.run.machine_info``) as JSON there."""
    from training import run as run_lib

    record = module.run(cfg)
    print(module.format_table(record))
    if out:
        run_lib.write_json_atomic(pathlib.Path(out), {**record, "machine": run_lib.machine_info()})
        print(f"\nwrote {out}")
    return record
