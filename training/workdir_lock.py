"""The workdir lock: at most one running training per workdir.

A second run on a live workdir would delete the first one's in-flight checkpoint, so :func:`acquire` takes
``workdir/.lock.N`` (N: the process index, one lock per process of a multihost run) with ``flock`` for the
life of the process and writes who holds it into the file (:func:`holder_text`: ``pid PID on HOST``).

The file's text is read back in two places, both here: by a refused run, to name the holder in its error,
and by :func:`is_held_by_this_process`, with which the command line recognises a workdir that a refused run
created and may take back (``scripts.common.remove_if_unused``).
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import IO

LOCK_PREFIX = ".lock."
_HOLDER = re.compile(r"pid (\d+) on ")

_HELD: dict[str, IO] = {}  # lock path -> open lock file, held until the process exits


def lock_path(workdir: pathlib.Path, process_index: int) -> pathlib.Path:
    """``workdir/.lock.N`` of process ``process_index``."""
    return pathlib.Path(workdir) / f"{LOCK_PREFIX}{process_index}"


def holder_text(pid: int | None = None, host: str | None = None) -> str:
    """What a lock file says about its holder: ``pid PID on HOST`` (default: this process on this host)."""
    return f"pid {os.getpid() if pid is None else pid} on {os.uname().nodename if host is None else host}"


def holder_pid(text: str) -> int | None:
    """The pid that :func:`holder_text` wrote into ``text`` (None if ``text`` is not such a line)."""
    m = _HOLDER.match(text)
    return int(m.group(1)) if m else None


def is_held_by_this_process(path: pathlib.Path) -> bool:
    """Whether ``path`` is a workdir lock file (``.lock.N``) written by this process."""
    path = pathlib.Path(path)
    if not path.name.startswith(LOCK_PREFIX):
        return False
    try:
        return holder_pid(path.read_text()) == os.getpid()
    except OSError:
        return False


def acquire(workdir: pathlib.Path, process_index: int = 0) -> None:
    """Takes ``workdir/.lock.N`` for the life of this process (again: nothing, e.g. a resumed run in a
    notebook or a test). ValueError naming the workdir and the holder when another process holds it."""
    import fcntl

    path = lock_path(workdir, process_index)
    if str(path) in _HELD:
        return
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"workdir={str(workdir)!r} is in use by a running training ({holder}); wait for it, "
                         "stop it, or use another workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(holder_text())
    handle.flush()
    _HELD[str(path)] = handle
