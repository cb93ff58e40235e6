"""Plumbing shared by every experiment script: flags -> frozen config, the workdir, metrics, progress.

A script defines its absl flags and a frozen dataclass with one field per flag; ``config_from_flags``
builds (and so validates, through the dataclass's ``__post_init__``) the config before any work starts.
The workdir receives ``config.json``, ``metrics.jsonl`` (one JSON object per logged step) and plots.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Iterable

from absl import flags, logging


def define_common_flags() -> None:
    """Flags every training script has: workdir, seed, multihost and checkpointing."""
    flags.DEFINE_string("workdir", None, "Output directory (config.json, metrics.jsonl, checkpoints/, plots).")
    flags.DEFINE_integer("seed", 0, "Random seed; a run is reproducible from it.")
    flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (one process per host).")
    flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every this many steps (0: only at the end).")
    flags.DEFINE_integer("keep_checkpoints", 2, "How many most recent checkpoints to keep (>= 1).")
    flags.DEFINE_enum("checkpoint_mode", "lazy", ["lazy", "async", "sync"],
                      "lazy: the save is handed to a background thread and the device-to-host copy overlaps "
                      "the next step; async: plain Orbax async; sync: blocking save.")
    flags.DEFINE_bool("overwrite", False, "Start afresh in a workdir whose checkpoints were made with another config.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The fields every training script shares (the flags of :func:`define_common_flags`).

    A script's config subclasses it (redeclaring a field changes its default) and calls
    ``super().__post_init__()`` from its own ``__post_init__``.
    """
    workdir: str | None = None
    seed: int = 0
    multihost: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    checkpoint_mode: str = "lazy"
    overwrite: bool = False

    def __post_init__(self):
        from parallel.checkpoint import validate_options

        require_positive(self, "checkpoint_every", allow_zero=("checkpoint_every",))
        validate_options(self.keep_checkpoints, self.checkpoint_mode)


# Fields that may change between a run and its resumption without changing the trajectory.
RUN_RESUME_IGNORE = ("workdir", "overwrite", "multihost", "checkpoint_every", "keep_checkpoints",
                     "checkpoint_mode")


def config_from_flags(config_cls, flag_values=None, preflight=None, **overrides):
    """Builds ``config_cls`` from the flags of the same names (plus ``overrides``), before any work.

    The dataclass validates itself in ``__post_init__`` (ValueError naming the flag); the workdir must
    be writable. Either failure exits the process with status 1 and the message on stderr.
    """
    flag_values = flag_values or flags.FLAGS
    kwargs = {}
    for field in dataclasses.fields(config_cls):
        if field.name in overrides:
            kwargs[field.name] = overrides[field.name]
        elif field.name in flag_values:
            kwargs[field.name] = flag_values[field.name].value
    try:
        config = config_cls(**kwargs)
        if preflight is not None:  # checks against the environment (device count, ...)
            preflight(config)
        if "workdir" in kwargs:
            require_workdir(config.workdir)
    except ValueError as e:  # a usage error: the message alone, not a traceback
        raise SystemExit(f"error: {e}") from None
    return config


def require_positive(config, *names: str, allow_zero: Iterable[str] = ()) -> None:
    """ValueError naming the flag unless each of ``names`` is an int > 0 (>= 0 for ``allow_zero``)."""
    allow_zero = set(allow_zero)
    for name in names:
        value = getattr(config, name)
        low = 0 if name in allow_zero else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"--{name}={value!r} must be an integer >= {low}")


def require_workdir(workdir: str | None) -> pathlib.Path:
    """Creates ``workdir`` and checks that it is writable, before any work starts."""
    if not workdir:
        raise ValueError("--workdir is required (the directory that receives config, metrics and checkpoints)")
    path = pathlib.Path(workdir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--workdir={workdir!r} is not writable: {e}") from None
    return path


def command_line(module: str, config, skip: Iterable[str] = ("workdir", "overwrite")) -> str:
    """``python -m MODULE --flag=value ...`` with the flags of ``config`` (a frozen config dataclass) that
    differ from their defaults, leaving out ``skip``: the provenance line of an exported artifact."""
    defaults = type(config)()
    return " ".join([f"python -m {module}"] + [
        f"--{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
        if f.name not in skip and getattr(config, f.name) != getattr(defaults, f.name)])


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


class _DropLibraryChatter:
    """A logging filter dropping INFO/DEBUG records from chatty libraries (Orbax logs every rename)."""

    def __init__(self, prefixes=("/orbax/",)):
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(p in record.pathname for p in self.prefixes)


def quiet_library_logs() -> None:
    """Keeps our INFO progress lines readable; library warnings and errors still show."""
    import logging as std_logging

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryChatter) for f in handler.filters):
        handler.addFilter(_DropLibraryChatter())
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


