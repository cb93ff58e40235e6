"""A mallocGame instance: buffers (size, live interval, benefit) and a fast-memory capacity.

Reference: "Optimizing Memory Mapping Using Deep Reinforcement Learning" (DeepMind, 2023), Sec. 2: a
program's buffers are rectangles in (time x address); fast memory is an address range [0, capacity); a
buffer mapped to fast memory occupies [offset, offset + size) during its whole live interval and earns
its benefit (time saved).

Conventions used everywhere in ``rl.malloc``:
- sizes and the capacity are positive integers (bytes);
- a live interval ``[start, end]`` is inclusive, in schedule positions (instruction indices), ``end >= start``;
  two buffers overlap in time iff ``start_a <= end_b and start_b <= end_a``;
- benefits are finite floats ``>= 0``;
- a buffer larger than the capacity is legal: it simply can never be placed in fast memory;
- limits: sizes and the capacity in ``1..MAX_BYTES`` (2^40, 1 TiB: sums of sizes stay exact in int64),
  starts and ends in ``0..MAX_POSITION`` (2^31 - 2: the JAX game's int32 times and horizon), benefits at
  most ``MAX_BENEFIT`` (1e30: sums stay finite in float32). The JAX game (``rl.malloc.game``) further needs
  sizes and the capacity below 2^30.

JSON format (``save`` / ``load``)::

    {"name": "...", "capacity": 4096, "meta": {...},
     "buffers": [{"name": "dot.1", "size": 512, "start": 0, "end": 3, "benefit": 1.5}, ...]}

``meta`` (optional) is an object. A malformed file raises a ValueError naming the file, the field and
the value (a buffer by index and name).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import numpy as np

_FIELDS = ("size", "start", "end", "benefit")
MAX_BYTES = 2**40
MAX_POSITION = 2**31 - 2
MAX_BENEFIT = 1e30


@dataclasses.dataclass(frozen=True, eq=False)
class Instance:
    """Buffers as parallel arrays (index i is buffer i); validated on construction."""
    name: str
    sizes: np.ndarray      # int64 [n], bytes, > 0
    starts: np.ndarray     # int64 [n], schedule position of the definition
    ends: np.ndarray       # int64 [n], schedule position of the last use (inclusive)
    benefits: np.ndarray   # float64 [n], >= 0
    capacity: int          # bytes of fast memory, > 0
    buffer_names: tuple[str, ...] = ()
    meta: dict = dataclasses.field(default_factory=dict)
    source: str = ""  # the file it was read from (not saved): errors about the instance name it

    def __post_init__(self):
        n = len(self.sizes)
        names = tuple(self.buffer_names) or tuple(f"b{i}" for i in range(n))
        object.__setattr__(self, "buffer_names", names)
        _check_capacity(self.where, self.capacity)
        object.__setattr__(self, "capacity", int(self.capacity))
        for field in ("sizes", "starts", "ends", "benefits", "buffer_names"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{self.where}: {field} has {len(getattr(self, field))} entries, "
                                 f"expected {n} (one per buffer)")
        rows = [dict(size=self.sizes[i], start=self.starts[i], end=self.ends[i], benefit=self.benefits[i])
                for i in range(n)]
        for i, row in enumerate(rows):
            _check_buffer(self.where, i, names[i], row)
        object.__setattr__(self, "sizes", np.asarray(self.sizes, np.int64).reshape(n))
        object.__setattr__(self, "starts", np.asarray(self.starts, np.int64).reshape(n))
        object.__setattr__(self, "ends", np.asarray(self.ends, np.int64).reshape(n))
        object.__setattr__(self, "benefits", np.asarray(self.benefits, np.float64).reshape(n))

    @property
    def where(self) -> str:
        """How errors name this instance: its file if it was read from one, else its name."""
        return f"{self.source} (instance {self.name!r})" if self.source else f"instance {self.name!r}"

    @property
    def num_buffers(self) -> int:
        return len(self.sizes)

    @property
    def total_benefit(self) -> float:
        return float(self.benefits.sum())

    @property
    def horizon(self) -> int:
        """One past the last schedule position used."""
        return int(self.ends.max()) + 1 if self.num_buffers else 0

    def schedule_order(self) -> np.ndarray:
        """Buffer indices sorted by (start, end, index): the order the mallocGame decides them in."""
        return np.lexsort((np.arange(self.num_buffers), self.ends, self.starts))

    def peak_live_bytes(self) -> int:
        """max over schedule positions of the total size of the buffers live there (no memory reuse lost)."""
        if not self.num_buffers:
            return 0
        # size changes at the schedule positions where buffers start / stop being live (not a dense array
        # over the horizon, which may be 2^31 positions long)
        positions, at = np.unique(np.concatenate([self.starts, self.ends + 1]), return_inverse=True)
        delta = np.zeros(len(positions), np.int64)
        np.add.at(delta, at, np.concatenate([self.sizes, -self.sizes]))
        return int(np.cumsum(delta).max())

    def to_dict(self) -> dict:
        return {"name": self.name, "capacity": self.capacity, "meta": self.meta,
                "buffers": [{"name": self.buffer_names[i], "size": int(self.sizes[i]),
                             "start": int(self.starts[i]), "end": int(self.ends[i]),
                             "benefit": float(self.benefits[i])} for i in range(self.num_buffers)]}

    @classmethod
    def from_dict(cls, d: Any, source: str = "instance") -> "Instance":
        """Validating constructor from the JSON dict; malformed input -> ValueError naming ``source`` (the
        file), the field and the buffer."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        for key in ("capacity", "buffers"):
            if key not in d:
                raise ValueError(f"{source}: missing field {key!r} (required: name, capacity, buffers)")
        name = str(d.get("name", source))
        buffers = d["buffers"]
        if not isinstance(buffers, list):
            raise ValueError(f"{source}: 'buffers' must be a list of objects, got {type(buffers).__name__}")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError(f"{source}: meta={meta!r} must be a JSON object (or left out)")
        _check_capacity(source, d["capacity"])
        names, rows = [], []
        for i, b in enumerate(buffers):
            if not isinstance(b, dict):
                raise ValueError(f"{source}: buffer #{i} must be an object with {_FIELDS}, got {b!r}")
            bname = str(b.get("name", f"b{i}"))
            missing = [f for f in _FIELDS if f not in b]
            if missing:
                raise ValueError(f"{source}: buffer #{i} ({bname!r}) is missing field(s) {missing}")
            _check_buffer(source, i, bname, b)
            names.append(bname)
            rows.append(b)
        cap = d["capacity"]
        if isinstance(cap, float) and cap.is_integer():
            cap = int(cap)
        return cls(name=name, capacity=cap, buffer_names=tuple(names), meta=dict(meta),
                   source="" if source == "instance" else source,
                   sizes=np.array([int(r["size"]) for r in rows], np.int64),
                   starts=np.array([int(r["start"]) for r in rows], np.int64),
                   ends=np.array([int(r["end"]) for r in rows], np.int64),
                   benefits=np.array([float(r["benefit"]) for r in rows], np.float64))


