"""The user's own program as a mallocGame instance: a JAX function (``--program=package.module:function``) or
a scheduled XLA HLO text module from any frontend (``--hlo=FILE``).

``program_instance(ProgramSource(...))`` is what ``scripts/eval_malloc.py --program / --hlo`` plays:

- ``program="package.module:function"``: ``function()`` returns ``(fn, args)``, the callable (jitted or not)
  and a tuple of example arguments; ``jax.jit(fn).lower(*args).compile().as_text()`` is read like the
  toolkit's own programs (``extract.extract``);
- ``hlo=FILE``: the optimised module as ``jax.jit(f).lower(...).compile().as_text()`` prints it, or the
  ``*after_optimizations.txt`` file that ``XLA_FLAGS=--xla_dump_to=DIR`` writes (any XLA frontend: JAX,
  PyTorch/XLA, TensorFlow). Its ``HloModule`` line must say ``is_scheduled=true``: the ENTRY computation's
  instruction order is XLA's schedule, from which live ranges are read (an unscheduled module has none).

Benefits come from the roofline model of ``extract.CostModel`` (its rates are settings), the capacity is
``capacity_bytes`` or ``capacity_fraction`` of the peak live bytes, rounded down to a multiple of the greatest
common divisor of the buffer sizes (the JAX game's address unit; with every size a multiple of it, no
placement is lost). Anything wrong with what the user gave raises one ValueError naming the setting (and the
file and line for HLO text).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import pathlib
import re

import numpy as np

from rl.malloc import extract
from rl.malloc.instance import Instance

_SPEC = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):([A-Za-z_]\w*)$")


@dataclasses.dataclass(frozen=True)
class ProgramSource:
    """Where the instance comes from and how it is sized (exactly one of ``program`` and ``hlo``)."""
    program: str = ""
    hlo: str = ""
    capacity_fraction: float = 0.25
    capacity_bytes: int = 0
    cost: extract.CostModel = extract.CostModel()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def load_program(spec: str):
    """``(fn, args)`` from ``package.module:function``: the module imported, the function called (no
    arguments). ValueError naming ``program=spec`` if it does not import, has no such function, raises, or
    does not return a callable and a tuple of arguments."""
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"program={spec!r} must be package.module:function (a function returning the callable "
                         "and a tuple of example arguments)")
    module_name, function_name = m.groups()
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 (whatever the user's module raises on import is reported, named)
        raise ValueError(f"program={spec!r}: cannot import {module_name} ({_first_line(e)})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"program={spec!r}: {module_name} has no function {function_name}")
    try:
        out = function()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"program={spec!r}: {function_name}() raised {_first_line(e)}") from None
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[0]) and isinstance(out[1], (tuple, list))):
        raise ValueError(f"program={spec!r}: {function_name}() must return (callable, tuple of example arguments), "
                         f"got {type(out).__name__}")
    return out[0], tuple(out[1])


def program_hlo(spec: str) -> tuple[str, str]:
    """(name, scheduled HLO text) of ``package.module:function``'s program compiled on the default backend."""
    fn, args = load_program(spec)
    try:
        text = extract.compiled_hlo(fn, *args)
    except Exception as e:  # noqa: BLE001 (a tracing or compile error in the user's function)
        raise ValueError(f"program={spec!r}: compiling {spec.split(':')[1]}'s program failed "
                         f"({_first_line(e)})") from None
    return spec.replace(":", "."), text


NOT_SCHEDULED = ("its HloModule line does not say is_scheduled=true, so the instruction order is no schedule to "
                 "read live ranges from; give the optimised module: jax.jit(f).lower(*args).compile().as_text(), "
                 "or the *after_optimizations.txt file that XLA_FLAGS=--xla_dump_to=DIR writes")


