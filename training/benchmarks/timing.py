"""Timing shared by the benchmarks: on a shared, noisy machine every variant runs once per round (so drift
hits all alike), warm-up rounds (compilation) are excluded, and figures are medians over rounds."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Hashable

import jax


def interleaved(variants: dict[Hashable, Callable[[int], Any]], repeats: int,
                warmup: int = 1) -> dict[Hashable, list]:
    """``{variant: [result of each kept round]}``: ``warmup + repeats`` rounds, each calling every
    ``variant(round_index)`` once in order; the first ``warmup`` rounds' results are discarded."""
    results: dict = {v: [] for v in variants}
    for rep in range(warmup + repeats):
        for v, fn in variants.items():
            result = fn(rep)
            if rep >= warmup:
                results[v].append(result)
    return results


def timed_call(fn: Callable, *args) -> float:
    """Seconds of ``fn(*args)`` until its outputs are ready (``jax.block_until_ready``)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def compile_variants(variants: dict) -> tuple[dict, dict]:
    """Each jitted variant ``{name: (fn, args)}`` compiled ahead for its arguments: ``(compiled variants,
    {name: first line of the error}`` for those that failed to lower or compile, so one kernel that does not
    build on a backend costs its own figure, not the whole benchmark)."""
    ok, errors = {}, {}
    for name, (fn, args) in variants.items():
        try:
            ok[name] = (fn.lower(*args).compile(), args)
        except Exception as e:  # noqa: BLE001 (any lowering/compile error is reported, not raised)
            errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"
    return ok, errors


def time_variants(variants: dict, repeats: int) -> tuple[dict, dict]:
    """Medians (and all times) of each variant's call ``fn(*args)`` (``variants = {name: (fn, args)}``);
    compilation and one warm-up call excluded, the variants interleaved within each repeat."""
    times = interleaved({v: (lambda rep, fn=fn, args=args: timed_call(fn, *args))
                         for v, (fn, args) in variants.items()}, repeats)
    return {v: statistics.median(ts) for v, ts in times.items()}, times