def _is_int(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer()


def _check_capacity(where: str, cap) -> None:
    if not _is_int(cap) or not 1 <= cap <= MAX_BYTES:
        raise ValueError(f"{where}: capacity={cap!r} must be an integer number of bytes in 1..{MAX_BYTES} (2^40)")


def _check_buffer(source: str, i: int, name: str, b: dict) -> None:
    where = f"{source}: buffer #{i} ({name!r})"
    for f in ("size", "start", "end"):
        if not _is_int(b[f]):
            raise ValueError(f"{where}: {f}={b[f]!r} must be an integer")
    if b["size"] < 1:
        raise ValueError(f"{where}: size={b['size']!r} must be a positive number of bytes")
    if b["size"] > MAX_BYTES:
        raise ValueError(f"{where}: size={b['size']!r} is too large (allowed: 1..{MAX_BYTES} bytes, 2^40)")
    for f in ("start", "end"):
        if not 0 <= b[f] <= MAX_POSITION:
            raise ValueError(f"{where}: {f}={b[f]!r} out of range (allowed schedule positions: 0..{MAX_POSITION})")
    if b["end"] < b["start"]:
        raise ValueError(f"{where}: live interval end={b['end']!r} is before start={b['start']!r}")
    v = b["benefit"]  # (the comparisons are exact for huge ints and false for nan)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not 0 <= v <= MAX_BENEFIT:
        raise ValueError(f"{where}: benefit={v!r} must be a finite number in [0, {MAX_BENEFIT:g}]")


def load(path: str | pathlib.Path) -> Instance:
    """Reads one instance JSON; a ValueError naming the file for anything wrong with it."""
    path = pathlib.Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); "
                         "expected an instance JSON") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except (OSError, RecursionError) as e:
        raise ValueError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    return Instance.from_dict(d, source=str(path))


