"""Bounded waiting for multi-process runs: a lost peer or a stalled step becomes one line and exit 1.

A ``jax.distributed`` run whose peer dies (``kill -9``, a crashed host) otherwise waits in its next
collective until the coordination service misses the dead process's heartbeats, then aborts with a C++
check-failure trace; a collective that never completes (a deadlock) waits for ever, and SIGTERM cannot end
it because Python's signal handlers only run when the main thread returns to the interpreter.

:class:`Watchdog` runs beside the training loop in a daemon thread. Every ``beat_s`` it

* publishes this process's heartbeat (a counter) in the coordination service's key-value store and reads
  the others'. A peer whose counter has not changed for ``lost_after_s`` is lost; so is the coordinator
  when the store itself stops answering for that long (the service lives in process 0);
* compares the time since the loop last reported progress (:meth:`Watchdog.progress`) with
  ``stall_after_s`` (``first_stall_after_s`` before the first step, which includes compilation).

Either way it writes one line naming what was lost and where a rerun resumes, and ends the process with
``os._exit(1)``: the main thread may be blocked inside XLA, and ``jax.distributed``'s exit hook would wait
at a shutdown barrier for the dead peer. Checkpoints are written atomically (a temporary directory renamed
when complete), so a save cut short leaves the last good step intact and the rerun resumes from it.

The heartbeat goes through the key-value store, not a device collective, so it never interleaves with the
training step's collectives.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Callable, Protocol

HEARTBEAT_PREFIX = "jaxsys/heartbeat/"
DONE = "done"   # the heartbeat value of a process whose loop ended normally: never lost


class KeyValueStore(Protocol):
    def set(self, key: str, value: str) -> None: ...
    def get(self, key: str) -> str | None: ...


class DistributedStore:
    """The ``jax.distributed`` coordination service's key-value store (:class:`KeyValueStore`)."""

    def __init__(self, client=None):
        if client is None:
            from jax._src import distributed
            client = distributed.global_state.client
        if client is None:
            raise ValueError("the watchdog needs jax.distributed to be initialised (multihost=True)")
        self._client = client

    def set(self, key: str, value: str) -> None:
        self._client.key_value_set(key, value, allow_overwrite=True)

    def get(self, key: str) -> str | None:
        try:
            return self._client.key_value_try_get(key)
        except Exception as e:  # noqa: BLE001 - NOT_FOUND is a peer that has not beaten yet
            if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
                return None
            raise


def exit_with_line(message: str) -> None:
    """The default failure action: ``error: MESSAGE`` on stderr, then exit 1 at once (no exit hooks)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(1)


@dataclasses.dataclass
class PeerTracker:
    """When each peer's heartbeat value last changed, on this process's monotonic clock."""
    started: float
    values: dict[int, str | None] = dataclasses.field(default_factory=dict)
    changed: dict[int, float] = dataclasses.field(default_factory=dict)

    def observe(self, peer: int, value: str | None, now: float) -> None:
        if peer not in self.values or value != self.values[peer]:
            self.values[peer] = value
            self.changed[peer] = now if value is not None else self.started

    def lost(self, now: float, after_s: float) -> list[int]:
        """Peers whose heartbeat has not changed for ``after_s`` seconds (never seen: since the start),
        except those that said they are :data:`DONE`."""
        return sorted(p for p, t in self.changed.items() if now - t > after_s and self.values[p] != DONE)


@dataclasses.dataclass(frozen=True)
class WatchdogConfig:
    """beat_s: seconds between heartbeats. lost_after_s: a peer silent this long is lost.
    stall_after_s: no step finished for this long is a stall (0: never). first_stall_after_s: the same
    before the first step (compilation included)."""
    beat_s: float = 1.0
    lost_after_s: float = 20.0
    stall_after_s: float = 600.0
    first_stall_after_s: float = 1800.0


class Watchdog:
    """See the module doc. ``resume_hint()`` says where a rerun resumes (appended to the line);
    ``on_failure(message)`` ends the process (default :func:`exit_with_line`)."""

    def __init__(self, store: KeyValueStore, process_index: int, process_count: int,
                 cfg: WatchdogConfig = WatchdogConfig(), *, resume_hint: Callable[[], str] = lambda: "",
                 on_failure: Callable[[str], None] = exit_with_line, clock: Callable[[], float] = time.monotonic):
        self.store, self.index, self.count, self.cfg = store, process_index, process_count, cfg
        self.resume_hint, self.on_failure, self.clock = resume_hint, on_failure, clock
        now = clock()
        self.peers = PeerTracker(started=now)
        self._beats = 0
        self._step: int | None = None
        self._progress_at = now
        self._store_ok_at = now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def progress(self, step: int) -> None:
        """The loop finished ``step`` (called from the training loop)."""
        self._step, self._progress_at = step, self.clock()

    def check_once(self) -> str | None:
        """One heartbeat and one look at the peers and the loop: the failure message, or None."""
        now = self.clock()
        try:
            self._beats += 1
            self.store.set(f"{HEARTBEAT_PREFIX}{self.index}", str(self._beats))
            for peer in range(self.count):
                if peer != self.index:
                    self.peers.observe(peer, self.store.get(f"{HEARTBEAT_PREFIX}{peer}"), now)
            self._store_ok_at = now
        except Exception as e:  # noqa: BLE001 - the coordination service is unreachable
            if now - self._store_ok_at > self.cfg.lost_after_s:
                return self._message(f"lost the coordinator (process 0 of {self.count}): its key-value store has "
                                     f"not answered for {now - self._store_ok_at:.0f} s "
                                     f"({str(e).splitlines()[0][:120]})")
            return None
        lost = self.peers.lost(now, self.cfg.lost_after_s)
        if lost:
            names = ", ".join(str(p) for p in lost)
            return self._message(f"lost process {names} of {self.count}: no heartbeat for "
                                 f"{now - max(self.peers.changed[p] for p in lost):.0f} s")
        limit = self.cfg.stall_after_s if self._step is not None else self.cfg.first_stall_after_s
        if self.cfg.stall_after_s and now - self._progress_at > limit:
            return self._message(f"no training step finished for {now - self._progress_at:.0f} s "
                                 f"(limit {limit:.0f} s): a collective is stalled")
        return None

    def _message(self, what: str) -> str:
        where = f"after step {self._step}" if self._step is not None else "before the first step"
        hint = self.resume_hint()
        return (f"process {self.index} of {self.count}: {what}, {where}; exiting"
                + (f". {hint}" if hint else ""))

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.beat_s):
            message = self.check_once()
            if message is not None and not self._stop.is_set():
                self.on_failure(message)
                return

    def start(self) -> "Watchdog":
        self._thread = threading.Thread(target=self._run, name="jaxsys-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, done: bool = True) -> None:
        """Ends the thread; ``done``: tell the peers this process ended normally (so its silence is not a loss)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.beat_s + 5)
        if done:
            try:
                self.store.set(f"{HEARTBEAT_PREFIX}{self.index}", DONE)
            except Exception:  # noqa: BLE001 - the peers then see silence, as after a crash
                pass

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is not None and exc_type is not KeyboardInterrupt:
            self.await_verdict()
        self.stop(done=exc_type is None)
        return False

    def await_verdict(self) -> None:
        """After an error in the loop: keep watching for up to ``lost_after_s`` (plus two beats), so an error
        caused by a lost peer (a broken connection inside a collective) ends as that peer's one line."""
        deadline = self.clock() + self.cfg.lost_after_s + 2 * self.cfg.beat_s
        while self._thread is not None and self._thread.is_alive() and self.clock() < deadline:
            self._thread.join(timeout=self.cfg.beat_s)