def read_hlo(path: str) -> tuple[str, str]:
    """(module name, text) of a scheduled HLO text file, checked line by line (``extract.parse_module``):
    ValueError naming ``hlo=path`` and the line for anything else."""
    file = pathlib.Path(path).expanduser()
    where = f"hlo={path!r}"
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); "
                         "expected an HLO text module") from None
    except OSError as e:
        raise ValueError(f"{where}: cannot be read ({e.strerror or e})") from None
    lines = text.splitlines()
    first = next((k for k, line in enumerate(lines) if line.strip()), None)
    header = re.match(r"^HloModule\s+([\w.\-]+)", lines[first]) if first is not None else None
    if header is None:
        raise ValueError(f"{where}:{(first or 0) + 1}: not an HLO text module (the first line should start with "
                         "'HloModule')")
    if not re.search(r"\bis_scheduled=true\b", lines[first]):
        raise ValueError(f"{where}: {NOT_SCHEDULED}")
    try:
        extract.parse_module(text)
    except extract.HloParseError as e:
        raise ValueError(f"{where}:{e.line}: {e}" if e.line else f"{where}: {e}") from None
    return header.group(1), text


def sized(inst: Instance, capacity_fraction: float = 0.25, capacity_bytes: int = 0,
          setting: str = "capacity_bytes") -> Instance:
    """``inst`` with its fast-memory capacity: ``capacity_bytes`` if given (> 0), else ``capacity_fraction`` x
    its peak live bytes, rounded down to a multiple of the sizes' greatest common divisor. ValueError unless
    it lies between the smallest buffer and the peak."""
    peak = inst.peak_live_bytes()
    if capacity_bytes:
        if capacity_bytes > peak:
            raise ValueError(f"capacity_bytes={capacity_bytes} is above the peak live bytes of {inst.name!r} "
                             f"({peak}): every buffer would fit; allowed 1..{peak}")
        wanted, setting = capacity_bytes, "capacity_bytes"
    else:
        wanted, setting = int(capacity_fraction * peak), "capacity_fraction"
    unit = int(np.gcd.reduce(inst.sizes)) if inst.num_buffers else 1
    capacity = wanted // unit * unit
    smallest = int(inst.sizes.min()) if inst.num_buffers else 1
    if capacity < smallest:
        value = capacity_bytes if setting == "capacity_bytes" else capacity_fraction
        raise ValueError(f"{setting}={value} gives {wanted} bytes of fast memory, less than the smallest buffer of "
                         f"{inst.name!r} ({smallest} bytes; peak live bytes {peak}): nothing could be placed")
    meta = {**inst.meta, "capacity_aligned_to": unit, "peak_live_bytes": peak,
            "capacity_fraction": capacity / peak if peak else 0.0}
    return dataclasses.replace(inst, capacity=capacity, meta=meta)


def check_capacity_settings(capacity_fraction: float, capacity_bytes: int) -> None:
    """ValueError for a fraction outside (0, 1] or a negative byte count (before any program is read)."""
    if not (isinstance(capacity_fraction, (int, float)) and 0 < capacity_fraction <= 1
            and math.isfinite(capacity_fraction)):
        raise ValueError(f"capacity_fraction={capacity_fraction!r} must be in (0, 1]: the share of the program's "
                         "peak live bytes that fits in fast memory")
    if not isinstance(capacity_bytes, int) or capacity_bytes < 0:
        raise ValueError(f"capacity_bytes={capacity_bytes!r} must be an integer >= 0 (0: use capacity_fraction)")


def program_instance(source: ProgramSource) -> Instance:
    """The whole-program instance of ``source`` (module docstring), its origin in ``meta``."""
    if bool(source.program) == bool(source.hlo):
        raise ValueError(f"give exactly one of program={source.program!r} and hlo={source.hlo!r}")
    check_capacity_settings(source.capacity_fraction, source.capacity_bytes)
    if source.program:
        name, text = program_hlo(source.program)
        origin = {"program": source.program}
    else:
        name, text = read_hlo(source.hlo)
        origin = {"hlo": str(pathlib.Path(source.hlo).expanduser())}
    inst = extract.instance_from_hlo(text, name, capacity=1, cost=source.cost, meta=origin)
    if not inst.num_buffers or inst.total_benefit <= 0:
        setting = "program" if source.program else "hlo"
        raise ValueError(f"{setting}={source.program or source.hlo!r}: its ENTRY computation has "
                         f"{inst.num_buffers} buffers and no benefit to gain from fast memory: nothing to place")
    return sized(inst, source.capacity_fraction, source.capacity_bytes)
