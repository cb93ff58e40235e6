"""TensorBoard event files beside ``metrics.jsonl``: the writer every training run shares, and a reader.

:class:`ScalarEventWriter` turns each logged row (``{"step": N, "loss": ..., ...}``) into one TensorBoard
event of scalar summaries (every number in the row, tagged by its column name) in
``events.out.tfevents.*`` files, written with tensorboardX's record writer and protocol buffers. Writes are
synchronous and flushed row by row, so a run that is killed loses nothing it logged, and there is no
background thread to stop: ``close()`` only releases the file. A resumed run appends a new event file;
the events the interrupted run logged after the step it resumes from are first dropped from the earlier
files (as :class:`training.run.MetricsWriter` drops its rows), so the curves of a resumed run are those
of an uninterrupted one, without duplicates. ``tensorboard --logdir runs/`` shows every run under
``runs/``.

:func:`read_scalars` reads the scalars back (a small TFRecord reader over tensorboardX's ``event_pb2``; no
TensorBoard needed).
"""
from __future__ import annotations

import itertools
import os
import pathlib
import struct
import time
from typing import Any, Iterator

from absl import logging

EVENT_FILES = "events.out.tfevents.*"
_COUNTER = itertools.count()  # event files opened by this process: unique names within one second


_WARNED: list[bool] = []


def _have_tensorboardx() -> bool:
    """Whether tensorboardX (a dependency of jaxsys) can be imported; without it (a copied tree on a machine
    that lacks it) a run goes on without event files, saying so once."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError as e:
        if not _WARNED:
            _WARNED.append(True)
            logging.warning("no TensorBoard event files: %s (pip install tensorboardX); metrics.jsonl has "
                            "every row", e)
        return False
    return True


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a (NumPy/JAX scalar) number, not a bool; else None."""
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _masked_crc(data: bytes) -> int:
    from tensorboardX.record_writer import masked_crc32c

    return masked_crc32c(data)


def _records(path: pathlib.Path) -> Iterator[bytes]:
    """The records of a TFRecord file, stopping at a torn or damaged tail (a run killed mid-write)."""
    data = pathlib.Path(path).read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        end = pos + 12 + length + 4
        if header_crc != _masked_crc(header) or end > len(data):
            return
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[end - 4:end])
        if body_crc != _masked_crc(body):
            return
        yield body
        pos = end


def _event(record: bytes):
    from tensorboardX.proto import event_pb2

    event = event_pb2.Event()
    event.ParseFromString(record)
    return event


def read_events(path: pathlib.Path) -> Iterator[Any]:
    """The ``Event`` protocol buffers of one event file, in order."""
    for record in _records(path):
        yield _event(record)


def event_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The event files directly in ``directory``, oldest first."""
    return sorted(pathlib.Path(directory).glob(EVENT_FILES), key=lambda p: (p.stat().st_mtime_ns, p.name))


def read_scalars(directory: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in the event files of ``directory``, by step."""
    out: dict[str, list[tuple[float, int, float]]] = {}
    for path in event_files(directory):
        for event in read_events(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, event.wall_time, value.simple_value))
    return {tag: [(step, v) for step, _, v in sorted(points)] for tag, points in out.items()}


def _drop_after(directory: pathlib.Path, resume_step: int | None) -> None:
    """Removes the earlier event files (``resume_step`` None: a fresh start) or the events after
    ``resume_step`` from them (rewritten through a temporary file and an atomic rename)."""
    from tensorboardX.record_writer import RecordWriter

    for path in event_files(directory):
        if resume_step is None:
            path.unlink()
            continue
        records = list(_records(path))
        kept = [r for r in records if (e := _event(r)).step <= resume_step or not e.HasField("summary")]
        if len(kept) == len(records) and path.stat().st_size == sum(len(r) + 16 for r in records):
            continue  # nothing after the step and no torn tail
        tmp = path.with_name(f".rewrite.{os.getpid()}.tmp")
        writer = RecordWriter(str(tmp))
        for record in kept:
            writer.write(record)
        writer.flush()
        writer.close()
        os.replace(tmp, path)


class ScalarEventWriter:
    """Writes rows of scalars as TensorBoard events in ``directory`` (see the module doc).

    ``resume_step``: the step a resumed run continues from (events after it are dropped from the earlier
    files); None: a fresh start (earlier event files are removed). ``enabled=False`` (a process other than
    0 of a multihost run) writes and removes nothing.
    """

    def __init__(self, directory: pathlib.Path, resume_step: int | None = None, enabled: bool = True):
        self.directory = pathlib.Path(directory)
        self.enabled = enabled and _have_tensorboardx()
        self._writer = None
        if self.enabled:
            _drop_after(self.directory, resume_step)

    def write(self, step: int, row: dict) -> None:
        """One event at ``step`` holding every number of ``row`` (other than ``step``) as a scalar; flushed."""
        values = [(k, _number(v)) for k, v in row.items() if k != "step"]
        values = [(k, v) for k, v in values if v is not None]
        if not self.enabled or not values:
            return
        from tensorboardX.proto import event_pb2, summary_pb2

        if self._writer is None:
            from tensorboardX.event_file_writer import EventsWriter

            self.directory.mkdir(parents=True, exist_ok=True)
            self._writer = EventsWriter(str(self.directory / "events"), f".{os.getpid()}.{next(_COUNTER)}")
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values])
        self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the current event file (a later ``write`` opens a new one)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as e:  # a full disk must not hide the run's own outcome
                logging.warning("closing the TensorBoard event file in %s failed: %s", self.directory, e)
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

