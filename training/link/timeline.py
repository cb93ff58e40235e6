"""Per-process timelines of a run: when each inner step computed and when each fragment's sync travelled.

**Format** (version 1). One JSON Lines file per process in the run's workdir, ``timeline.<process>.jsonl``
(:func:`path_for`). The first line of each writer is a header, every other line one interval::

    {"kind": "header", "version": 1, "process": 0, "pid": 4242, "clock": "monotonic", "monotonic": 812.5,
     "unix_time": 1764866400.1}
    {"kind": "compute", "process": 0, "step": 7, "start": 813.01, "end": 813.05}
    {"kind": "sync", "process": 0, "step": 8, "fragment": 1, "start": 813.09, "end": 813.41}

``start``/``end`` are ``time.monotonic()`` seconds (CLOCK_MONOTONIC: one clock for every process of the
machine, so the processes' files share a time axis). ``kind``: ``compute`` (an inner step, dispatch to its
result ready; for data-parallel the step includes its gradient all-reduce), ``sync`` (fragment
``fragment``'s outer-gradient exchange started at inner step ``step``, dispatch to the new global
fragment ready), ``merge``, ``eval``, ``save``; others are read and plotted, not used. A resumed run appends
(a new header first); a torn last line (a killed process) is skipped with a warning.

**Compute utilisation** (:func:`utilisation`), per process, over the window from the first counted inner
step's start to the end of the last counted interval (the first ``skip_steps`` steps, compilation, left
out): compute time (the union of compute intervals) / (window - time spent only in ``eval``/``save``).
The overlap is the time during which a sync was in flight while a step computed; ``overlap_fraction`` =
overlap / sync time (1: every sync hidden behind compute, 0: the workers waited for each).

**The trainer's side** (a ``timeline`` setting of train_diloco; every process writes its own file):
``w = TimelineWriter.for_run(workdir, jax.process_index())``; per inner step t, ``start = w.now()``, the
inner step, ``jax.block_until_ready`` of its losses, ``w.record("compute", start, w.now(), step=t)``; per
fragment p synced at t, ``start = w.now()`` just before the sync is dispatched and
``w.record("sync", start, w.now(), step=t, fragment=p)`` once its new global fragment is ready (from the
thread that waits for it when the sync overlaps the next steps); ``w.span("eval", step=t)`` and
``w.span("save", step=t)`` around evaluations and saves; ``w.close()`` at the end.
:mod:`training.benchmarks.diloco_link` passes ``--timeline`` to every run once the setting exists.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import statistics
import threading
import time
from typing import Iterable, Iterator, NamedTuple, Sequence

from absl import logging

VERSION = 1
COMPUTE, SYNC = "compute", "sync"
EXCLUDED = ("eval", "save")
PATTERN = "timeline.*.jsonl"


def path_for(workdir: str | os.PathLike, process: int) -> pathlib.Path:
    return pathlib.Path(workdir) / f"timeline.{process}.jsonl"


class Interval(NamedTuple):
    process: int
    kind: str
    start: float
    end: float
    step: int | None = None
    fragment: int | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


# ----------------------------------------------------------------------------- writing
class TimelineWriter:
    """Appends one process's intervals to its timeline file (thread-safe: a sync's end may be recorded by
    the thread that waits for it). Times are ``time.monotonic()`` seconds (:meth:`now`)."""

    now = staticmethod(time.monotonic)

    def __init__(self, path: str | os.PathLike, process: int):
        self.path, self.process = pathlib.Path(path), int(process)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", buffering=1)
        self._write({"kind": "header", "version": VERSION, "process": self.process, "pid": os.getpid(),
                     "clock": "monotonic", "monotonic": self.now(), "unix_time": time.time()})

    @classmethod
    def for_run(cls, workdir: str | os.PathLike, process: int) -> "TimelineWriter":
        return cls(path_for(workdir, process), process)

    def _write(self, obj: dict) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(json.dumps(obj) + "\n")

    def record(self, kind: str, start: float, end: float, *, step: int | None = None,
               fragment: int | None = None, **extra) -> None:
        """One interval ``[start, end]`` (monotonic seconds) of ``kind`` at inner step ``step``."""
        row = {"kind": kind, "process": self.process, "start": float(start), "end": float(end)}
        if step is not None:
            row["step"] = int(step)
        if fragment is not None:
            row["fragment"] = int(fragment)
        self._write({**row, **extra})

    @contextlib.contextmanager
    def span(self, kind: str, **fields) -> Iterator[None]:
        """Records the time spent inside the ``with`` block (the caller blocks on its results inside)."""
        start = self.now()
        try:
            yield
        finally:
            self.record(kind, start, self.now(), **fields)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# ----------------------------------------------------------------------------- reading
def timeline_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """The timeline files of a run directory (``timeline.*.jsonl``), or the given file(s)."""
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        return sorted(path.glob(PATTERN)) if path.is_dir() else [path]
    return [pathlib.Path(p) for p in source]


def _number(row: dict, key: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key}={value!r} must be a finite number")
    return float(value)


def _optional_int(row: dict, key: str, where: str) -> int | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key}={value!r} must be an integer")
    return value


def parse_lines(lines: Iterable[str], where: str = "timeline") -> list[Interval]:
    """The intervals of timeline lines (headers skipped). ValueError naming ``where`` and the line for a
    malformed one, except a torn last line, which is skipped with a warning."""
    lines = list(lines)
    out: list[Interval] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                logging.warning("%s: ignoring a torn last line %r", at, line[:80])
                continue
            raise ValueError(f"{at}: not JSON: {line[:80]!r}") from None
        if not isinstance(row, dict) or not isinstance(row.get("kind"), str):
            raise ValueError(f"{at}: expected an object with a 'kind', got {line[:80]!r}")
        if row["kind"] == "header":
            if row.get("version", VERSION) != VERSION:
                raise ValueError(f"{at}: timeline version {row.get('version')!r}; this reader knows {VERSION}")
            continue
        process = _optional_int(row, "process", at)
        if process is None:
            raise ValueError(f"{at}: missing 'process'")
        start, end = _number(row, "start", at), _number(row, "end", at)
        if end < start:
            raise ValueError(f"{at}: end={end} is before start={start}")
        out.append(Interval(process, row["kind"], start, end, _optional_int(row, "step", at),
                            _optional_int(row, "fragment", at)))
    return out


def read_timeline(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Interval]:
    """Every interval of a run directory's timeline files (or of the given files), sorted by start."""
    out: list[Interval] = []
    for path in timeline_files(source):
        out += parse_lines(path.read_text().splitlines(), str(path))
    return sorted(out, key=lambda iv: (iv.start, iv.process))


