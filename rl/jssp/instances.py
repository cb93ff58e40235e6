"""Job-shop instances: the standard text format, the shipped Taillard (1993) set, a random generator.

Standard format (JSPLib / OR-Library "text"): the first non-comment line is ``n_jobs n_machines``, then
one line per job with ``n_machines`` pairs ``machine duration`` in processing order, machines numbered
from 0. Lines starting with ``#`` and blank lines are ignored. Every job visits every machine exactly
once (the classic JSSP, as in Taillard's benchmark).

Limits of a file (checked before anything is allocated): ``1 <= n_jobs <= MAX_JOBS``,
``1 <= n_machines <= MAX_MACHINES``, every duration in ``0..MAX_TOTAL_DURATION`` and the sum of all durations
at most ``MAX_TOTAL_DURATION`` (2^30 - 1): every start time and makespan is at most that sum, so it stays
below the environment's int32 "never" sentinel (``rl.jssp.env.BIG`` = 2^30) and CP-SAT's horizon.

Malformed files raise :class:`InstanceFormatError` (a ValueError) naming the file, the line, the value and
what is allowed; a file that is not UTF-8 text or cannot be read is named too.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
TAILLARD_DIR = DATA_DIR / "taillard"
TAILLARD_BOUNDS = DATA_DIR / "taillard_bounds.csv"
MAX_DURATION = 99  # Taillard's durations are uniform in 1..99
MAX_JOBS = 10_000  # limits of an instance file (Taillard's largest: 100 x 20); at most 10^7 operations
MAX_MACHINES = 1_000
MAX_TOTAL_DURATION = 2**30 - 1  # sum of all durations: times stay below env.BIG (2^30) in int32


class InstanceFormatError(ValueError):
    """A malformed instance file; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class Instance:
    """One JSSP instance: ``machines[j, o]`` and ``durations[j, o]`` of job j's o-th operation."""
    name: str
    machines: np.ndarray  # [jobs, machines] int32
    durations: np.ndarray  # [jobs, machines] int32

    @property
    def num_jobs(self) -> int:
        return int(self.machines.shape[0])

    @property
    def num_machines(self) -> int:
        return int(self.machines.shape[1])

    @property
    def size(self) -> str:
        return f"{self.num_jobs}x{self.num_machines}"


def check_arrays(machines, durations, where: str = "instance") -> None:
    """ValueError unless ``machines``/``durations`` form a valid classic JSSP instance."""
    machines, durations = np.asarray(machines), np.asarray(durations)
    if machines.ndim != 2 or machines.shape != durations.shape or machines.size == 0:
        raise ValueError(f"{where}: machines {machines.shape} and durations {durations.shape} must be equal, "
                         "non-empty [jobs, machines] arrays")
    m = machines.shape[1]
    for j in range(machines.shape[0]):
        if sorted(machines[j].tolist()) != list(range(m)):
            raise ValueError(f"{where}: job {j} must visit each machine 0..{m - 1} exactly once, "
                             f"got {machines[j].tolist()}")
    if (durations < 0).any():
        raise ValueError(f"{where}: durations must be >= 0, got {int(durations.min())}")


def _fail(path, lineno, msg):
    raise InstanceFormatError(f"{path}:{lineno}: {msg}")


def _ints(path, lineno, text) -> list[int]:
    out = []
    for tok in text.split():
        if not re.fullmatch(r"[+-]?\d+", tok):
            _fail(path, lineno, f"expected integers, found {tok[:40]!r}")
        if len(tok) > 30:  # far beyond every limit below; not even converted
            _fail(path, lineno, f"integer {tok[:20]}... ({len(tok)} digits) is out of range")
        out.append(int(tok))
    return out


