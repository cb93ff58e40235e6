"""Asynchronous, preemption-safe checkpointing of a whole training state with Orbax.

One small API over :class:`orbax.checkpoint.CheckpointManager`, used by every training script:

* ``Checkpointer.save(step, state, meta)`` saves a pytree of arrays (params, optimiser state, step,
  RNG key, ...) and a JSON item (config, data-iterator position, anything plain) as one step.
  A step becomes visible only after Orbax's atomic rename of its temporary directory, so a crash or
  ``kill -9`` mid-save never damages the last good step; leftover temporary directories are removed
  when a ``Checkpointer`` opens the directory and are never listed as steps.
* Three modes. ``sync``: the call returns when the step is durable. ``async``: Orbax's default, the
  call blocks for the device-to-host copy and serialisation runs in the background. ``lazy`` (default):
  the idea of DataStates-LLM (Maurya et al., HPDC'24, "lazy" asynchronous checkpointing) in JAX terms:
  JAX arrays are immutable, so the step's state need not be copied before training goes on. ``save``
  dispatches the device-to-host copies into pinned host memory (:func:`to_pinned_host`) and hands the
  whole Orbax save of those host arrays to a background thread; the caller blocks only for the hand-over. The one obligation it puts on the
  training loop: the saved arrays must not be *donated* by the very next step (use a non-donating
  variant of the step once, see :meth:`Checkpointer.take_donation_barrier`); later steps work on new
  buffers and may donate freely. Peak memory grows by at most one state copy while a save is in flight.
* Errors from a background save are raised in the training loop at the next ``save``, at ``wait`` or at
  ``close`` (never only logged), as :class:`CheckpointError` naming the step that failed (not the one
  being saved when the failure surfaced) and the last good step, which stays intact.
* ``restore(abstract_state)`` returns the latest step that restores cleanly; a damaged step (truncated
  or missing file) is reported with its path and skipped for the previous one. The abstract target's
  shardings decide the placement, so a state saved on 8 devices restores onto 4 or 1. A step whose saved
  leaves differ from the target in dtype or shape (Orbax would cast them silently) is refused with
  :class:`IncompatibleCheckpoint` naming the leaf.
* :class:`PreemptionGuard` turns SIGTERM into a flag the loop polls (with Orbax's
  ``reached_preemption`` for multi-host preemption notices) so the loop can save, wait and exit 0.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import threading
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

MODES = ("lazy", "async", "sync")
STATE_ITEM = "state"
META_ITEM = "meta"
TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
    """A save or restore that failed; the message names the step and the path."""


class IncompatibleCheckpoint(CheckpointError):
    """A step whose saved leaves differ in dtype, shape or names from what the run expects (not damage)."""


def _short_reason(error: BaseException, limit: int = 240) -> str:
    """One line saying why a write failed: the OS reason when there is one (disk full, permission), else
    the start of the library's message."""
    text = f"{type(error).__name__}: {error}"
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    os_reason = re.search(r"([A-Za-z][^:\[\]]*?) \[os_error_code='\d+'\]", text)  # TensorStore's wording
    if os_reason:
        return os_reason.group(1)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    state: Any
    meta: dict


def validate_options(keep: int, mode: str) -> None:
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep_checkpoints={keep!r} must be an integer >= 1")
    if mode not in MODES:
        raise ValueError(f"checkpoint_mode={mode!r}; allowed: {', '.join(MODES)}")


def tree_nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "shape")))


def remove_temporary_dirs(directory: pathlib.Path) -> list[pathlib.Path]:
    """Deletes Orbax temporary (never finalized) step directories left by a killed run."""
    removed = []
    if directory.is_dir():
        for entry in directory.iterdir():
            if TMP_MARKER in entry.name:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
    if removed:
        logging.warning("removed %d unfinished checkpoint directories: %s", len(removed),
                        ", ".join(p.name for p in removed))
    return removed


def check_disk_space(directory: pathlib.Path, state_bytes: int, keep: int) -> None:
    """ValueError before training when the disk cannot hold ``keep + 1`` copies of the state."""
    free = shutil.disk_usage(directory).free
    needed = state_bytes * (keep + 1)
    if free < needed:
        raise ValueError(
            f"checkpoint directory {str(directory)!r} has {free / 2**20:.1f} MiB free; keeping "
            f"keep_checkpoints={keep} checkpoints of {state_bytes / 2**20:.1f} MiB needs about "
            f"{needed / 2**20:.1f} MiB")


def _ensure_writable(directory: pathlib.Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"checkpoint directory {str(directory)!r} is not writable: {e}") from None


