"""The run skeleton every training experiment shares, from workdir to summary.

An experiment is ``train(cfg) -> summary``. Its steps are always the same, and live here once:

1. :func:`begin` -- ``jax.distributed`` (before any JAX computation), the workdir created, probed and
   locked (:mod:`training.workdir_lock`);
2. the experiment builds its state (its own code);
3. :func:`open_run` -- the Orbax checkpointer opened, the latest good checkpoint restored (or a refusal
   naming the settings that differ from the checkpoint's), ``config.json`` and ``metrics.jsonl`` (with its
   TensorBoard event files) opened;
4. :meth:`Run.loop` -- the checkpointed step loop: metrics rows, progress log, a save every
   ``checkpoint_every`` steps, SIGTERM/SIGINT and preemption notices ending it checkpointed;
5. :meth:`Run.finish` -- ``summary.json``, the PNG curves and the closing log line.

Layout of a workdir: ``config.json`` (the config, nested as the dataclasses are), ``metrics.jsonl`` (one
JSON object per logged step), TensorBoard event files ``events.out.tfevents.*`` (the same numbers as
scalars: ``tensorboard --logdir runs/``), ``summary.json``, ``checkpoints/`` and ``*.png``.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import re
import time
from typing import Any, Callable, Iterable

import flax.struct
import jax
import optax
from absl import logging

from training import config as config_lib
from training import workdir_lock


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The settings every training experiment shares.

    workdir: Output directory (config.json, metrics.jsonl, checkpoints/, plots).
    seed: Random seed; a run is reproducible from it.
    multihost: Call jax.distributed.initialize() first (one process per host); with no coordinator settings
      it finds the cluster itself (Cloud TPU, SLURM, Kubernetes, or the JAX_COORDINATOR_ADDRESS variable).
    coordinator_address: host:port of process 0's coordinator (multihost; empty: found as above).
    num_processes: Number of processes of a multihost run (0: found as above).
    process_id: This process's index in [0, num_processes) (multihost, with num_processes).
    checkpoint_every: Save a checkpoint every this many steps (0: only at the end).
    keep_checkpoints: How many most recent checkpoints to keep (>= 1).
    checkpoint_mode: lazy (the save goes to a background thread; the device-to-host copy overlaps the next
      step), async (plain Orbax async) or sync (blocking save).
    overwrite: Start afresh in a workdir whose checkpoints were made with another config.
    peer_timeout_s: Multihost: a process whose heartbeat is silent this many seconds is lost, and every other
      process exits with one line naming it (training/watchdog.py).
    stall_timeout_s: Multihost: exit with one line when no step finishes for this many seconds (a stalled
      collective; the first step, which compiles, gets 3x; 0: never).
    """
    workdir: str = ""
    seed: int = 0
    multihost: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    checkpoint_mode: str = "lazy"
    overwrite: bool = False
    peer_timeout_s: float = 20.0
    stall_timeout_s: float = 600.0

    def __post_init__(self):
        from parallel.checkpoint import validate_options

        for name, low in (("peer_timeout_s", 2.0), ("stall_timeout_s", 0.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
                raise ValueError(f"{name}={value!r} must be a number >= {low:g}")

        require_positive(self, "checkpoint_every", "num_processes", "process_id",
                         allow_zero=("checkpoint_every", "num_processes", "process_id"))
        validate_options(self.keep_checkpoints, self.checkpoint_mode)
        if (self.coordinator_address or self.num_processes) and not self.multihost:
            raise ValueError(f"coordinator_address={self.coordinator_address!r} / num_processes={self.num_processes} "
                             "need multihost=True")
        if self.num_processes and self.process_id >= self.num_processes:
            raise ValueError(f"process_id={self.process_id} must be < num_processes={self.num_processes}")


@flax.struct.dataclass
class TrainState:
    """The state of a gradient-trained model: step counter, parameters, optimiser state and RNG key."""
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


# Settings that may change between a run and its resumption without changing the trajectory.
RUN_RESUME_IGNORE = ("workdir", "overwrite", "multihost", "coordinator_address", "num_processes", "process_id",
                     "checkpoint_every", "keep_checkpoints", "checkpoint_mode", "peer_timeout_s", "stall_timeout_s")


def require_positive(config, *names: str, allow_zero: Iterable[str] = ()) -> None:
    """ValueError naming the field unless each of ``names`` is an int > 0 (>= 0 for ``allow_zero``)."""
    allow_zero = set(allow_zero)
    for name in names:
        value = getattr(config, name)
        low = 0 if name in allow_zero else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def require_workdir(workdir: str | None) -> pathlib.Path:
    """Creates ``workdir`` and checks that it is writable, before any work starts."""
    if not workdir:
        raise ValueError("workdir='' is required (the directory that receives config, metrics and checkpoints)")
    path = pathlib.Path(workdir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"workdir={workdir!r} is not writable: {e}") from None
    return path


def require_output_file(name: str, path: str) -> None:
    """ValueError naming setting ``name`` unless ``path`` (if given) can be written as a file: not a
    directory, and below a writable directory -- folders that do not exist yet are created when the file
    is written (:func:`write_json_atomic`), the same for every ``out`` setting. Checked with the settings,
    so a bad path fails before the work."""
    if not path:
        return
    target = pathlib.Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"{name}={path!r} is a directory; give a file path")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name}={path!r}: {str(parent)!r} is a file, not a directory; give a path under a directory")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{name}={path!r}: its directory {str(parent)!r} is not writable")