def save(instance: Instance, path: str | pathlib.Path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(instance.to_dict(), indent=1))
    tmp.replace(path)


def load_dir(directory: str | pathlib.Path) -> list[Instance]:
    """All ``*.json`` instances of a directory, sorted by file name."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ValueError(f"instances directory {str(directory)!r} does not exist")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ValueError(f"instances directory {str(directory)!r} holds no *.json instance")
    return [load(f) for f in files]


def random_instance(rng: np.random.Generator, num_buffers: int = 16, horizon: int = 32,
                    max_size: int = 64, capacity: int | None = None, capacity_fraction: float = 0.4,
                    name: str = "random") -> Instance:
    """Random instance for training at scale: log-uniform sizes, geometric-ish lifetimes, benefits
    proportional to size^0.5..1.5 times noise (memory-bound buffers gain with bytes moved).

    capacity defaults to ``capacity_fraction`` of the peak live bytes (so fast memory is contended)."""
    if num_buffers < 1 or horizon < 1 or max_size < 1:
        raise ValueError(f"num_buffers={num_buffers}, horizon={horizon}, max_size={max_size} must all be >= 1")
    sizes = np.exp(rng.uniform(0, np.log(max_size) + 1e-9, num_buffers)).astype(np.int64).clip(1, max_size)
    starts = rng.integers(0, horizon, num_buffers)
    lengths = rng.geometric(p=min(1.0, 4.0 / horizon), size=num_buffers) - 1
    ends = np.minimum(starts + lengths, horizon - 1)
    benefits = np.round(sizes ** rng.uniform(0.5, 1.5, num_buffers) * rng.uniform(0.2, 1.0, num_buffers), 3)
    inst = Instance(name=name, sizes=sizes, starts=starts, ends=ends, benefits=benefits, capacity=1)
    if capacity is None:
        capacity = max(1, int(capacity_fraction * inst.peak_live_bytes()))
    return dataclasses.replace(inst, capacity=int(capacity), meta={"generator": "random_instance"})


def tiny_contended_instance(rng: np.random.Generator, name: str = "tiny") -> Instance:
    """A 4-9 buffer instance with integer sizes 1-5, benefits 1-19, lifetimes on 3-8 steps and a capacity of
    3-9 bytes: small enough to solve exactly in milliseconds, contended enough that the mallocGame's move
    set matters (the completeness checks of rl/malloc/game.py)."""
    n, horizon = int(rng.integers(4, 10)), int(rng.integers(3, 9))
    starts = rng.integers(0, horizon, n)
    return Instance(name, sizes=rng.integers(1, 6, n), starts=starts,
                    ends=np.minimum(starts + rng.integers(0, horizon, n), horizon),
                    benefits=rng.integers(1, 20, n).astype(float), capacity=int(rng.integers(3, 10)))