def multiprocess_options() -> dict:
    """Orbax options for a run of several processes: every barrier through the coordination service's
    key-value store, none through a device collective.

    By default Orbax synchronises the processes with ``multihost_utils.sync_global_devices``, a jitted psum
    over every device. Its async save issues that barrier from Orbax's background thread, where it can
    interleave with the training step's own collectives in a different order on each process: with gloo on
    CPU both processes then wait in different collectives for ever (seen: 5 of 6 two-process runs saving
    every 50 steps stopped after a save). Naming the active processes makes Orbax use the distributed
    client's barrier (with a timeout) instead; Orbax then leaves the directory's creation to the caller
    (:func:`_ensure_writable` makes it)."""
    if jax.process_count() < 2:
        return {}
    return {"create": False, "multiprocessing_options": ocp.options.MultiprocessingOptions(
        active_processes=set(range(jax.process_count())))}


class Checkpointer:
    """Saves and restores ``(state pytree, JSON meta)`` steps under ``directory``; see the module doc."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, mode: str = "lazy"):
        validate_options(keep, mode)
        self.directory = pathlib.Path(directory).expanduser().resolve()
        # On several processes Orbax's barriers go through the coordination service (multiprocess_options),
        # so the lazy background thread may save: no device collective leaves the main thread.
        self.mode = mode
        _ensure_writable(self.directory)
        if jax.process_index() == 0:
            remove_temporary_dirs(self.directory)
        options = ocp.CheckpointManagerOptions(**{
            "max_to_keep": keep, "create": True, "cleanup_tmp_directories": True,
            "enable_async_checkpointing": mode != "sync", **multiprocess_options()})
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            STATE_ITEM: ocp.StandardCheckpointHandler(), META_ITEM: ocp.JsonCheckpointHandler()})
        self._executor = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lazy-ckpt")
                          if mode == "lazy" else None)
        self._inflight: list[tuple[int, concurrent.futures.Future]] = []
        self._saved_steps: list[int] = []
        self._orbax_step: int | None = None  # the step last handed to Orbax (its write may still run)
        self._failed: CheckpointError | None = None
        self._donation_barrier = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ saving
    def save(self, step: int, state, meta: dict | None = None) -> float:
        """Saves ``state`` and ``meta`` as ``step``; returns the seconds the caller was blocked.

        Raises CheckpointError for this save or for an earlier background save that failed. The steps still
        computing ``state`` (asynchronous dispatch) finish before the clock starts where the save must read it
        (sync and async modes), so their time is not counted as the save's.
        """
        if self.mode != "lazy":  # (lazy only dispatches copies that queue behind those steps)
            jax.block_until_ready(state)
        start = time.perf_counter()
        if self._failed is not None:
            raise self._failed
        self._raise_finished_errors()
        meta = dict(meta or {})
        if self.mode == "lazy":
            # At most one hand-over in flight (plus Orbax's own background write): a loop saving
            # faster than the disk can write is slowed down rather than queueing states in memory.
            self._raise_finished_errors(wait=True)
            host_state = to_pinned_host(state)
            self._inflight.append((step, self._executor.submit(self._save_now, step, host_state, meta)))
            self._donation_barrier = True
        else:
            self._save_now(step, state, meta)
        self._saved_steps.append(step)
        return time.perf_counter() - start

    def _save_now(self, step: int, state, meta: dict) -> None:
        with self._lock:
            self._finish_orbax_write()  # an earlier step's (Orbax waits for it here anyway)
            try:
                self._orbax_step = step
                self._manager.save(step, args=ocp.args.Composite(
                    **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}),
                    force=True)
            except Exception as e:  # noqa: BLE001 - re-raised with the step and path
                raise self._failure(step, e) from e
            if self.mode == "sync":
                self._check_orbax_errors()

    def _finish_orbax_write(self) -> None:
        """Waits for Orbax's background write of the last handed-over step; CheckpointError naming that step
        if it failed (call with ``_lock`` held)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._failure(self._orbax_step, e) from e
        self._check_orbax_errors()

    def _check_orbax_errors(self) -> None:
        """Raises CheckpointError for the step whose background write failed (Orbax reports it only at
        its next call, which belongs to a later step)."""
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._failure(self._orbax_step, e) from e

    def _failure(self, step: int | None, error: BaseException) -> CheckpointError:
        if self._failed is None:
            good = [s for s in self._manager.all_steps() if s != step] if step is not None else []
            last_good = (f"the last good step {max(good)} is intact and a rerun resumes from it" if good
                         else "no earlier step was saved")
            self._failed = CheckpointError(
                f"saving checkpoint step {step} under {self.directory} failed ({_short_reason(error)}); "
                f"{last_good}")
        return self._failed

    def take_donation_barrier(self) -> bool:
        """True once after each lazy save: the next train step must not donate the saved state."""
        barrier, self._donation_barrier = self._donation_barrier, False
        return barrier

    def _raise_finished_errors(self, wait: bool = False) -> None:
        pending = []
        for step, future in self._inflight:
            if wait or future.done():
                future.result()  # raises CheckpointError from the background thread
            else:
                pending.append((step, future))
        self._inflight = pending

    def wait(self) -> None:
        """Blocks until every save is durable; raises CheckpointError for any that failed."""
        if self._failed is not None:
            raise self._failed
        self._raise_finished_errors(wait=True)
        with self._lock:
            self._finish_orbax_write()
        if self._saved_steps:
            self._manager.reload()
            last = self._saved_steps[-1]
            if last not in self._manager.all_steps():
                raise CheckpointError(f"checkpoint step {last} under {self.directory} was not finalized "
                                      "(see the Orbax error logged above)")

    def close(self) -> None:
        """Waits for every save (raising its errors) and releases Orbax's resources."""
        try:
            self.wait()
        finally:
            self._release()

    def abort(self) -> None:
        """After a failure elsewhere: lets the background writes end (their errors were or will be
        reported by the caller) and releases Orbax's resources, so the process exits quietly."""
        for _, future in self._inflight:
            concurrent.futures.wait([future])
        self._inflight = []
        try:
            with self._lock:
                self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - already reported as the failure being handled
            pass
        self._release()

    def _release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        try:
            self._manager.close()
        except Exception as e:  # noqa: BLE001 - a failed write is reported by wait(); closing must not mask it
            logging.warning("closing the checkpoint manager under %s: %s", self.directory, _short_reason(e))

    def reached_preemption(self, step: int) -> bool:
        """Orbax/JAX preemption notice (multi-host: every process agrees on the same step)."""
        try:
            return bool(self._manager.reached_preemption(step))
        except Exception:  # noqa: BLE001 - no preemption service outside jax.distributed
            return False

    # --------------------------------------------------------------- restoring
    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def restore_meta(self, step: int | None = None) -> dict | None:
        """The JSON item of ``step`` (default: the latest), or None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
        return dict(restored[META_ITEM])

    def latest_readable_meta(self) -> dict:
        """The JSON item of the newest step whose JSON item reads back ({} when none does)."""
        for step in reversed(self.all_steps()):
            try:
                return self.restore_meta(step)
            except Exception as e:  # noqa: BLE001 - damaged: restore() reports it in full
                logging.error("cannot read the metadata of %s: %s", self.step_path(step), e)
        return {}

    def restore(self, abstract_state) -> Restored | None:
        """Restores the latest step that restores cleanly onto ``abstract_state``'s shardings.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` (e.g.
        :func:`abstract_like`). Damaged steps are logged with their path and skipped. Returns None
        when no step exists; raises CheckpointError when steps exist but none restores.
        """
        steps = self.all_steps()
        failures = []
        for step in reversed(steps):
            saved = self._saved_leaves(step)
            if saved is not None:
                _check_saved_matches(saved, abstract_state, self.step_path(step))
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{
                    STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                    META_ITEM: ocp.args.JsonRestore()}))
                state = restored[STATE_ITEM]
            except Exception as e:  # noqa: BLE001 - a damaged step: report and fall back
                logging.error("checkpoint %s is damaged or incompatible, skipping it: %s: %s",
                              self.step_path(step), type(e).__name__, str(e)[:500])
                failures.append(f"{self.step_path(step)}: {type(e).__name__}: {str(e)[:200]}")
                continue
            if failures:
                logging.warning("restored step %d after skipping %d damaged step(s)", step, len(failures))
                self._set_aside([s for s in steps if s > step])
            return Restored(step=step, state=state, meta=dict(restored[META_ITEM]))
        if failures:
            raise CheckpointError("no checkpoint under {} could be restored:\n  {}".format(
                self.directory, "\n  ".join(failures)))
        return None

    def _saved_leaves(self, step: int) -> dict[str, Any] | None:
        """{leaf path: metadata (shape, dtype)} of ``step``'s saved state; None when unreadable (damage is
        then reported by the restore itself)."""
        try:
            tree = self._manager.item_metadata(step)[STATE_ITEM].tree
        except Exception:  # noqa: BLE001
            return None
        return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged ``steps`` to ``N.damaged-TIME`` (kept for inspection, no longer a step), so that
        the resumed run can save those step numbers again instead of failing on every rerun."""
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                path = self.step_path(step)
                if path.exists():
                    aside = path.with_name(f"{step}.damaged-{stamp}")
                    os.replace(path, aside)
                    logging.warning("moved the damaged checkpoint %s aside to %s", path, aside)
        self._manager.reload()

    def delete_all(self) -> None:
        """Removes every step (``overwrite``)."""
        for step in self.all_steps():
            self._manager.delete(step)
        remove_temporary_dirs(self.directory)