def command_line(module: str, config, skip: Iterable[str] = ("workdir", "overwrite")) -> str:
    """``python -m MODULE --setting=value ...`` for the settings of ``config`` that differ from their
    defaults, leaving out ``skip``: the provenance line of an exported artifact."""
    given, defaults = config_lib.to_flat(config), config_lib.to_flat(type(config)())
    return " ".join([f"python -m {module}"] + [
        f"--{k}={v}" for k, v in given.items() if k not in skip and v != defaults[k]])


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    """Writes ``obj`` as indented JSON through a temporary file and an atomic rename (missing folders made)."""
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_csv_atomic(path: pathlib.Path, rows: list[dict], columns: list[str]) -> None:
    """Writes ``rows`` as CSV with a header of ``columns`` through a temporary file and an atomic rename
    (missing folders made)."""
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def machine_info() -> dict:
    """What every benchmark JSON records about the machine it ran on."""
    import platform

    import jax

    return {"devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "jax": jax.__version__}


def provenance(command: str) -> dict:
    """What every results file records about how it was made: the command, the commit (with "(with local
    changes)" when the tree differs from it), the UTC date (YYYY-MM-DD, as every results file and page gives it;
    the full UTC time in ``time``) and the machine (with its load average)."""
    import datetime
    import subprocess

    repo = pathlib.Path(__file__).resolve().parent.parent

    def git(*args) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"command": command,
            "commit": (git("rev-parse", "--short", "HEAD") or "unknown") + (" (with local changes)" if dirty else ""),
            "date": now.date().isoformat(), "time": now.isoformat(timespec="seconds"),
            "machine": {**machine_info(), "load_average": [round(x, 2) for x in os.getloadavg()]}}


def host_device_count() -> int:
    """The CPU devices this process will have: ``--xla_force_host_platform_device_count`` in XLA_FLAGS, else 1."""
    found = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(found[-1]) if found else 1


def cpu_threads_for(devices: int) -> int:
    """PJRT_NPROC for a multi-process CPU run: twice the devices, at least the cores."""
    return max(os.cpu_count() or 1, 2 * devices)