# ----------------------------------------------------------------------------- interval arithmetic
def union(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint ``(start, end)`` covering the same time as ``spans``."""
    merged: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in spans if e > s):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def total(spans: Iterable[tuple[float, float]]) -> float:
    return sum(e - s for s, e in union(spans))


def intersect(a: Iterable[tuple[float, float]], b: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The time covered by both ``a`` and ``b`` (as disjoint spans)."""
    ua, ub = union(a), union(b)
    out, i, j = [], 0, 0
    while i < len(ua) and j < len(ub):
        s, e = max(ua[i][0], ub[j][0]), min(ua[i][1], ub[j][1])
        if e > s:
            out.append((s, e))
        if ua[i][1] < ub[j][1]:
            i += 1
        else:
            j += 1
    return out


# ----------------------------------------------------------------------------- utilisation
@dataclasses.dataclass(frozen=True)
class Utilisation:
    """One process's figures over its window (seconds)."""
    process: int
    steps: int           # compute intervals counted
    window_s: float      # first counted step's start .. last counted interval's end
    excluded_s: float    # time only in eval/save (taken out of the wall time)
    compute_s: float     # union of compute intervals
    sync_s: float        # union of sync intervals
    overlap_s: float     # sync in flight while computing

    @property
    def wall_s(self) -> float:
        return self.window_s - self.excluded_s

    @property
    def utilisation(self) -> float:
        return self.compute_s / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def overlap_fraction(self) -> float:
        return self.overlap_s / self.sync_s if self.sync_s > 0 else math.nan

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "wall_s": self.wall_s, "utilisation": self.utilisation,
                "overlap_fraction": self.overlap_fraction}