def to_pinned_host(tree):
    """``tree`` with every live jax.Array copied to pinned host memory under the same sharding: the copies
    are dispatched here (the calling thread) and run on the device's copy engine while training goes on,
    so the background writer only ever touches host memory. (On an H200 with jax 0.11.2, Orbax moving
    device arrays to the host from the writer thread while the main thread ran the next step crashed the
    process with a segmentation fault.)"""
    def move(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_deleted():
            return leaf
        if getattr(leaf.sharding, "memory_kind", None) == "pinned_host":
            return leaf
        return jax.device_put(leaf, leaf.sharding.with_memory_kind("pinned_host"))
    return jax.tree.map(move, tree)


class DonationSafeStep:
    """A train step ``fn(state, *args) -> (state, ...)`` jitted to donate its state, except for the
    one step after a lazy save, which runs a non-donating twin compiled ahead of time (so that its
    compilation never lands inside the timed loop) and leaves the saved buffers intact.

    ``example_args`` (arrays or ShapeDtypeStructs carrying shardings) fix the twin's signature.
    """

    def __init__(self, fn, checkpointer: Checkpointer, example_args: tuple, **jit_kwargs):
        self._checkpointer = checkpointer
        self._donating = jax.jit(fn, donate_argnums=0, **jit_kwargs)
        self._keeping = (jax.jit(fn, **jit_kwargs).lower(*example_args).compile()
                         if checkpointer.mode == "lazy" else None)

    def __call__(self, state, *args):
        if self._checkpointer.take_donation_barrier():
            return self._keeping(state, *args)
        return self._donating(state, *args)


def _path_name(path) -> str:
    """'opt_state/0/mu/w' for a key path, whether its nodes are attributes, dict keys or indices (Orbax's
    metadata stores every node as a dict key)."""
    return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _check_saved_matches(saved: dict[str, Any], abstract_state, path) -> None:
    """IncompatibleCheckpoint naming the first leaf whose saved dtype or shape differs from the target's
    (Orbax would cast a saved int32 step to a float32 target without a word), or a leaf only one side has."""
    want = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    problems = [f"{name}: saved {np.dtype(saved[name].dtype).name}{list(saved[name].shape)}, "
                f"expected {np.dtype(leaf.dtype).name}{list(leaf.shape)}"
                for name, leaf in want.items() if name in saved
                and (np.dtype(saved[name].dtype) != np.dtype(leaf.dtype) or tuple(saved[name].shape) != tuple(leaf.shape))]
    problems += [f"{name}: expected but not saved" for name in want if name not in saved]
    problems += [f"{name}: saved but not expected" for name in saved if name not in want]
    if problems:
        raise IncompatibleCheckpoint(
            f"checkpoint {path} does not match this run's state ({'; '.join(problems[:3])}"
            f"{f'; and {len(problems) - 3} more' if len(problems) > 3 else ''}): it was written by other code or "
            "settings; use another workdir, or overwrite to start afresh")


def read_latest_raw(directory) -> tuple[int, Any]:
    """(step, state as NumPy arrays) of the newest checkpoint under ``directory``, restored without a target
    (the saved tree as Orbax stored it): for inspecting a run and comparing two runs bit for bit."""
    ck = Checkpointer(directory, keep=2, mode="sync")
    try:
        step = ck.latest_step()
        # onto this process's first device: the saving run's mesh (other processes, other devices) may not exist
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                              ck._manager.item_metadata(step)["state"])
        tree = ck._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    finally:
        ck.close()
    return step, jax.tree.map(np.asarray, tree)