def parse_text(text: str, name: str = "instance", path: str = "<string>") -> Instance:
    """Parses the standard format; InstanceFormatError names ``path`` and the line of the problem."""
    lines = [(i + 1, ln.split("#", 1)[0].strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, ln) for i, ln in lines if ln]
    if not lines:
        _fail(path, 1, "empty file: expected a first line 'n_jobs n_machines'")
    head_no, head = lines[0]
    header = _ints(path, head_no, head)
    if len(header) != 2:
        _fail(path, head_no, f"the first line must be 'n_jobs n_machines' (2 integers), got {len(header)}")
    n_jobs, n_machines = header
    if not (1 <= n_jobs <= MAX_JOBS and 1 <= n_machines <= MAX_MACHINES):
        _fail(path, head_no, f"n_jobs={n_jobs} and n_machines={n_machines} out of range: allowed n_jobs in "
                             f"1..{MAX_JOBS}, n_machines in 1..{MAX_MACHINES}")
    rows = lines[1:]
    if len(rows) != n_jobs:
        where = rows[n_jobs][0] if len(rows) > n_jobs else (rows[-1][0] if rows else head_no)
        _fail(path, where, f"the header announces {n_jobs} jobs but the file has {len(rows)} job lines")
    machines = np.zeros((n_jobs, n_machines), np.int32)
    durations = np.zeros((n_jobs, n_machines), np.int32)
    total = 0
    for j, (lineno, ln) in enumerate(rows):
        vals = _ints(path, lineno, ln)
        if len(vals) != 2 * n_machines:
            _fail(path, lineno, f"job {j} needs {n_machines} 'machine duration' pairs ({2 * n_machines} "
                                f"integers), got {len(vals)} integers")
        ms, ds = vals[0::2], vals[1::2]
        for o, (mach, dur) in enumerate(zip(ms, ds)):
            if not 0 <= mach < n_machines:
                _fail(path, lineno, f"job {j} operation {o}: machine {mach} out of range 0..{n_machines - 1}")
            if not 0 <= dur <= MAX_TOTAL_DURATION:
                _fail(path, lineno, f"job {j} operation {o}: {'negative ' if dur < 0 else ''}duration {dur} out "
                                    f"of range (allowed: 0..{MAX_TOTAL_DURATION})")
        if len(set(ms)) != n_machines:
            dup = sorted({m for m in ms if ms.count(m) > 1})
            _fail(path, lineno, f"job {j} visits machine(s) {dup} more than once (each job must visit "
                                "every machine exactly once)")
        machines[j], durations[j] = ms, ds
        total += sum(ds)
        if total > MAX_TOTAL_DURATION:
            _fail(path, lineno, f"the durations up to job {j} sum to {total}; the sum of all durations must be "
                                f"<= {MAX_TOTAL_DURATION} (2^30 - 1) so that start times and makespans fit int32")
    return Instance(name=name, machines=machines, durations=durations)


def read_instance(path) -> Instance:
    """Reads one instance file in the standard format (name: the file stem)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"instance file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InstanceFormatError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset "
                                  f"{e.start}); expected the standard text format") from None
    except OSError as e:
        raise InstanceFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    return parse_text(text, name=path.stem, path=str(path))


def format_instance(inst: Instance) -> str:
    lines = [f"{inst.num_jobs} {inst.num_machines}"]
    for j in range(inst.num_jobs):
        lines.append(" ".join(f"{m} {d}" for m, d in zip(inst.machines[j], inst.durations[j])))
    return "\n".join(lines) + "\n"


def read_directory(directory) -> list[Instance]:
    """Every ``*.txt`` (or extension-less) instance file of ``directory``, sorted by name."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ValueError(f"instances={str(directory)!r} is neither 'taillard' nor a directory of instance files")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".txt", "", ".jss"))
    if not files:
        raise ValueError(f"instances={str(directory)!r} holds no instance files (*.txt)")
    return [read_instance(p) for p in files]


def load_taillard(sizes: tuple[str, ...] | None = None) -> list[Instance]:
    """The 80 shipped Taillard instances ta01..ta80, optionally only the given ``'JxM'`` sizes."""
    insts = read_directory(TAILLARD_DIR)
    if sizes:
        insts = [i for i in insts if i.size in set(sizes)]
    return insts


def load_bounds(path=TAILLARD_BOUNDS) -> dict[str, dict]:
    """``{instance: {"lower_bound", "upper_bound", "status"}}`` from the shipped CSV (:func:`read_bounds`)."""
    return read_bounds(path)


