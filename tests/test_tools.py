"""tools/ (mutation check, device checks) checks the project from a checkout: it is not installed, and no
installed package imports it (the layers below know nothing of the tools above them)."""
import ast
import fnmatch
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
INSTALLED = ("algoperf", "models", "parallel", "rl", "scripts", "training")


def _selected(name: str, find: dict) -> bool:
    """Whether pyproject's ``[tool.setuptools.packages.find]`` picks package ``name`` (setuptools matches the
    dotted names against the include and exclude patterns with fnmatch)."""
    def matches(patterns):
        return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
    return matches(find.get("include", ["*"])) and not matches(find.get("exclude", []))


def test_pyproject_installs_the_library_but_not_tools():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for name in INSTALLED + ("training.benchmarks", "rl.jssp"):
        assert _selected(name, find), name
    for name in ("tools", "tools.mutation", "tests"):
        assert not _selected(name, find), name
    assert not _selected("tools", {"include": ["*"], "exclude": ["tools*"]})  # the rule can fail
    assert _selected("tools", {"include": ["t*"]})


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_installed_module_imports_tools():
    offenders = [str(p.relative_to(ROOT)) for pkg in INSTALLED for p in sorted((ROOT / pkg).rglob("*.py"))
                 if "tools" in _imported_roots(p)]
    assert not offenders, offenders


def test_import_scan_sees_both_forms(tmp_path):
    """The scan above can fail: it finds ``import tools.x`` and ``from tools import x``, not a relative import."""
    for text, found in (("import tools.mutation\n", True), ("from tools import mutants\n", True),
                        ("from .tools import x\n", False), ("import toolsy\n", False)):
        p = tmp_path / "m.py"
        p.write_text(text)
        assert ("tools" in _imported_roots(p)) is found, text
