r"""Mutation check: plant named bugs one at a time and see whether the tests that should catch them fail.

The mutants live in :mod:`tools.mutants` (name, file, an exact ``old`` snippet, its ``new`` text, the pytest
selection that must fail). :func:`run`:

1. copies the checkout (``git ls-files`` plus untracked files that git does not ignore) to a private
   temporary directory once: the source checkout is never written to;
2. checks every chosen mutant's ``old`` occurs exactly once in its file (else STALE: reported, never skipped,
   and the check fails at the end) and that its test files exist (else ERROR; the existing part of the
   selection still runs, its outcome is recorded as ``partial``);
3. verifies that the tests import the copy: ``find_spec`` of every package points into it, and the canary
   mutant (:data:`tools.mutants.CANARY`, raises at import) must be caught with its marker in the output
   -- otherwise the run stops, since every other result would be meaningless;
4. runs each distinct selection once on the unmutated copy (the baseline; a selection failing there makes its
   mutants ERROR rather than a false catch);
5. for each mutant: writes ``new`` in place of ``old``, runs ``python -m pytest <selection> -x -q
   -p no:cacheprovider -m "not slow"`` with cwd and PYTHONPATH = the copy (no bytecode is written, so a
   restored file is never shadowed by a stale .pyc), then restores the file byte for byte.

A mutant is *caught* when pytest reports a failing test or a collection error, *survived* when the selection
passes, *timeout* past ``timeout`` seconds (its process group is killed), *error* when the run says nothing
about the mutant (missing test files, failing baseline, no test selected, pytest usage/internal error) and
*stale* when it could not be planted. The catch rate is caught / (caught + survived).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Sequence

from tools import mutants as mutants_lib
from tools.mutants import CANARY, CANARY_MARKER, Mutant

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("algoperf", "models", "parallel", "rl", "scripts", "tools", "training")
PYTEST_FLAGS = ("-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-rfE", "--tb=short")
STATUSES = ("caught", "survived", "timeout", "error", "stale")


@dataclasses.dataclass(frozen=True)
class MutationCheckConfig:
    """What to plant and how to run it.

    only: Comma-separated mutant names to run (default: every mutant); the canary always runs first.
    out: Write the configuration, the baseline, every mutant's result, the catch rate and the survivors as JSON here.
    timeout: Seconds allowed to one pytest run (a mutant's or a baseline's) before it is killed.
    baseline: Run each selection on the unmutated copy first, so a selection that already fails is an error,
      not a catch.
    source: The checkout to copy and mutate (default: this repository; it is never written to).
    python: Interpreter that runs pytest (default: SOURCE/.venv/bin/python, else this interpreter).
    keep_copy: Keep the temporary copy afterwards (its path is printed and recorded).
    list_mutants: Only print the mutants and whether each still applies to the source checkout.
    """
    only: str = ""
    out: str = ""
    timeout: float = 300.0
    baseline: bool = True
    source: str = ""
    python: str = ""
    keep_copy: bool = False
    list_mutants: bool = False

    def __post_init__(self):
        if not self.timeout > 0:
            raise ValueError(f"timeout={self.timeout!r} must be > 0 (seconds)")
        select(mutants_lib.MUTANTS, self.only)  # unknown names fail here, before any work
        if self.source and not (pathlib.Path(self.source).expanduser() / ".git").exists():
            raise ValueError(f"source={self.source!r} is not a git checkout (no .git)")
        if self.python and not os.access(pathlib.Path(self.python).expanduser(), os.X_OK):
            raise ValueError(f"python={self.python!r} is not an executable")
        if self.out:
            from training.run import require_output_file

            require_output_file("out", self.out)


# ------------------------------------------------------------------------------------ pure pieces
def select(mutants: Sequence[Mutant], only: str) -> list[Mutant]:
    """The mutants named in ``only`` (comma-separated; empty: all), the canary first; ValueError for an
    unknown name or a table with duplicate names."""
    by_name = {m.name: m for m in mutants}
    if len(by_name) != len(mutants):
        dup = sorted({m.name for m in mutants if sum(n.name == m.name for n in mutants) > 1})
        raise ValueError(f"the mutant table repeats names {dup}")
    if CANARY not in by_name:
        raise ValueError(f"the mutant table has no canary {CANARY!r}")
    names = [n.strip() for n in only.split(",") if n.strip()] if only else [m.name for m in mutants]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"only={only!r}: unknown mutant(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    ordered = [CANARY] + [n for n in dict.fromkeys(names) if n != CANARY]
    return [by_name[n] for n in ordered]


def module_of(path: str) -> str:
    """``parallel/moe/routing.py`` -> ``parallel.moe.routing``."""
    return path.removesuffix(".py").replace("/", ".")


def staleness(mutant: Mutant, root: pathlib.Path) -> str | None:
    """Why ``mutant`` cannot be planted under ``root`` (None when its ``old`` occurs exactly once)."""
    path = root / mutant.file
    if mutant.old == mutant.new:
        return "old and new are the same text"
    if not path.is_file():
        return f"{mutant.file} does not exist"
    count = path.read_text().count(mutant.old)
    if count != 1:
        return f"`old` occurs {count} times in {mutant.file} (must be exactly once)"
    return None


def missing_tests(tests: Iterable[str], root: pathlib.Path) -> list[str]:
    """The test files of a selection (paths or node ids) that do not exist under ``root``."""
    return [t for t in tests if not (root / t.split("::")[0]).exists()]


def pytest_command(python: str, tests: Sequence[str], k: str = "") -> list[str]:
    return [python, "-m", "pytest", *tests, *PYTEST_FLAGS, *(["-k", k] if k else [])]


_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$")


def summary_lines(output: str) -> list[tuple[str, str, str]]:
    """(kind, test, message) of pytest's short summary lines (``FAILED x::y - msg``, ``ERROR x - msg``)."""
    out = []
    for line in output.splitlines():
        m = _SUMMARY.match(line.strip())
        if m:
            out.append((m.group(1), m.group(2), (m.group(3) or "").strip()))
    return out


