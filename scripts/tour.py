r"""A short tour of every component on the embedded default data, with a summary at the end.

    python -m scripts.tour                      # writes under ./runs/tour
    python -m scripts.tour --workdir=/tmp/tour --lm_steps=300

Each step is one library call (the LM experiment, a component's ``tour_step``) or, for the preemption
step, the ``train_lm`` command line in a subprocess; the summary prints one line per component and is
also written to WORKDIR/tour_summary.json.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags, logging

from scripts import common
from training import config as config_lib
from training import lm
from training import run as run_lib

flags.DEFINE_string("workdir", "runs/tour", "Where the tour's runs are written (emptied first).")
flags.DEFINE_integer("lm_steps", 500, "Training steps of the language-model step.", lower_bound=1)
FLAGS = flags.FLAGS


def step_train_lm(workdir: pathlib.Path, steps: int) -> dict:
    """Data-parallel byte-level LM on Tiny Shakespeare (training/lm.py)."""
    cfg = config_lib.from_flat(lm.TrainLMConfig, dict(
        workdir=str(workdir), steps=steps, eval_every=max(steps // 4, 1),
        checkpoint_every=max(steps // 2, 1), overwrite=True))
    summary = lm.train(cfg)
    return {"val_loss_nats_per_byte": round(summary["val_loss"], 4), "val_bits_per_byte": round(summary["val_bpb"], 4),
            "steps_per_sec": round(summary["steps_per_sec"], 2), "wall_time_s": round(summary["wall_time_s"], 1),
            "tokens_per_sec": round(summary["tokens_per_sec"] or 0), "mfu": summary["mfu"],
            "dtype": summary["dtype"], "attention": summary["attention"]}


def _logged_step(metrics_path: pathlib.Path) -> int:
    if not metrics_path.exists():
        return 0
    return max((r.get("step", 0) for r in run_lib.MetricsWriter.read(metrics_path)), default=0)


def step_preempt_and_resume(workdir: pathlib.Path) -> dict:
    """Orbax async checkpointing through the command line: SIGTERM mid-run, exit 0 with a checkpoint,
    restart, finish."""
    cmd = [sys.executable, "-m", "scripts.train_lm", f"--workdir={workdir}", "--steps=200", "--num_layers=2",
           "--d_model=64", "--mlp_dim=176", "--checkpoint_every=50", "--eval_every=100", "--log_every=10",
           "--overwrite"]
    shutil.rmtree(workdir, ignore_errors=True)  # a previous tour's metrics would fire the SIGTERM too early
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _logged_step(workdir / "metrics.jsonl") < 70 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"preempted run exited {proc.returncode}:\n{err[-2000:]}")
    interrupted = json.loads((workdir / "summary.json").read_text())
    resume = subprocess.run([c for c in cmd if c != "--overwrite"], capture_output=True, text=True, timeout=600)
    if resume.returncode != 0:
        raise RuntimeError(f"resumed run exited {resume.returncode}:\n{resume.stderr[-2000:]}")
    final = json.loads((workdir / "summary.json").read_text())
    return {"sigterm_at_step": interrupted["step"], "exit_code": proc.returncode,
            "resumed_from": final["resumed_from"], "finished_at": final["step"],
            "save_blocking_s_total": round(final["checkpoint_blocking_s"], 4)}


def _in_subprocess(module: str, workdir: pathlib.Path, host_devices: int, min_devices: int) -> dict:
    """Runs ``module.tour_step(workdir)`` in a fresh process with ``host_devices`` virtual CPU devices
    (the device count is fixed when JAX starts, so a step needing a mesh of CPU devices runs apart). On an
    accelerator with fewer than ``min_devices`` devices (one GPU) the step runs on the host CPU devices
    (``JAX_PLATFORMS=cpu``): its mesh of workers needs at least that many devices."""
    import os

    import jax

    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={host_devices}".strip()
    on_host = jax.default_backend() != "cpu" and jax.device_count() < min_devices
    if on_host:
        env["JAX_PLATFORMS"] = "cpu"
    code = (f"import json, pathlib; from {module} import tour_step; "
            f"print('TOUR_RESULT=' + json.dumps(tour_step(pathlib.Path({str(workdir)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{module}.tour_step failed:\n{out.stderr[-3000:]}")
    line = [out_line for out_line in out.stdout.splitlines() if out_line.startswith("TOUR_RESULT=")][-1]
    platform = f"cpu ({host_devices} host devices: {jax.device_count()} {jax.default_backend()} device(s) " \
               f"< {min_devices})" if on_host else jax.default_backend()
    return json.loads(line.split("=", 1)[1]) | {"platform": platform}


def _imported(module: str):
    import importlib

    return importlib.import_module(module)


def main(argv):
    if len(argv) > 1:
        common.fail(f"unexpected arguments {argv[1:]}: every setting is a --flag (see --help)")
    common.quiet_library_logs()
    try:
        root = run_lib.require_workdir(FLAGS.workdir)
    except ValueError as e:
        common.fail(config_lib.flag_message(str(e), ["workdir"]))
    steps = [
        ("LM (train_lm)", lambda: step_train_lm(root / "train_lm", FLAGS.lm_steps)),
        ("checkpoint (SIGTERM + resume)", lambda: step_preempt_and_resume(root / "preempt")),
        ("AlgoPerf (calibrated budget, NAdamW on ctr)",
         lambda: _imported("algoperf.suite").tour_step(root / "algoperf")),
        ("MoE layer vs dense and one-hot (2,048 tokens)",
         lambda: _imported("training.benchmarks.moe").tour_step(root / "moe")),
        ("Streaming DiLoCo vs DP (M=2, fp4)",
         lambda: _in_subprocess("training.diloco", root / "diloco", host_devices=8, min_devices=2)),
        ("mallocGame baselines, CP-SAT and mallocMuZero (6 held-out windows, one held-out whole program)",
         lambda: _imported("rl.malloc.evaluate").tour_step(root / "malloc")),
        ("job-shop (rules, agent, CP-SAT, agent + CP-SAT on ta01-ta02)",
         lambda: _imported("rl.jssp.evaluate").tour_step(root / "jssp")),
        ("job-shop self-labelling (3 steps from the shipped policy, 5 families)",
         lambda: _imported("rl.jssp.train").tour_step(root / "jssp_self_label")),
    ]
    results = run_steps(steps, root / "tour_summary.json")
    width = max(len(n) for n in results)
    print("\njaxsys tour summary")
    for name, figures in results.items():
        print(f"  {name:<{width}}  " + "  ".join(f"{k}={v}" for k, v in figures.items()))
    print(f"(details under {root})")
    failed = [n for n, r in results.items() if "error" in r]
    if failed:
        common.fail(f"tour: {len(failed)} of {len(results)} steps failed: {'; '.join(failed)} (errors above and "
                    f"in {root / 'tour_summary.json'})")


def run_steps(steps, summary_path: pathlib.Path) -> dict:
    """Runs every step even when one fails (its error is its record), rewriting the summary after each
    step, so a tour stopped part-way (a time limit) still leaves the finished steps' figures."""
    import traceback

    results = {}
    for name, run in steps:
        logging.info("tour: %s", name)
        start = time.perf_counter()
        try:
            figures = run()
        except Exception as e:  # noqa: BLE001 (the step's failure is reported; the other steps still run)
            logging.error("tour step %r failed:\n%s", name, traceback.format_exc())
            figures = {"error": f"{type(e).__name__}: {str(e).strip()[-1500:]}"}
        results[name] = {**figures, "tour_step_s": round(time.perf_counter() - start, 1)}
        run_lib.write_json_atomic(summary_path, {"platform": _platform(), **results})
    return results


def _platform() -> str:
    import jax

    return f"{jax.default_backend()}: {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}"


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
