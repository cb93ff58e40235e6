"""Every command of the README's "Using it" runs as written.

The commands are read from the README's bash blocks under "## Using it" (a line continued with a trailing
backslash is one command; `# ...` comments are dropped; `VAR=value` prefixes become the command's
environment). Each command runs from the repository root, with `runs/` moved to a temporary folder.

* Default run: every command is `python -m scripts.NAME` with a script that exists, and its flags are
  parsed by that script's own absl flags and turned into its config (unknown flags, wrong types and values
  the config refuses fail here), in one process per environment (so a command that needs 8 devices but
  does not ask for them fails its device check, as it would on a fresh machine). No training runs.
* `-m slow`: every command runs, in README order, with flags appended that make it tiny (`TINY` below:
  a few steps, a small instance subset, short time limits), and must exit 0 and write what it names
  (its `--out` file, its `--workdir`'s summary, its experiment or output folder).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from typing import NamedTuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEMS = ("Language model", "Checkpoints", "Mixture-of-Experts", "Streaming DiLoCo", "AlgoPerf", "Job-shop",
           "mallocGame")


class Command(NamedTuple):
    line: str                 # as the README writes it (continuations joined)
    section: str              # the bold heading of its "Using it" paragraph
    env: dict[str, str]       # VAR=value prefixes
    script: str               # scripts.NAME -> NAME
    args: list[str]

    def argv(self, runs: pathlib.Path, extra: list[str] = ()) -> list[str]:
        """The command's arguments with runs/ moved under ``runs``, then ``extra``."""
        moved = [re.sub(r"(?<=[=,])runs/", f"{runs}/", a) for a in self.args]
        return [sys.executable, "-m", f"scripts.{self.script}", *moved, *extra]


def readme_commands() -> list[Command]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Using it\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Using it' section followed by another '## ' section"
    commands, heading = [], ""
    for part in re.split(r"(```bash\n.*?```)", section.group(1), flags=re.S):
        if not part.startswith("```bash"):
            found = re.findall(r"^\*\*([^*]+)\*\*", part, re.M)
            heading = found[-1] if found else heading
            continue
        body = part[len("```bash\n"):-3].replace("\\\n", " ")
        variables: dict[str, str] = {}
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # a shell variable
                name, _, value = words[0].partition("=")
                variables[name] = value
                continue
            words = [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], w) for w in words]
            env = {}
            while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            assert words[:3] == ["python", "-m", words[2]] and words[2].startswith("scripts."), \
                f"README command {line!r} is not 'python -m scripts.NAME ...'"
            shown = " ".join(f"{k}={v}" for k, v in env.items()) + (" " if env else "") + shlex.join(words)
            commands.append(Command(shown, heading, env, words[2].removeprefix("scripts."),
                                    words[3:]))
    return commands


COMMANDS = readme_commands()


def test_using_it_covers_every_system_with_runnable_scripts():
    assert len(COMMANDS) >= 20, f"the README's Using it lost its commands: {len(COMMANDS)}"
    for system in SYSTEMS:
        assert any(c.section.startswith(system) for c in COMMANDS), f"no command under {system!r}"
    for c in COMMANDS:
        assert (ROOT / "scripts" / f"{c.script}.py").is_file(), c.line
        for arg in c.args:
            assert arg.startswith("--"), f"{c.line}: stray argument {arg!r} (every setting is a --flag)"


# The checker: in one process, each command's script is run as __main__ with scripts.common.main replaced
# by one that defines the script's flags, parses the command's arguments and builds its config (with the
# script's own preflight checks: devices, output paths), then stops before any work.
CHECKER = r'''
import contextlib, io, json, runpy, sys
from absl import flags
from scripts import common

def check_main(config_cls, run, *, preflight=None, async_collectives=False, extra_flags=None, dispatch=None):
    common.define_config_flags(config_cls)
    if extra_flags is not None:
        extra_flags()
    rest = common.parse_flags(sys.argv)
    if len(rest) > 1:
        common.fail(f"unexpected arguments {rest[1:]}")
    common.config_from_flags(config_cls, preflight=preflight)

common.main = check_main
builtin = set(flags.FLAGS)
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(argv[0], run_name="__main__")
        results.append(None)
    except SystemExit as e:
        results.append(err.getvalue().strip() or f"exit {e.code}")
    except Exception as e:
        results.append(f"{type(e).__name__}: {e}")
    for name in set(flags.FLAGS) - builtin:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
print("CHECKED " + json.dumps(results))
'''