def _first_error(output: str) -> str:
    """The first ``E   ...`` line of pytest's tracebacks (the failing assertion), if any."""
    return next((line[1:].strip() for line in output.splitlines() if line.startswith("E ") and line[1:].strip()), "")


def classify(returncode: int | None, output: str, timed_out: bool) -> tuple[str, list[str], str]:
    """(status, failing tests, detail) of one pytest run on a mutant (see the module doc for statuses).

    Exit codes: 0 passed, 1 tests failed, 2 interrupted (a collection error: the mutant broke an import),
    3 internal error, 4 usage error, 5 no tests collected."""
    lines = summary_lines(output)
    failed = [test for _, test, _ in lines]
    first = next((f"{kind} {test}: {msg or _first_error(output)}" for kind, test, msg in lines), "")
    if timed_out:
        return "timeout", failed, "killed after the time limit"
    if returncode == 0:
        return "survived", [], ""
    if returncode in (1, 2) and (lines or returncode == 1):
        return "caught", failed, first[:300]
    tail = " | ".join(line for line in output.strip().splitlines()[-3:])
    return "error", failed, f"pytest exit code {returncode}: {tail}"[:300]


@contextlib.contextmanager
def planted(mutant: Mutant, root: pathlib.Path):
    """``mutant`` written into ``root`` for the duration of the block; the file is restored byte for byte."""
    path = root / mutant.file
    original = path.read_bytes()
    text = original.decode()
    if text.count(mutant.old) != 1:
        raise ValueError(f"mutant {mutant.name}: `old` does not occur exactly once in {path}")
    try:
        path.write_text(text.replace(mutant.old, mutant.new, 1))
        yield path
    finally:
        path.write_bytes(original)


# ------------------------------------------------------------------------------------ the copy
def git_files(source: pathlib.Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (what a commit of the working tree could hold)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source,
                         capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f})


def copy_checkout(source: pathlib.Path, dest: pathlib.Path) -> int:
    """Copies the working tree's files of ``source`` into ``dest``; returns how many were copied (tracked
    files deleted in the working tree are left out)."""
    n = 0
    for rel in git_files(source):
        src = source / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            n += 1
    return n


def git_state(source: pathlib.Path) -> dict:
    def git(*args):
        r = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else ""
    return {"head": git("rev-parse", "HEAD").strip() or None,
            "changed_files": [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]}


