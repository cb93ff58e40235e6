"""The command-line layer every script shares: flags generated from config dataclasses, one-line errors.

A script is ``flags -> config -> one library call``::

    from scripts import common
    from training import lm

    if __name__ == "__main__":
        common.main(lm.TrainLMConfig, lm.train, preflight=lm.check_devices)

:func:`define_config_flags` turns every flat setting of the config class (``training.config.flat_fields``:
name, type, default and the help from the dataclass docstrings) into an absl flag, and every old spelling
of a renamed setting into an alias; :func:`config_from_flags` builds the config from the parsed flags.
Library errors name the setting (``name=value``, or `` `name` `` without a value); here the name gets its
``--`` (``training.config.flag_message``). A bad flag, or any ``ValueError`` the run raises for what the user
gave, ends the process with one line on stderr and exit status 1, no traceback.
"""
from __future__ import annotations

import pathlib
import shutil
import sys
from typing import Any, Callable, Iterable

from absl import app, flags, logging

from parallel import checkpoint_logs
from training import config as config_lib
from training import workdir_lock

# The flags defined here belong to the script that asks for them (so its --help lists them).
flags.disclaim_key_flags()

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def define_config_flags(config_cls: type, skip: Iterable[str] = (), flag_values=None) -> None:
    """One absl flag per flat setting of ``config_cls`` (except ``skip``), with aliases for old names."""
    flag_values = flag_values or flags.FLAGS
    skip = set(skip)
    for f in config_lib.flat_fields(config_cls):
        if f.name not in skip:
            _DEFINE[f.type](f.name, f.default, f.help, flag_values=flag_values)
    for old, new in config_lib.renamed(config_cls).items():
        if new not in skip:
            flags.DEFINE_alias(old, new, flag_values=flag_values)


def fail(message: str) -> None:
    """Ends the process: ``error: message`` on stderr, exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """``app.run``'s flag parser: absl's, but a flag it cannot parse (unknown, wrong type, out of bounds)
    ends the process with one line (:func:`fail`) instead of absl's two."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def require_out_flag(_config=None) -> None:
    """``preflight`` of a script whose ``--out`` is a flag of its own (not a config setting): a path that
    cannot be written fails with the settings, not after the work."""
    from training import run as run_lib

    run_lib.require_output_file("--out", flags.FLAGS.out)


def flag_names(config_cls: type | None) -> list[str]:
    return [f.name for f in config_lib.flat_fields(config_cls)] if config_cls is not None else []


def config_from_flags(config_cls: type, flag_values=None, preflight=None, **overrides):
    """Builds ``config_cls`` from the flags of its flat settings (plus ``overrides``), before any work.

    The config validates itself; ``preflight(config)`` checks it against the environment (devices, ...);
    the workdir must be writable. Any failure ends the process with one line (:func:`fail`).
    """
    from training import run as run_lib

    flag_values = flag_values or flags.FLAGS
    values = {f.name: flag_values[f.name].value for f in config_lib.flat_fields(config_cls) if f.name in flag_values}
    values.update(overrides)
    try:
        config = config_lib.from_flat(config_cls, values)
        # A multihost run may not touch JAX before jax.distributed.initialize(): its device checks run in
        # the library right after that (training.run.begin), still before any work.
        if preflight is not None and not getattr(config, "multihost", False):
            preflight(config)
        if hasattr(config, "workdir"):
            run_lib.require_workdir(config.workdir)
    except ValueError as e:
        fail(config_lib.flag_message(str(e), flag_names(config_cls)))
    return config


def quiet_library_logs() -> None:
    """Keeps our INFO progress lines readable: the checkpointer's libraries say a failure once
    (:func:`parallel.checkpoint_logs.quiet_checkpoint_logs`) and JAX's backend probe stays off stderr;
    library warnings still show."""
    import logging as std_logging

    checkpoint_logs.quiet_checkpoint_logs()
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


def use_async_collectives() -> dict[str, str]:
    """Sets the XLA options that run collectives beside compute on the detected GPU/TPU
    (parallel/xla_flags.py; nothing on CPU) and logs them. Call before anything initialises a backend."""
    from parallel import xla_flags

    changed = xla_flags.apply_async_collective_flags()
    for var, value in changed.items():
        logging.info("async collectives: %s=%s", var, value)
    return changed


def run_cli(body: Callable[[], Any], config_cls: type | None = None) -> Any:
    """Runs ``body()``; a ValueError it raises (something the user gave was wrong) ends the process with
    one line naming the flag (:func:`fail`) instead of a traceback, and so does a CheckpointError (a save
    that failed, e.g. on a full disk: the line names the step and the last good one)."""
    from parallel.checkpoint import CheckpointError

    try:
        return body()
    except ValueError as e:
        fail(config_lib.flag_message(str(e), flag_names(config_cls)))
    except (CheckpointError, FloatingPointError) as e:  # a failed save (names the step, the reason and the
        fail(str(e))  # last good step) or a diverged run (names where): one line, the checkpoints intact


def new_directory(path: str) -> pathlib.Path | None:
    """The outermost directory that creating ``path`` would add (None if ``path`` exists or is empty)."""
    if not path:
        return None
    target = pathlib.Path(path).expanduser().resolve()
    if target.exists():
        return None
    while not target.parent.exists():
        target = target.parent
    return target


def remove_if_unused(directory: pathlib.Path | None) -> None:
    """Removes ``directory`` (one this process created: :func:`new_directory`) if it holds nothing but
    directories and this process's workdir lock (:mod:`training.workdir_lock`), so that a run refused
    after its workdir was made leaves nothing on disk."""
    if directory is None or not directory.is_dir():
        return
    if all(p.is_dir() or workdir_lock.is_held_by_this_process(p) for p in directory.rglob("*")):
        shutil.rmtree(directory, ignore_errors=True)


def main(config_cls: type, run: Callable[[Any], Any], *, preflight=None, async_collectives: bool = False,
         extra_flags: Callable[[], None] | None = None, dispatch: Callable[[Any], bool] | None = None) -> None:
    """The whole of a script's ``__main__``: define the config's flags (and ``extra_flags()``), parse, build
    the config, then ``run(config)``. ``dispatch(config) -> handled`` may take the run instead (a script's
    second mode, e.g. a comparison of finished runs)."""
    define_config_flags(config_cls)
    if extra_flags is not None:
        extra_flags()

    def _main(argv):
        if len(argv) > 1:
            fail(f"unexpected arguments {argv[1:]}: every setting is a --flag (see --help)")
        if async_collectives:
            use_async_collectives()
        new_dir = new_directory(flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else "")
        quiet_library_logs()  # before the device checks: JAX's backend probe would log a line on stderr
        cfg = config_from_flags(config_cls, preflight=preflight)
        try:
            if dispatch is not None and run_cli(lambda: dispatch(cfg), config_cls):
                return
            run_cli(lambda: run(cfg), config_cls)
        except SystemExit:  # refused (fail): a workdir this run created and left unused is taken back
            remove_if_unused(new_dir)
            raise

    app.run(_main, flags_parser=parse_flags)