def maybe_initialize_distributed(cfg: RunConfig) -> None:
    """``jax.distributed.initialize`` for a multihost run (explicit coordinator settings, or the cluster's own
    environment when they are empty); on CPU the cross-process collectives go through gloo."""
    if not cfg.multihost:
        return
    import jax

    kwargs = {}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes:
        kwargs.update(num_processes=cfg.num_processes, process_id=cfg.process_id)
    if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # XLA's CPU client sizes its thread pools by PJRT_NPROC, else the cores (2 here). Two processes of 4
        # CPU devices each stalled for good in the training step's gloo all-reduce near their first save
        # (6 of 6 trials: three devices' threads waiting on the fourth, whose execution waited on the
        # client's semaphore); with threads for every device they finished. Read when the client is made.
        os.environ.setdefault("PJRT_NPROC", str(cpu_threads_for(host_device_count())))
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())


class MetricsWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and the same numbers, as TensorBoard
    scalars, to event files beside it (:class:`training.events.ScalarEventWriter`; ``events=False``: none).

    On resume from ``resume_step``, rows (and events) logged after that step by the interrupted run are
    dropped first, so the file of a resumed run equals that of an uninterrupted one. :meth:`close` flushes
    and closes the event file; the run skeleton calls it on every way out of the loop.
    """

    def __init__(self, path: pathlib.Path, resume_step: int | None = None, enabled: bool = True,
                 events: bool = True):
        from training import events as events_lib

        self.path = pathlib.Path(path)
        self.enabled = enabled
        self.rows: list[dict] = []
        if self.path.exists():
            if resume_step is None:
                kept: list[dict] = []
            else:
                kept = [r for r in self.read(self.path) if r.get("step", 0) <= resume_step]
            self.rows = kept
            if enabled:
                tmp = self.path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
                os.replace(tmp, self.path)
        self.events = (events_lib.ScalarEventWriter(self.path.parent, resume_step, enabled=enabled) if events
                       else None)

    @staticmethod
    def read(path: pathlib.Path) -> list[dict]:
        rows = []
        for line in pathlib.Path(path).read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line from a killed run
                logging.warning("ignoring a malformed line in %s: %r", path, line[:80])
        return rows

    def write(self, row: dict) -> None:
        if self.events is not None:
            self.events.write(row.get("step", 0), row)
        row = {k: _plain(v) for k, v in row.items()}
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard event file (a later ``write`` opens a new one)."""
        if self.events is not None:
            self.events.close()