def test_every_command_parses_and_builds_its_config(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()  # as the README's first command leaves it; runs/ is the commands' output root
    by_env: dict[str, list[Command]] = {}
    for c in COMMANDS:
        by_env.setdefault(json.dumps(c.env, sort_keys=True), []).append(c)
    failures = []
    for env_key, commands in by_env.items():
        env = {**os.environ, **json.loads(env_key), "JAX_PLATFORMS": "cpu"}
        if "XLA_FLAGS" not in json.loads(env_key):
            env.pop("XLA_FLAGS", None)  # the test session's 8 virtual devices are not a fresh shell's
        argvs = [[f"scripts.{c.script}", *c.argv(runs)[3:]] for c in commands]
        proc = subprocess.run([sys.executable, "-c", CHECKER, json.dumps(argvs)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("CHECKED ")), None)
        assert line, f"the checker failed: {proc.stderr[-3000:]}"
        for c, error in zip(commands, json.loads(line[len("CHECKED "):])):
            if error is not None:
                failures.append(f"{c.line}\n    -> {error}")
    assert not failures, "README commands refused:\n" + "\n".join(failures)


# --------------------------------------------------------------------------- the commands themselves (slow)

def _tiny(c: Command, tmp: pathlib.Path) -> list[str]:
    """Flags appended to make ``c`` tiny (absl takes the last occurrence of a flag)."""
    given = {a.split("=", 1)[0] for a in c.args}
    if c.script == "train_lm":
        return ["--steps=2", "--warmup_steps=1", "--eval_every=2", "--eval_batches=1", "--log_every=1",
                "--batch_size=8", "--seq_len=32"]
    if c.script == "train_diloco":
        if "--compare" in given:
            return []
        return ["--steps=8", "--inner_steps=4", "--warmup_steps=1", "--eval_every=8", "--eval_batches=1",
                "--log_every=1", "--batch_size=8", "--seq_len=32"]
    if c.script == "bench_diloco":
        return ["--steps=1", "--repeats=1", "--outer_precisions=fp4", "--batch_size=8", "--seq_len=32"]
    if c.script == "bench_checkpoint":
        return ["--sizes_mb=1", "--repeats=1", "--loop_steps=0"]
    if c.script == "bench_moe":
        return ["--tokens=128", "--d_model=32", "--repeats=1", "--models=mixtral"]
    if c.script == "run_algoperf":
        return ["--num_tuning_trials=1", "--num_studies=1"]  # one trial within the workload's budget (an evaluation)
    if c.script == "algoperf_suite":
        return ["--workloads=mnist1d", "--baselines=nadamw", "--num_studies=1", "--num_tuning_trials=1",
                "--noself_tuning"]
    if c.script == "eval_jssp":
        extra = [] if "--instances" in given else ["--sizes=15x15"]
        if "--samples" in given:
            extra.append("--samples=2")
        if "--time_limit" in given or "cpsat" in " ".join(c.args):
            extra.append("--time_limit=2")
        return extra
    if c.script == "train_jssp":
        return ["--steps=1", "--eval_every=1", "--eval_instances=1", "--batch=1", "--beta=2"]
    if c.script == "bench_jssp":
        return ["--sizes=6x6", "--batches=1", "--repeats=1", "--python_instances=1"]
    if c.script == "eval_malloc":
        subset = tmp / "malloc_instances"
        if not subset.exists():
            subset.mkdir()
            for path in sorted((ROOT / "rl/malloc/instances/test").glob("*.json"))[:2]:
                shutil.copy(path, subset / path.name)
        return [f"--instances={subset}", "--time_limit=1", "--simulations=2"]
    if c.script == "check_malloc_moves":
        return ["--count=3"]
    if c.script == "bench_malloc":
        return ["--repeats=1", "--batch=4", "--python_episodes=1", "--simulations=2", "--search_batch=2"]
    if c.script == "score_algoperf":
        return []
    raise AssertionError(f"no tiny setting for {c.script}: add one to TINY ({c.line})")


def _wrote(c: Command, argv: list[str]) -> list[pathlib.Path]:
    """What the command must leave behind."""
    values = dict(a[2:].split("=", 1) for a in argv[3:] if a.startswith("--") and "=" in a)
    if "out" in values:
        return [pathlib.Path(values["out"])]
    if "compare" in values:
        return [pathlib.Path(values["workdir"]) / "comparison.json"]
    if "workdir" in values:
        return [pathlib.Path(values["workdir"]) / "summary.json"]
    if "out_dir" in values:
        return [pathlib.Path(values["out_dir"]) / "scores.json"]
    return [pathlib.Path(values["experiment_dir"])]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every command, in README order, sharing one runs/ (as a user following the README would)."""
    tmp = tmp_path_factory.mktemp("readme_commands")
    runs = tmp / "runs"
    outcomes = []
    for c in COMMANDS:
        argv = c.argv(runs, _tiny(c, tmp))
        env = {**os.environ, **c.env, "JAX_PLATFORMS": "cpu"}
        if "XLA_FLAGS" not in c.env:
            env.pop("XLA_FLAGS", None)
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        outcomes.append((argv, proc))
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"{i}-{c.script}" for i, c in enumerate(COMMANDS)])
def test_readme_command_runs(ran, index):
    c, (argv, proc) = COMMANDS[index], ran[index]
    assert proc.returncode == 0, (f"{c.line}\n(run as: {shlex.join(argv[1:])})\nexit {proc.returncode}\n"
                                  f"{proc.stderr[-2000:]}")
    for path in _wrote(c, argv):
        assert path.exists(), f"{c.line}: exit 0 but {path} was not written"