def use_async_collectives() -> dict[str, str]:
    """Sets the XLA options that run collectives beside compute on the detected GPU/TPU
    (parallel/xla_flags.py; nothing on CPU) and logs them. Call first in ``main``, before anything
    initialises a JAX backend."""
    from parallel import xla_flags

    changed = xla_flags.apply_async_collective_flags()
    for var, value in changed.items():
        logging.info("async collectives: %s=%s", var, value)
    return changed


def machine_info() -> dict:
    """What every benchmark JSON records about the machine it ran on."""
    import platform

    import jax

    return {"devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "jax": jax.__version__}


def maybe_initialize_distributed(multihost: bool) -> None:
    if multihost:
        import jax

        jax.distributed.initialize()
        logging.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())


class MetricsWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl``.

    On resume from ``resume_step``, rows logged after that step by the interrupted run are dropped
    first, so the file of a resumed run equals that of an uninterrupted one.
    """

    def __init__(self, path: pathlib.Path, resume_step: int | None = None, enabled: bool = True):
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
        row = {k: _plain(v) for k, v in row.items()}
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()


def _plain(value):
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Progress:
    """Logs the step, steps/s and ETA at a steady rate (every ``every_s`` seconds of wall time)."""

    def __init__(self, total_steps: int, start_step: int = 0, every_s: float = 10.0, name: str = "train"):
        self.total, self.name, self.every_s = total_steps, name, every_s
        self._t0 = self._last_t = time.perf_counter()
        self._start = self._last_step = start_step

    def update(self, step: int, **extra) -> None:
        now = time.perf_counter()
        if now - self._last_t < self.every_s and step < self.total:
            return
        rate = (step - self._last_step) / max(now - self._last_t, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        details = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        logging.info("%s step %d/%d  %.2f steps/s  eta %.0fs  %s", self.name, step, self.total, rate, eta, details)
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
                           checkpoint_every: int, total_steps: int, metrics: "MetricsWriter",
                           progress: Progress, progress_keys: Iterable[str] | None = None,
                           rate_column: bool = True) -> LoopEnd:
    """The step loop every training script shares.

    ``one_step(step) -> row`` runs steps ``start_step + 1 .. last_step``; a non-empty row is written to
    ``metrics`` (with ``steps_per_sec`` unless ``rate_column`` is off) and to the progress log (only the
    ``progress_keys`` columns when given). ``save(step) -> seconds blocked`` runs every ``checkpoint_every``
    steps (not at ``total_steps``) and then for the last step run unless it was just saved. SIGTERM/SIGINT
    (:class:`parallel.checkpoint.PreemptionGuard`) or the checkpointer's preemption notice end the loop
    early, checkpointed; the checkpointer is closed (its background writes finished) before returning.
    """
    from parallel import checkpoint as ckpt_lib

    keys = None if progress_keys is None else set(progress_keys)
    wall_start = time.perf_counter()
    preempted, last_saved, step, blocked = False, start_step, start_step, 0.0
    with ckpt_lib.PreemptionGuard() as guard:
        for step in range(start_step + 1, last_step + 1):
            row = one_step(step)
            if row:
                rate = {"steps_per_sec": progress.steps_per_sec(step)} if rate_column else {}
                metrics.write({"step": step, **row, **rate})
                progress.update(step, **{k: v for k, v in row.items() if keys is None or k in keys})
            if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                blocked += save(step)
                last_saved = step
            if guard.requested or checkpointer.reached_preemption(step):
                preempted = True
                break
        if step != last_saved:
            blocked += save(step)
        checkpointer.close()
    return LoopEnd(step, preempted, time.perf_counter() - wall_start, blocked)


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