def _plain(value):
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Progress:
    """Logs the step, steps/s and ETA at a steady rate (every ``every_s`` seconds of wall time)."""

    def __init__(self, total_steps: int, start_step: int = 0, every_s: float = 10.0, name: str = "train",
                 cumulative: bool = False, unit: str = "step"):
        """``cumulative``: the rate (and ETA) over everything since the start, for steps of uneven length;
        ``unit``: what a step is called in the log line."""
        self.total, self.name, self.every_s, self.cumulative, self.unit = total_steps, name, every_s, cumulative, unit
        self._t0 = self._last_t = time.perf_counter()
        self._start = self._last_step = start_step

    def update(self, step: int, **extra) -> None:
        now = time.perf_counter()
        if now - self._last_t < self.every_s and step < self.total:
            return
        since_t, since_step = (self._t0, self._start) if self.cumulative else (self._last_t, self._last_step)
        rate = (step - since_step) / max(now - since_t, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        details = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        logging.info("%s %s %d/%d  %.2f %ss/s  eta %.0fs  %s", self.name, self.unit, step, self.total, rate, self.unit,
                     eta, details)
        self._last_t, self._last_step = now, step

    def steps_per_sec(self, step: int) -> float:
        return (step - self._start) / max(time.perf_counter() - self._t0, 1e-9)


@dataclasses.dataclass(frozen=True)
class LoopEnd:
    """How :func:`run_checkpointed_steps` ended."""
    step: int                      # the last step run (the start step when none ran)
    preempted: bool                # ended early by SIGTERM/SIGINT or the checkpointer's preemption notice
    wall_s: float                  # the loop, its final save and the checkpointer's close included
    checkpoint_blocking_s: float   # seconds the loop was blocked by saves


def run_checkpointed_steps(start_step: int, last_step: int, one_step, *, save, checkpointer,
                           checkpoint_every: int, total_steps: int, metrics: MetricsWriter,
                           progress: Progress, progress_keys: Iterable[str] | None = None,
                           rate_column: bool = True, watchdog=None) -> LoopEnd:
    """The step loop every training experiment shares.

    ``one_step(step) -> row`` runs steps ``start_step + 1 .. last_step``; a non-empty row is written to
    ``metrics`` (with ``steps_per_sec`` unless ``rate_column`` is off) and to the progress log (only the
    ``progress_keys`` columns when given). ``save(step) -> seconds blocked`` runs every ``checkpoint_every``
    steps (not at ``total_steps``) and then for the last step run unless it was just saved. SIGTERM/SIGINT
    (:class:`parallel.checkpoint.PreemptionGuard`) or the checkpointer's preemption notice end the loop
    early, checkpointed; the checkpointer is closed (its background writes finished) before returning,
    also when a step or a save raises (the error then reaches the caller unchanged). ``watchdog``
    (:class:`training.watchdog.Watchdog`, multi-process runs) watches the peers and the loop's progress
    from the first step to the checkpointer's close.
    """
    import contextlib

    from parallel import checkpoint as ckpt_lib

    keys = None if progress_keys is None else set(progress_keys)
    wall_start = time.perf_counter()
    preempted, last_saved, step, blocked = False, start_step, start_step, 0.0
    noted = watchdog.progress if watchdog is not None else (lambda step: None)
    from training.watchdog import exit_with_line

    with ckpt_lib.PreemptionGuard(on_stalled=exit_with_line) as guard, (watchdog or contextlib.nullcontext()):
        try:
            for step in range(start_step + 1, last_step + 1):
                row = one_step(step)
                noted(step)
                if row:
                    rate = {"steps_per_sec": progress.steps_per_sec(step)} if rate_column else {}
                    metrics.write({"step": step, **row, **rate})
                    progress.update(step, **{k: v for k, v in row.items() if keys is None or k in keys})
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    blocked += save(step)
                    last_saved = step
                    noted(step)
                if guard.requested or checkpointer.reached_preemption(step):
                    preempted = True
                    break
            if step != last_saved:
                blocked += save(step)
                noted(step)
        except BaseException:
            checkpointer.abort()  # background writes end before the error reaches the user
            raise
        finally:
            metrics.close()  # the TensorBoard event file, on every way out (SIGTERM's early end included)
        checkpointer.close()
    return LoopEnd(step, preempted, time.perf_counter() - wall_start, blocked)


def make_watchdog(cfg: RunConfig, checkpoint_dir: pathlib.Path):
    """The :class:`training.watchdog.Watchdog` of a multi-process run (None for one process)."""
    import jax

    from training import watchdog as watchdog_lib

    if not cfg.multihost or jax.process_count() < 2:
        return None
    stall = cfg.stall_timeout_s
    wd_cfg = watchdog_lib.WatchdogConfig(beat_s=min(1.0, cfg.peer_timeout_s / 4), lost_after_s=cfg.peer_timeout_s,
                                         stall_after_s=stall, first_stall_after_s=3 * stall)
    hint = (f"Rerun the same command on every process to resume from the last complete checkpoint under "
            f"{checkpoint_dir}")
    return watchdog_lib.Watchdog(watchdog_lib.DistributedStore(), jax.process_index(), jax.process_count(), wd_cfg,
                                 resume_hint=lambda: hint)


def plot_curves(path: pathlib.Path, rows: list[dict], keys: Iterable[str], title: str,
                ylabel: str = "loss") -> None:
    """A PNG of the named metric columns against ``step`` (rows lacking a key are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), label=key, marker="o" if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the skeleton
def begin(cfg: RunConfig, preflight: Callable[[Any], None] | None = None) -> pathlib.Path:
    """Step 1 of a run: ``jax.distributed`` when ``multihost`` (before any JAX computation), the checks
    of ``preflight(cfg)`` against the environment (devices, ...), then the workdir, created and checked
    writable (so a run the checks refuse leaves nothing on disk) and locked for this process."""
    maybe_initialize_distributed(cfg)
    if preflight is not None:
        preflight(cfg)
    workdir = require_workdir(cfg.workdir)
    workdir_lock.acquire(workdir, jax.process_index() if cfg.multihost else 0)
    return workdir


@dataclasses.dataclass
class Run:
    """An opened run (:func:`open_run`): its checkpointer, what was restored and its metrics file."""
    cfg: RunConfig
    workdir: pathlib.Path
    checkpointer: Any
    restored: Any                 # parallel.checkpoint.Restored, or None when starting afresh
    metrics: MetricsWriter
    is_main: bool                 # process 0 writes the run's files

    @property
    def start_step(self) -> int:
        return self.restored.step if self.restored is not None else 0

    @property
    def resumed_from(self) -> int | None:
        return self.start_step if self.restored is not None else None

    def meta(self, **extra) -> dict:
        """The JSON item saved beside the state: the flat config (what resuming compares) and ``extra``."""
        return {"config": config_lib.to_flat(self.cfg), **extra}

    def loop(self, one_step: Callable[[int], dict], save: Callable[[int], float], *, last_step: int,
             total_steps: int, progress_keys: Iterable[str] | None = None, rate_column: bool = True) -> LoopEnd:
        """Step 4: :func:`run_checkpointed_steps` from the restored step with this run's settings."""
        return run_checkpointed_steps(
            self.start_step, last_step, one_step, save=save, checkpointer=self.checkpointer,
            checkpoint_every=self.cfg.checkpoint_every, total_steps=total_steps, metrics=self.metrics,
            progress=Progress(total_steps, self.start_step), progress_keys=progress_keys, rate_column=rate_column,
            watchdog=make_watchdog(self.cfg, self.workdir / "checkpoints"))

    def finish(self, summary: dict, curves: Iterable[tuple[str, tuple[str, ...], str, str]] = (),
               done: str = "done") -> dict:
        """Step 5: ``summary.json`` and the PNG curves ``(file, metric keys, title, y label)`` (process 0),
        and the closing log line."""
        self.metrics.close()
        if self.is_main:
            write_json_atomic(self.workdir / "summary.json", summary)
            for name, keys, title, ylabel in curves:
                plot_curves(self.workdir / name, self.metrics.rows, keys, title, ylabel)
        logging.info("%s at step %d: %s", done, summary.get("step", -1),
                     json.dumps({k: v for k, v in summary.items() if k != "step"}, default=str))
        return summary


def open_run(cfg: RunConfig, workdir: pathlib.Path, abstract_state, *,
             resume_ignore: Iterable[str] = ()) -> Run:
    """Step 3 of a run: open ``workdir/checkpoints`` and restore the latest good step, unless the
    checkpoints were made with other settings (a ValueError naming them; ``overwrite`` starts afresh);
    write ``config.json``; open ``metrics.jsonl`` (rows after the restored step dropped)."""
    import jax

    from parallel import checkpoint as ckpt_lib

    defaults = config_lib.to_flat(type(cfg)())
    checkpointer, restored = ckpt_lib.open_for_run(
        workdir / "checkpoints", config_lib.to_flat(cfg), abstract_state, keep=cfg.keep_checkpoints,
        mode=cfg.checkpoint_mode, overwrite=cfg.overwrite, resume_ignore=RUN_RESUME_IGNORE + tuple(resume_ignore),
        read_saved_config=lambda saved: {**defaults, **config_lib.absent_means(type(cfg)),
                                         **config_lib.upgrade_flat(type(cfg), saved)})
    is_main = jax.process_index() == 0
    if is_main:
        write_json_atomic(workdir / "config.json", dataclasses.asdict(cfg))
    metrics = MetricsWriter(workdir / "metrics.jsonl", resume_step=restored.step if restored else None,
                            enabled=is_main)
    return Run(cfg, workdir, checkpointer, restored, metrics, is_main)
