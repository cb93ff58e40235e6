"""Test helper: the TensorBoard event files of a run hold exactly the numbers of its metrics rows."""
import math
import pathlib

import numpy as np

from training import events


def expected_scalars(rows: list[dict], step_key: str = "step", skip=()) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value as float32)]}`` of every number in ``rows`` (bools and strings are not scalars)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key == step_key or key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out.setdefault(key, []).append((int(row[step_key]), float(np.float32(value))))
    return {k: sorted(v) for k, v in out.items()}


def assert_events_match_rows(directory: pathlib.Path, rows: list[dict], step_key: str = "step", skip=()) -> dict:
    """Every number of ``rows`` is a scalar at its step in ``directory``'s event files, once; nothing else."""
    got = events.read_scalars(directory)
    want = expected_scalars(rows, step_key, skip)
    assert want, "the rows hold no numbers"
    assert set(got) == set(want), (sorted(got), sorted(want))
    for tag, points in want.items():
        same = all(gs == ws and (gv == wv or (math.isnan(gv) and math.isnan(wv)))
                   for (gs, gv), (ws, wv) in zip(got[tag], points))
        assert len(got[tag]) == len(points) and same, (tag, got[tag], points)
    return got


def assert_events_match_metrics(workdir: pathlib.Path) -> dict:
    """The event files beside ``workdir/metrics.jsonl`` hold exactly its rows' numbers."""
    from training.run import MetricsWriter

    workdir = pathlib.Path(workdir)
    assert events.event_files(workdir), f"no TensorBoard event file in {workdir}"
    return assert_events_match_rows(workdir, MetricsWriter.read(workdir / "metrics.jsonl"))
