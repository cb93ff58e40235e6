"""M worker processes of one multi-process run: started together, waited for with a bound, ended together.

``jax.distributed`` alone turns the loss of a process into a long wait: its peers sit in their next
collective until the coordination service misses the dead process's heartbeats (about 60 s here), then
abort. :func:`run_workers` polls every process: as soon as one exits non-zero (or is killed, e.g. with -9)
the others are killed; a run that outlives ``timeout_s`` is killed whole. Each process runs in a session
of its own (its process group id is its pid), so killing it reaches whatever it started, and nothing else.
:func:`signals_as_exceptions` turns SIGTERM/SIGINT into an exception in the main thread, so the caller's
``finally`` (kill the workers, remove the namespace) runs on those too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import signal
import subprocess
import time
from typing import Iterator, Sequence

from training.link.netns import signals_held

KILL_WAIT_S = 10.0


class Terminated(BaseException):
    """The harness received SIGTERM or SIGINT (raised in the main thread by :func:`signals_as_exceptions`)."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Inside: SIGTERM and SIGINT raise :class:`Terminated` (so ``finally`` blocks run); the previous
    handlers come back on the way out."""
    def handler(signum, _frame):
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclasses.dataclass(frozen=True)
class WorkersResult:
    """How the run of M processes ended.

    status: ``ok`` (every process exited 0), ``failed`` (one exited non-zero or was killed; the others were
      then killed) or ``timeout`` (all killed at ``timeout_s``).
    returncodes: each process's exit status (negative: the signal that ended it; the harness's kills are -9).
    first_failure: index of the process that failed first (``failed``), else None.
    wall_s: from the first start to the last exit.
    """
    status: str
    returncodes: tuple[int, ...]
    first_failure: int | None
    wall_s: float

    @property
    def message(self) -> str:
        if self.status == "ok":
            return f"all {len(self.returncodes)} processes exited 0 after {self.wall_s:.1f} s"
        if self.status == "timeout":
            return f"still running after {self.wall_s:.0f} s: all {len(self.returncodes)} processes killed"
        i = self.first_failure
        return (f"process {i} ended with status {self.returncodes[i]} after {self.wall_s:.1f} s; the others were "
                f"killed (statuses {list(self.returncodes)})")


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL to ``proc``'s own process group (it was started as a session leader), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # unkillable (D state): leave it; reported by returncode None -> -9
        pass


def run_workers(commands: Sequence[Sequence[str]], envs: Sequence[dict], logs: Sequence[pathlib.Path], *,
                timeout_s: float, cwd: str | os.PathLike | None = None, poll_s: float = 0.2) -> WorkersResult:
    """Starts ``commands[i]`` with environment ``envs[i]`` (stdout and stderr to ``logs[i]``) and waits for
    all of them, at most ``timeout_s``; a process that fails ends the others at once. Whatever happens
    (a failure, the timeout, an exception such as :class:`Terminated` while waiting), no process is left
    running when this returns or raises."""
    if not len(commands) == len(envs) == len(logs) or not commands:
        raise ValueError(f"commands, envs and logs must be equally long and non-empty "
                         f"({len(commands)}, {len(envs)}, {len(logs)})")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s} must be > 0")
    procs: list[subprocess.Popen] = []
    files = []
    start = time.monotonic()
    status, first_failure = "timeout", None
    try:
        for cmd, env, log in zip(commands, envs, logs):
            f = open(log, "w")
            files.append(f)
            procs.append(subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        for _ in range(math.ceil(timeout_s / poll_s) + 1):  # bounded in count, and in time below
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                status, first_failure = "failed", failed[0]
                break
            if all(c == 0 for c in codes):
                status = "ok"
                break
            if time.monotonic() - start >= timeout_s:
                break
            time.sleep(poll_s)
    finally:
        with signals_held():  # every process is ended, even if a second signal comes
            for p in procs:
                _kill(p)
            for f in files:
                f.close()
    codes = tuple(-signal.SIGKILL if p.returncode is None else p.returncode for p in procs)
    return WorkersResult(status, codes, first_failure, time.monotonic() - start)


def tail(path: pathlib.Path, lines: int = 5, width: int = 300) -> str:
    """The last ``lines`` non-empty lines of a log (each cut to ``width``), for a one-line report."""
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip()[:width] for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])