def abstract_like(state, shardings=None):
    """ShapeDtypeStructs of ``state`` carrying ``shardings`` (default: each leaf's own sharding)."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def config_differences(saved: dict, given: dict, ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """Fields whose values differ between a saved and a given config, except ``ignore``."""
    ignore = set(ignore)
    keys = sorted((set(saved) | set(given)) - ignore)
    missing = object()
    diffs = []
    for key in keys:
        a, b = saved.get(key, missing), given.get(key, missing)
        if a != b:
            diffs.append((key, None if a is missing else a, None if b is missing else b))
    return diffs


def check_resume_config(saved: dict, given: dict, directory, ignore: Iterable[str] = ()) -> None:
    """ValueError naming every differing field (as `` `name` ``, which the command line spells ``--name``)
    when a workdir's checkpoints came from another config."""
    diffs = config_differences(saved, given, ignore)
    if diffs:
        listed = "; ".join(f"`{k}`: checkpoint has {a!r}, flags give {b!r}" for k, a, b in diffs)
        raise ValueError(
            f"the checkpoints under {directory} were made with a different configuration ({listed}): "
            "use the same flags to resume, another `workdir`, or `overwrite` to start afresh")


class PreemptionGuard:
    """Context manager turning SIGTERM and SIGINT (Ctrl-C) into a flag (``requested``) that the training
    loop polls: the loop checkpoints and ends cleanly instead of losing the steps since the last save.

    Python runs signal handlers only when the main thread returns to the interpreter, so a step stuck inside
    XLA (a stalled collective) would never see the flag. With ``on_stalled`` given, a watcher thread learns of
    each signal through :func:`signal.set_wakeup_fd` (written by the C-level handler even then) and, if the
    Python handler has not run within ``stall_grace_s``, calls ``on_stalled(message)`` (which ends the
    process). A second signal while the first is being served ends the run at once the same way.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), *,
                 on_stalled: Callable[[str], None] | None = None, stall_grace_s: float = 60.0):
        self.signals = signals
        self.requested = False
        self.on_stalled, self.stall_grace_s = on_stalled, stall_grace_s
        self._previous: dict[int, Any] = {}
        self._served = threading.Event()
        self._pipe: tuple[int, int] | None = None
        self._previous_wakeup = -1
        self._watcher: threading.Thread | None = None

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested and self.on_stalled is not None:
            self.on_stalled(f"received signal {signum} a second time while finishing: stopping at once; the last "
                            "complete checkpoint is intact")
            return
        logging.warning("received signal %d: will checkpoint and exit", signum)
        self.requested = True
        self._served.set()

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            got = [b for b in data if b in self.signals]
            if got and not self._served.wait(self.stall_grace_s) and self._pipe is not None:
                self.on_stalled(f"received signal {got[0]} but the training loop did not answer within "
                                f"{self.stall_grace_s:.0f} s (a step or collective is stalled): stopping without a "
                                "final checkpoint; the last complete checkpoint is intact")
                return

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
            if self.on_stalled is not None:
                read_fd, write_fd = os.pipe()
                os.set_blocking(write_fd, False)
                self._pipe = (read_fd, write_fd)
                self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
                self._watcher = threading.Thread(target=self._watch, args=(read_fd,), name="jaxsys-signal-watch",
                                                 daemon=True)
                self._watcher.start()
        return self

    def __exit__(self, *exc):
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            read_fd, write_fd = self._pipe
            self._pipe = None
            self._served.set()          # a watcher waiting out its grace stops waiting
            os.close(write_fd)          # ... and its read returns end-of-file
            if self._watcher is not None:
                self._watcher.join(timeout=5)
            os.close(read_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def open_for_run(directory, config: dict, abstract_state, *, keep: int, mode: str, overwrite: bool,
                 resume_ignore: Iterable[str] = (),
                 read_saved_config=None) -> tuple[Checkpointer, Restored | None]:
    """The start of every training script: open ``directory``, then resume or start afresh.

    Refuses (ValueError naming the fields) to resume checkpoints made with another config unless
    ``overwrite``, which deletes them. Checks the disk can hold the checkpoints before training.
    ``read_saved_config(saved) -> dict`` brings a config recorded by an earlier release to the current
    names and defaults before the comparison. Returns the Checkpointer and the restored step (None when
    starting afresh).
    """
    checkpointer = Checkpointer(directory, keep=keep, mode=mode)
    restored = None
    if checkpointer.latest_step() is not None:
        if overwrite:
            logging.warning("overwrite=True: deleting checkpoints %s under %s",
                            checkpointer.all_steps(), checkpointer.directory)
            checkpointer.delete_all()
        else:
            saved_config = checkpointer.latest_readable_meta().get("config", {})
            if read_saved_config is not None:
                saved_config = read_saved_config(saved_config)
            check_resume_config(saved_config, config, checkpointer.directory, resume_ignore)
            restored = checkpointer.restore(abstract_state)
            logging.info("resuming from checkpoint step %d under %s", restored.step, checkpointer.directory)
    check_disk_space(checkpointer.directory, tree_nbytes(abstract_state), keep)
    return checkpointer, restored
