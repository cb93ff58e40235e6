"""Quieting what the checkpointer's libraries (Orbax, TensorStore, asyncio) print, so a run's log stays readable.

Orbax logs an INFO line for every rename of every save, and after a failed background write it logs the
failure from each of its threads with tracebacks, while TensorStore's pending callbacks print one traceback
each on Orbax's closed event loop. :class:`parallel.checkpoint.Checkpointer` already raises such a failure
once, naming the step and the last good one (:class:`~parallel.checkpoint.CheckpointError`), so these
repeats add nothing. :func:`quiet_checkpoint_logs` keeps Orbax's warnings (one short line each for its
errors) and drops the rest. No Orbax import here: filtering needs only the log records.
"""
from __future__ import annotations

import logging as std_logging
import sys

from absl import logging

ORBAX_PATH_MARKER = "/orbax/"  # a log record from Orbax's code has this in its source path
SHORT_ERROR_CHARS = 200


class DropCheckpointChatter(std_logging.Filter):
    """Keeps Orbax's warnings and errors (errors cut to one short line, no traceback) and drops its INFO
    lines, plus asyncio's "never retrieved" notes on Orbax's unawaited writes after a failed save."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.name == "asyncio" and "never retrieved" in record.getMessage():
            return False  # Orbax's unawaited writes after a failed save: the failure is raised once
        if ORBAX_PATH_MARKER not in record.pathname:
            return True
        if record.levelno >= std_logging.ERROR:
            # Orbax logs a failed background write from each of its threads, with tracebacks; the
            # Checkpointer raises it once, naming the step, so one short line each is enough here
            record.msg, record.args = " ".join(record.getMessage().split())[:SHORT_ERROR_CHARS], ()
            record.exc_info, record.exc_text = None, None
        return record.levelno >= std_logging.WARNING


def is_closed_loop_callback(unraisable) -> bool:
    """Whether an unraisable error is a TensorStore callback hitting Orbax's closed event loop (after a
    failed background write; the failure itself is raised once, with its step)."""
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


def dropping_closed_loop_callbacks(previous):
    """An ``sys.unraisablehook`` that drops :func:`is_closed_loop_callback` errors and passes the rest to
    ``previous``."""
    def drop_closed_loop_callbacks(unraisable):
        if not is_closed_loop_callback(unraisable):
            previous(unraisable)

    return drop_closed_loop_callbacks


def quiet_checkpoint_logs() -> None:
    """Installs :class:`DropCheckpointChatter` on absl's handler and, in front of the current unraisable hook,
    :func:`dropping_closed_loop_callbacks` (each once, however often this is called)."""
    if getattr(sys.unraisablehook, "__name__", "") != "drop_closed_loop_callbacks":
        sys.unraisablehook = dropping_closed_loop_callbacks(sys.unraisablehook)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, DropCheckpointChatter) for f in handler.filters):
        handler.addFilter(DropCheckpointChatter())