def read_bounds(path: str | pathlib.Path) -> dict[str, dict]:
    """Best-known bounds from a user's file, in the shape of :func:`load_bounds`: CSV with a header naming
    ``instance`` and ``upper_bound`` (``lower_bound`` optional), or JSON as ``{instance: upper_bound}``,
    ``{instance: {"upper_bound": ..., "lower_bound": ...}}`` or a list of such objects with ``instance``.
    ValueError naming the file and the first bad entry (``bounds=...``)."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"bounds={str(path)!r} does not exist")
    text = file.read_text()
    try:
        if file.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, list):
                data = {row["instance"]: row for row in data}
            entries = {name: v if isinstance(v, dict) else {"upper_bound": v} for name, v in data.items()}
        else:
            rows = list(csv.DictReader(text.splitlines()))
            if not rows or "instance" not in rows[0] or "upper_bound" not in rows[0]:
                raise ValueError("a CSV header with columns 'instance' and 'upper_bound' is required")
            entries = {row["instance"]: row for row in rows}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, csv.Error) as e:
        raise ValueError(f"bounds={str(path)!r} is not a bounds file (JSON or CSV of instance, upper_bound): "
                         f"{e!r}") from None
    except ValueError as e:
        raise ValueError(f"bounds={str(path)!r}: {e}") from None
    out = {}
    for name, entry in entries.items():
        try:
            ub = int(entry["upper_bound"])
            lb = int(entry["lower_bound"]) if entry.get("lower_bound") not in (None, "") else None
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"bounds={str(path)!r}: instance {name!r} has no integer upper_bound "
                             f"(got {entry!r})") from None
        if ub < 1 or (lb is not None and not 0 <= lb <= ub):
            raise ValueError(f"bounds={str(path)!r}: instance {name!r} has upper_bound={ub}, lower_bound={lb}; "
                             "need 0 <= lower_bound <= upper_bound and upper_bound >= 1")
        out[str(name)] = {"lower_bound": lb, "upper_bound": ub, "status": entry.get("status", "")}
    return out


def random_instance(rng: np.random.Generator, num_jobs: int, num_machines: int, low: int = 1,
                    high: int = MAX_DURATION, name: str = "random") -> Instance:
    """Taillard-like random instance: durations uniform in [low, high], a random machine order per job."""
    if num_jobs < 1 or num_machines < 1 or not 0 <= low <= high:
        raise ValueError(f"random_instance: num_jobs={num_jobs}, num_machines={num_machines} must be >= 1 and "
                         f"0 <= low={low} <= high={high}")
    durations = rng.integers(low, high + 1, size=(num_jobs, num_machines)).astype(np.int32)
    machines = np.stack([rng.permutation(num_machines) for _ in range(num_jobs)]).astype(np.int32)
    return Instance(name=name, machines=machines, durations=durations)


def simple_lower_bound(machines: np.ndarray, durations: np.ndarray) -> int:
    """max(longest job, most loaded machine): a makespan lower bound of any schedule of the instance."""
    machines, durations = np.asarray(machines), np.asarray(durations, np.int64)
    load = np.bincount(machines.reshape(-1), weights=durations.reshape(-1), minlength=machines.shape[1])
    return int(max(durations.sum(1).max(), load.max()))


def random_batch_jax(key: jax.Array, batch: int, num_jobs: int, num_machines: int, low: int = 1,
                     high: int = MAX_DURATION) -> tuple[jax.Array, jax.Array]:
    """The same distribution as :func:`random_instance`, in JAX: ``(machines, durations)`` [batch, J, M]."""
    return generate_batch_jax(key, batch, num_jobs, num_machines, Distribution("uniform", low, high, "random"))


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A random instance family: durations uniform in ``[low, high]`` and a routing (each job's machine order).

    Routings: ``random`` (a uniform random permutation per job: Taillard 1993), ``two_sets`` (every job visits
    the first half of the machines, in random order, before the second half: the "two sets" families of Storer,
    Wu & Vaccari 1992 and Demirkol, Mehta & Uzsoy 1998, DMU41-80), ``flow`` (one random machine order shared by
    all jobs: a permutation flow shop written as a job shop).
    """
    name: str
    low: int
    high: int
    routing: str

    def __post_init__(self):
        if self.routing not in ROUTINGS or not 1 <= self.low <= self.high:
            raise ValueError(f"distribution {self.name!r}: routing={self.routing!r} (allowed: {', '.join(ROUTINGS)}), "
                             f"need 1 <= low={self.low} <= high={self.high}")


ROUTINGS = ("random", "two_sets", "flow")
# Validation families for model selection (Taillard's own family first; Taillard's instances stay a test set).
DISTRIBUTIONS = {d.name: d for d in (
    Distribution("taillard", 1, MAX_DURATION, "random"),     # Taillard 1993: U[1, 99], random routing
    Distribution("wide", 1, 200, "random"),                  # DMU1-40's duration range U[1, 200]
    Distribution("short", 1, 10, "random"),                  # few distinct durations, many ties
    Distribution("two_sets", 1, 200, "two_sets"),            # DMU41-80: first half of the machines, then the second
    Distribution("flow", 1, MAX_DURATION, "flow"),           # one machine order for every job
)}


def parse_size(size: str) -> tuple[int, int]:
    """``"15x10"`` -> (15, 10): jobs and machines (ValueError naming ``size`` unless JOBSxMACHINES)."""
    dims = size.split("x")
    if len(dims) != 2 or not all(d.isdigit() and int(d) >= 1 for d in dims):
        raise ValueError(f"size={size!r} is not JOBSxMACHINES (e.g. 15x15)")
    return int(dims[0]), int(dims[1])


def parse_distributions(spec: str, what: str = "distributions") -> tuple[Distribution, ...]:
    """``"taillard,two_sets"`` -> the named :data:`DISTRIBUTIONS` (ValueError naming an unknown one)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in DISTRIBUTIONS]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"{what}={spec!r}: need distinct names from {', '.join(DISTRIBUTIONS)}")
    return tuple(DISTRIBUTIONS[n] for n in names)


def generate_batch_jax(key: jax.Array, batch: int, num_jobs: int, num_machines: int,
                       distribution: Distribution) -> tuple[jax.Array, jax.Array]:
    """``(machines, durations)`` [batch, J, M] drawn from ``distribution`` (jit-able; the routing is static)."""
    k1, k2 = jax.random.split(key)
    durations = jax.random.randint(k1, (batch, num_jobs, num_machines), distribution.low, distribution.high + 1,
                                   jnp.int32)
    rows = 1 if distribution.routing == "flow" else num_jobs
    noise = jax.random.uniform(k2, (batch, rows, num_machines))
    if distribution.routing == "two_sets":  # the second half's keys all sort after the first half's
        noise = noise + (jnp.arange(num_machines) >= num_machines // 2)
    machines = jnp.argsort(noise, axis=-1).astype(jnp.int32)  # a uniform random permutation per row
    return jnp.broadcast_to(machines, durations.shape), durations