def utilisation(intervals: Sequence[Interval], skip_steps: int = 1,
                exclude: Sequence[str] = EXCLUDED) -> dict[int, Utilisation]:
    """Compute utilisation and sync/compute overlap of each process (see the module docstring); steps
    ``<= skip_steps`` (warm-up, compilation) are left out. ValueError if a process has no counted step."""
    out = {}
    for process in sorted({iv.process for iv in intervals}):
        mine = [iv for iv in intervals if iv.process == process]
        counted = [iv for iv in mine if iv.kind in (COMPUTE, SYNC) and (iv.step is None or iv.step > skip_steps)]
        steps = [iv for iv in counted if iv.kind == COMPUTE]
        if not steps:
            raise ValueError(f"process {process}: no compute interval after step {skip_steps}")
        lo, hi = min(iv.start for iv in steps), max(iv.end for iv in counted)
        clip = lambda kinds: union((max(iv.start, lo), min(iv.end, hi)) for iv in mine if iv.kind in kinds)  # noqa: E731
        compute, sync, excluded = clip((COMPUTE,)), clip((SYNC,)), clip(tuple(exclude))
        out[process] = Utilisation(
            process=process, steps=len(steps), window_s=hi - lo,
            excluded_s=total(excluded) - total(intersect(excluded, compute)), compute_s=total(compute),
            sync_s=total(sync), overlap_s=total(intersect(sync, compute)))
    return out


def summarise(per_process: dict[int, Utilisation]) -> dict:
    """The run's figures: utilisation (mean and min over processes), overlap fraction, per-process rows."""
    if not per_process:
        return {}
    utils = [u.utilisation for u in per_process.values()]
    overlaps = [u.overlap_fraction for u in per_process.values() if not math.isnan(u.overlap_fraction)]
    return {"utilisation": statistics.fmean(utils), "utilisation_min": min(utils),
            "overlap_fraction": statistics.fmean(overlaps) if overlaps else None,
            "compute_s": statistics.fmean(u.compute_s for u in per_process.values()),
            "wall_s": statistics.fmean(u.wall_s for u in per_process.values()),
            "sync_s": statistics.fmean(u.sync_s for u in per_process.values()),
            "processes": [u.as_dict() for u in per_process.values()]}


def step_seconds(intervals: Sequence[Interval], skip_steps: int = 1) -> float:
    """Median length of a compute interval after the warm-up steps (the step time to simulate with)."""
    times = [iv.seconds for iv in intervals if iv.kind == COMPUTE and (iv.step is None or iv.step > skip_steps)]
    if not times:
        raise ValueError(f"no compute interval after step {skip_steps}")
    return statistics.median(times)


# ----------------------------------------------------------------------------- plot
COLOURS = {COMPUTE: "tab:blue", SYNC: "tab:orange", "merge": "tab:green", "eval": "tab:gray", "save": "tab:brown"}


def plot_timeline(intervals: Sequence[Interval], path: str | os.PathLike, title: str = "",
                  since: float | None = None) -> None:
    """One row per process: compute bars in the upper half, sync bars (labelled with their fragment) in the
    lower half, other kinds across the row; x = seconds since ``since`` (default: the first start)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not intervals:
        raise ValueError("no intervals to plot")
    t0 = min(iv.start for iv in intervals) if since is None else since
    processes = sorted({iv.process for iv in intervals})
    order = list(COLOURS)
    kinds = sorted({iv.kind for iv in intervals}, key=lambda k: (order.index(k) if k in order else len(order), k))
    labelled: set[str] = set()
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.8 * len(processes)))
    for row, process in enumerate(processes):
        for kind in kinds:
            spans = [(iv.start - t0, iv.seconds) for iv in intervals if iv.process == process and iv.kind == kind]
            if not spans:
                continue
            y, h = {COMPUTE: (row + 0.5, 0.4), SYNC: (row + 0.08, 0.4)}.get(kind, (row + 0.02, 0.96))
            ax.broken_barh(spans, (y, h), facecolors=COLOURS.get(kind, "tab:purple"),
                           alpha=1.0 if kind in (COMPUTE, SYNC) else 0.35, label=None if kind in labelled else kind)
            labelled.add(kind)
        for iv in intervals:
            if iv.process == process and iv.kind == SYNC and iv.fragment is not None:
                ax.text(iv.start - t0, row + 0.28, str(iv.fragment), fontsize=6, va="center")
    ax.set_yticks([r + 0.5 for r in range(len(processes))], [f"process {p}" for p in processes])
    ax.set_ylim(0, len(processes))
    ax.set_xlabel("seconds")
    ax.set_title(title or "timeline: compute (upper) and fragment syncs (lower)")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper right", ncols=len(labels))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
