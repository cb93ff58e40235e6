"""tools/mutation.py, the mutation check's harness: the table is well formed, mutants are planted and
restored byte for byte in a copy (never the source), stale snippets and missing test files are reported,
pytest outcomes are classified. No pytest subprocess and no JAX: the real runs are tools/mutation_check.py."""
import pathlib
import re
import subprocess

import pytest

from tools import mutants as mutants_lib
from tools import mutation
from tools.mutants import CANARY, Mutant

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_table_is_well_formed():
    names = [m.name for m in mutants_lib.MUTANTS]
    assert len(names) == len(set(names)) and names[0] == CANARY
    assert len(names) >= 30
    for m in mutants_lib.MUTANTS:
        assert re.fullmatch(r"[a-z0-9_A-Z]+", m.name), m.name
        assert m.file.endswith(".py") and (ROOT / m.file).parent.is_dir(), m.name
        assert m.old and m.old != m.new, m.name
        assert m.tests and all(t.startswith("tests/test_") for t in m.tests), m.name
        assert m.bug, m.name
    assert mutation.select(mutants_lib.MUTANTS, "")[0].name == CANARY


def test_select_puts_the_canary_first_and_names_unknown_mutants():
    table = (Mutant(CANARY, "a.py", "x", "y", ("tests/test_a.py",), "c"),
             Mutant("one", "a.py", "p", "q", ("tests/test_a.py",), "b1"),
             Mutant("two", "a.py", "r", "s", ("tests/test_a.py",), "b2"))
    assert [m.name for m in mutation.select(table, "two, one,two")] == [CANARY, "two", "one"]
    assert [m.name for m in mutation.select(table, "")] == [CANARY, "one", "two"]
    with pytest.raises(ValueError, match=r"only='one,three': unknown mutant\(s\) three; known: "):
        mutation.select(table, "one,three")
    with pytest.raises(ValueError, match="repeats names"):
        mutation.select(table + table[1:2], "")
    with pytest.raises(ValueError, match="timeout=0"):
        mutation.MutationCheckConfig(timeout=0)
    with pytest.raises(ValueError, match="only='nonesuch'"):
        mutation.MutationCheckConfig(only="nonesuch")


def test_staleness_and_missing_tests(tmp_path):
    (tmp_path / "m.py").write_text("a = 1\nb = 2\nb = 2\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text("")
    mk = lambda old: Mutant("x", "m.py", old, "z = 0\n", ("tests/test_m.py",), "")  # noqa: E731
    assert mutation.staleness(mk("a = 1\n"), tmp_path) is None
    assert "occurs 2 times" in mutation.staleness(mk("b = 2\n"), tmp_path)
    assert "occurs 0 times" in mutation.staleness(mk("c = 3\n"), tmp_path)
    assert "does not exist" in mutation.staleness(mk("a")._replace(file="gone.py"), tmp_path)
    assert mutation.missing_tests(["tests/test_m.py::test_a", "tests/test_new.py", "tests/test_m.py"],
                                  tmp_path) == ["tests/test_new.py"]


def test_planted_restores_the_file_byte_for_byte_even_when_the_run_fails(tmp_path):
    path = tmp_path / "m.py"
    original = b"def f():\n    return 1  # \xc3\xa9\n"
    path.write_bytes(original)
    m = Mutant("x", "m.py", "return 1", "return 2", ("tests/test_m.py",), "")
    with pytest.raises(RuntimeError):
        with mutation.planted(m, tmp_path):
            assert "return 2" in path.read_text() and "return 1" not in path.read_text()
            raise RuntimeError("the test run blew up")
    assert path.read_bytes() == original
    with pytest.raises(ValueError, match="exactly once"):
        with mutation.planted(m._replace(old="return 3"), tmp_path):
            pass
    assert path.read_bytes() == original


def test_classify_pytest_outcomes():
    failed = ("..F\n=== short test summary info ===\n"
              "FAILED tests/test_q.py::test_a[x-1] - AssertionError: 1 != 2\n1 failed, 2 passed in 3.0s\n")
    assert mutation.classify(1, failed, False) == ("caught", ["tests/test_q.py::test_a[x-1]"],
                                                   "FAILED tests/test_q.py::test_a[x-1]: AssertionError: 1 != 2")
    collect = ("E   RuntimeError: boom\n=== short test summary info ===\n"
               "ERROR tests/test_q.py - RuntimeError: boom\n!!! Interrupted: 1 error during collection !!!\n")
    assert mutation.classify(2, collect, False)[:2] == ("caught", ["tests/test_q.py"])
    no_msg = "E   assert 3 == 4\nFAILED tests/test_q.py::test_b\n"
    assert mutation.classify(1, no_msg, False)[2] == "FAILED tests/test_q.py::test_b: assert 3 == 4"
    assert mutation.classify(0, "3 passed in 1.0s\n", False) == ("survived", [], "")
    assert mutation.classify(5, "no tests ran in 0.1s\n", False)[0] == "error"
    assert mutation.classify(4, "ERROR: file or directory not found: tests/x.py\n", False)[0] == "error"
    assert mutation.classify(None, "..", True)[0] == "timeout"
    cmd = mutation.pytest_command("py", ["tests/test_q.py"], "fp4 and not slow_one")
    assert cmd[:4] == ["py", "-m", "pytest", "tests/test_q.py"] and cmd[-2:] == ["-k", "fp4 and not slow_one"]
    assert {"-x", "-q", "no:cacheprovider", "not slow"} <= set(cmd)


def test_copy_takes_tracked_and_untracked_files_but_not_ignored_ones(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "pkg").mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=src, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (src / ".gitignore").write_text("ignored/\n")
    (src / "pkg" / "tracked.py").write_text("t = 1\n")
    git("add", ".")
    (src / "pkg" / "new.py").write_text("n = 1\n")
    (src / "ignored").mkdir()
    (src / "ignored" / "big.bin").write_text("x")
    assert mutation.copy_checkout(src, dest) == 3
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        ".gitignore", "pkg/new.py", "pkg/tracked.py"]
    state = mutation.git_state(src)
    assert set(state["changed_files"]) >= {"pkg/new.py", "pkg/tracked.py"}