def pytest_env(copy: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never be shadowed by a mutant's .pyc
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "400"  # pytest's short summary lines keep their messages
    return env


def check_imports_copy(python: str, copy: pathlib.Path, env: dict) -> dict:
    """Where each package resolves from in the pytest environment; ValueError unless all are in the copy."""
    code = ("import importlib.util, json\n"
            f"specs = {{p: importlib.util.find_spec(p) for p in {list(PACKAGES)!r}}}\n"
            "print(json.dumps({p: list(s.submodule_search_locations) for p, s in specs.items()}))\n")
    r = subprocess.run([python, "-c", code], cwd=copy, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise ValueError(f"python={python!r} cannot locate the packages in the copy: {r.stderr.strip()[-300:]}")
    origins = json.loads(r.stdout.strip().splitlines()[-1])
    # a namespace package (training/) also lists the editable install's portion, after the copy's: the first
    # location is the one every module is looked up in first, and the copy holds every module of the source
    outside = {p: o for p, o in origins.items() if not o or not o[0].startswith(str(copy) + os.sep)}
    if outside:
        raise ValueError(f"the tests would import {outside} instead of the copy under {copy}: "
                         "PYTHONPATH does not take precedence over the installed packages")
    return origins


@dataclasses.dataclass
class PytestRun:
    returncode: int | None
    seconds: float
    output: str
    timed_out: bool


def run_pytest(command: list[str], cwd: pathlib.Path, env: dict, timeout: float) -> PytestRun:
    """One pytest process in its own process group (killed whole on timeout: tests may start children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return PytestRun(proc.returncode, time.perf_counter() - start, output, False)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return PytestRun(None, time.perf_counter() - start, output, True)


# ------------------------------------------------------------------------------------ the check
def _python(cfg: MutationCheckConfig, source: pathlib.Path) -> str:
    if cfg.python:
        return str(pathlib.Path(cfg.python).expanduser())
    venv = source / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def list_mutants(cfg: MutationCheckConfig) -> dict:
    source = pathlib.Path(cfg.source).expanduser().resolve() if cfg.source else REPO_ROOT
    rows = []
    for m in select(mutants_lib.MUTANTS, cfg.only):
        rows.append({"name": m.name, "module": module_of(m.file), "stale": staleness(m, source),
                     "missing_tests": missing_tests(m.tests, source), "tests": list(m.tests), "k": m.k,
                     "bug": m.bug})
    return {"source": str(source), "mutants": rows}


def format_list(record: dict) -> str:
    lines = [f"{'mutant':36} {'module':28} state"]
    for r in record["mutants"]:
        state = "STALE: " + r["stale"] if r["stale"] else "ok"
        if r["missing_tests"]:
            state += f" (missing tests: {', '.join(r['missing_tests'])})"
        lines.append(f"{r['name']:36} {r['module']:28} {state}")
    return "\n".join(lines)


def run(cfg: MutationCheckConfig, log=print) -> dict:
    """Runs the mutation check (see the module doc) and returns its record."""
    t0 = time.perf_counter()
    source = pathlib.Path(cfg.source).expanduser().resolve() if cfg.source else REPO_ROOT
    python = _python(cfg, source)
    chosen = select(mutants_lib.MUTANTS, cfg.only)
    copy = pathlib.Path(tempfile.mkdtemp(prefix="mutation_check_"))
    try:
        n_files = copy_checkout(source, copy)
        env = pytest_env(copy)
        log(f"copied {n_files} files of {source} to {copy}")
        origins = check_imports_copy(python, copy, env)
        record = {
            "config": {**dataclasses.asdict(cfg), "source": str(source), "python": python, "copy": str(copy),
                       "files_copied": n_files, "pytest_flags": list(PYTEST_FLAGS), "git": git_state(source),
                       "package_origins": origins},
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "load_average": list(os.getloadavg())},
        }
        rows: dict[str, dict] = {}
        runnable: list[Mutant] = []
        for m in chosen:
            row = {"name": m.name, "module": module_of(m.file), "file": m.file, "tests": list(m.tests), "k": m.k,
                   "bug": m.bug, "status": None, "failed": [], "seconds": 0.0, "detail": "",
                   "missing_tests": missing_tests(m.tests, copy), "partial": None}
            reason = staleness(m, copy)
            if reason:
                row.update(status="stale", detail=reason)
                log(f"STALE {m.name}: {reason}")
            else:
                runnable.append(m)
            rows[m.name] = row
        if rows[CANARY]["status"] == "stale":
            raise ValueError(f"the canary {CANARY!r} is stale ({rows[CANARY]['detail']}): update tools/mutants.py")

        def selection(m: Mutant) -> tuple[tuple[str, ...], str]:
            present = tuple(t for t in m.tests if t not in rows[m.name]["missing_tests"])
            return present, m.k

        baseline: dict[tuple, dict] = {}
        if cfg.baseline:
            for sel in dict.fromkeys(selection(m) for m in runnable if selection(m)[0]):
                r = run_pytest(pytest_command(python, *sel), copy, env, cfg.timeout)
                status, failed, detail = classify(r.returncode, r.output, r.timed_out)
                ok = status == "survived"
                baseline[sel] = {"tests": list(sel[0]), "k": sel[1], "ok": ok, "seconds": round(r.seconds, 1),
                                 "failed": failed, "detail": "" if ok else (detail or status)}
                log(f"baseline {'ok  ' if ok else 'FAIL'} {r.seconds:6.1f}s  {' '.join(sel[0])}"
                    + (f" -k '{sel[1]}'" if sel[1] else "") + ("" if ok else f"  ({baseline[sel]['detail']})"))
        record["baseline"] = list(baseline.values())

        for m in runnable:
            row = rows[m.name]
            sel = selection(m)
            if not sel[0]:
                row.update(status="error", detail=f"missing test file(s): {', '.join(row['missing_tests'])}")
            elif sel in baseline and not baseline[sel]["ok"]:
                row.update(status="error", detail=f"the unmutated selection fails: {baseline[sel]['detail']}")
            else:
                with planted(m, copy):
                    r = run_pytest(pytest_command(python, *sel), copy, env, cfg.timeout)
                status, failed, detail = classify(r.returncode, r.output, r.timed_out)
                row.update(failed=failed, seconds=round(r.seconds, 1), detail=detail)
                if row["missing_tests"]:
                    row.update(status="error", partial=status,
                               detail=f"missing test file(s): {', '.join(row['missing_tests'])}; the rest of the "
                                      f"selection: {status}" + (f" ({detail})" if detail else ""))
                else:
                    row["status"] = status
                if m.name == CANARY and (status != "caught" or CANARY_MARKER not in r.output):
                    raise ValueError(f"the canary survived ({status}; {detail or 'no failure'}): the tests did not "
                                     f"import the mutated copy under {copy}, so no result would mean anything")
            log(f"{row['status']:8} {row['seconds']:6.1f}s  {m.name}"
                + (f"  [{', '.join(row['failed'][:2])}]" if row["failed"] else "")
                + (f"  {row['detail']}" if row["status"] in ("error", "stale") else ""))

        results = [rows[m.name] for m in chosen]
        planted_rows = [r for r in results if r["name"] != CANARY]
        counts = {s: sum(r["status"] == s for r in planted_rows) for s in STATUSES}
        scored = counts["caught"] + counts["survived"]
        record.update(
            results=results, counts=counts, planted=len(planted_rows),
            catch_rate=(counts["caught"] / scored) if scored else None,
            survivors=[r["name"] for r in planted_rows if r["status"] == "survived"],
            stale=[r["name"] for r in results if r["status"] == "stale"],
            errors=[r["name"] for r in planted_rows if r["status"] == "error"],
            timeouts=[r["name"] for r in planted_rows if r["status"] == "timeout"],
            canary=rows[CANARY]["status"], wall_s=round(time.perf_counter() - t0, 1))
        return record
    finally:
        if cfg.keep_copy:
            log(f"kept the copy at {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


def format_table(record: dict) -> str:
    """The per-mutant table, then the counts, the catch rate, survivors, stale mutants and errors."""
    head = f"| {'mutant':36} | {'module':28} | {'result':8} | tests that failed | seconds |"
    lines = [head, "|" + "---|" * 5]
    for r in record["results"]:
        result = r["status"].upper() if r["status"] in ("stale", "error", "timeout") else r["status"]
        if r["partial"]:
            result += f" (rest: {r['partial']})"
        failed = ", ".join(f.removeprefix("tests/") for f in r["failed"][:2]) or "-"
        lines.append(f"| {r['name']:36} | {r['module']:28} | {result:8} | {failed} | {r['seconds']:.1f} |")
    c = record["counts"]
    rate = record["catch_rate"]
    lines += ["", f"{record['planted']} mutants (canary {record['canary']}): "
              + ", ".join(f"{v} {k}" for k, v in c.items()),
              "catch rate (caught / (caught + survived)): " + (f"{rate:.1%}" if rate is not None else "n/a"),
              f"wall time: {record['wall_s']:.0f} s"]
    by_name = {r["name"]: r for r in record["results"]}
    for title, key in (("SURVIVED", "survivors"), ("STALE", "stale"), ("ERROR", "errors"), ("TIMEOUT", "timeouts")):
        if record[key]:
            lines += ["", f"{title}:"] + [f"  {n}: {by_name[n]['bug'] if key == 'survivors' else by_name[n]['detail']}"
                                           for n in record[key]]
    return "\n".join(lines)


def report(cfg: MutationCheckConfig) -> dict:
    """The command line's body: list or run, print the table, write ``cfg.out``; fails (ValueError, exit 1)
    when a mutant is stale, after the table and the JSON are out."""
    if cfg.list_mutants:
        record = list_mutants(cfg)
        print(format_list(record))
        stale = [r["name"] for r in record["mutants"] if r["stale"]]
    else:
        record = run(cfg)
        print("\n" + format_table(record))
        stale = record["stale"]
    if cfg.out:
        from training import run as run_lib

        command = run_lib.command_line("tools.mutation_check", cfg, skip=())
        run_lib.write_json_atomic(pathlib.Path(cfg.out), {"provenance": run_lib.provenance(command), **record})
        print(f"\nwrote {cfg.out}")
    if stale:
        raise ValueError(f"{len(stale)} mutant(s) are STALE, their `old` text no longer occurs exactly once: "
                         f"{', '.join(stale)}; rewrite them in tools/mutants.py against the current code")
    return record
