r"""train_lm against nanoGPT on one GPU, both sides in one run (issue 16's device check).

    python3 -m tools.device_check_lm --peer_dir=.peer --out=$OUT/device_check_lm.json

Parts, each one process under its own limit (training/benchmarks/lm_device.py), inside ``--budget_s``:
the GPT-2-small shape (12 layers, 12 heads, width 768, context 1024, batch 12, 300 steps) for us, nanoGPT
and us with a lazy checkpoint every 50 steps (the state is then about 1 GB); the baby GPT (6 layers, 6 heads,
width 384, context 256, batch 64, 2,000 steps, dropout 0.2) for us with GPT-2 dropout (residual and
attention: XLA attention), us with residual dropout only (cuDNN flash attention) and nanoGPT; last, if
time is left, the GPT-2-small shape with XLA attention (what cuDNN's kernel buys). The JSON is rewritten
after every part. nanoGPT's pinned copy must be at ``--peer_dir`` (../shared/peers/nanogpt/README.md).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

from absl import app, flags

from scripts import common
from training.benchmarks import lm_device as dev
from training.run import machine_info, write_json_atomic

PEER = flags.DEFINE_string("peer_dir", ".peer", "nanoGPT's pinned copy (train.py, data/shakespeare_char/).")
OUT = flags.DEFINE_string("out", "device_check_lm.json", "Output JSON (rewritten after every part).")
PARTS = flags.DEFINE_list("parts", [], "Parts to run (default: all, in order).")
BUDGET = flags.DEFINE_float("budget_s", 450.0, "Stop starting parts once this many seconds have passed.")
WORK = flags.DEFINE_string("work_dir", "/tmp/device_check_lm", "Scratch folder for the runs' workdirs.")
SMOKE = flags.DEFINE_bool("smoke", False, "Every part with 4 steps and ours with a tiny model (a check of the "
                           "pipeline, e.g. on CPU).")

GPT2_MLP, BABY_MLP = 2048, 1024  # SwiGLU widths with about GPT-2's 8 d^2 FFN parameters per block
# --smoke: a small model, so that the whole pipeline (commands, files, parsing) runs in seconds on a CPU
TINY = ["--num_layers=1", "--num_heads=2", "--d_model=64", "--mlp_dim=128", "--seq_len=32", "--batch_size=4",
        "--warmup_steps=1"]


def parts(peer: str, work: pathlib.Path, smoke: bool = False) -> list[dict]:
    py = sys.executable
    short = lambda steps, ev, eb, log: (4, 4, 1, 2) if smoke else (steps, ev, eb, log)  # noqa: E731

    def ours(name, shape, mlp, steps, ev, eb, log, limit, **extra):
        return dict(name=name, side="train_lm", shape=shape, limit=limit, cwd=None,
                    command=[py, "-m", "scripts.train_lm", f"--workdir={work / name}", "--overwrite"]
                    + dev.train_lm_args(shape, mlp, *short(steps, ev, eb, log),
                                        **extra) + (TINY if smoke else []))

    def nano(name, shape, dropout, iters, ev, ei, log, limit):
        return dict(name=name, side="nanogpt", shape=shape, limit=limit, cwd=peer,
                    command=[py, "train.py"] + dev.nanogpt_args(shape, dropout, *short(iters, ev, ei, log),
                                                                str(work / name)))
    g, b = dev.GPT2_SMALL, dev.BABY
    return [
        ours("ours_gpt2", g, GPT2_MLP, 300, 300, 5, 25, 110),
        nano("nanogpt_gpt2", g, 0.0, 300, 1000, 5, 25, 120),
        ours("ours_gpt2_ckpt50", g, GPT2_MLP, 300, 300, 5, 25, 120, checkpoint_every=50),
        ours("ours_baby_dropout", b, BABY_MLP, 2000, 500, 50, 100, 120, dropout=0.2),
        ours("ours_baby_resid_dropout", b, BABY_MLP, 2000, 500, 50, 100, 120, dropout=0.2, attention_dropout=0.0),
        nano("nanogpt_baby", b, 0.2, 2000, 500, 50, 100, 150),
        ours("ours_gpt2_xla_attention", g, GPT2_MLP, 300, 300, 5, 25, 90, attention="xla"),
    ]


def check_flags(names: list[str]) -> None:
    """One line and exit 1 (scripts.common.fail) for a bad flag, before any work."""
    unknown = sorted(set(PARTS.value) - set(names))
    if unknown:
        common.fail(f"--parts={','.join(PARTS.value)}: unknown part(s) {', '.join(unknown)}; "
                    f"allowed: {', '.join(names)}")
    if not BUDGET.value > 0:
        common.fail(f"--budget_s={BUDGET.value} must be > 0")
    if not (pathlib.Path(PEER.value) / "train.py").is_file() and not SMOKE.value:
        common.fail(f"--peer_dir={PEER.value!r} holds no train.py (copy ../shared/peers/nanogpt there)")


def main(argv):
    del argv
    work = pathlib.Path(WORK.value)
    check_flags([p["name"] for p in parts("", work)])
    import jax

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out_path = pathlib.Path(OUT.value)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    kind = jax.devices()[0].device_kind
    result = {"what": "train_lm vs nanoGPT, one GPU, same run (tools/device_check_lm.py)",
              "machine": machine_info(), "device_kind": kind, "parts": {}}
    start = time.perf_counter()
    with open(out_path.with_suffix(".log"), "w") as log:
        for part in parts(os.path.abspath(PEER.value), work, SMOKE.value):
            if PARTS.value and part["name"] not in PARTS.value:
                continue
            left = BUDGET.value - (time.perf_counter() - start)
            if left < 30:
                result["parts"][part["name"]] = {"skipped": f"budget of {BUDGET.value:.0f} s spent"}
                continue
            output, wall, code = dev.run_part(part["name"], part["command"], part["cwd"], min(part["limit"], left),
                                              log)
            entry = {"command": " ".join(part["command"]), "exit_code": code, "process_wall_s": wall,
                     "shape": part["shape"]}
            try:
                if part["side"] == "nanogpt":
                    entry.update(dev.parse_nanogpt(output, part["shape"], kind))
                else:
                    entry.update(dev.parse_train_lm(work / part["name"]))
            except (OSError, ValueError, KeyError) as e:
                entry["parse_error"] = repr(e)
                entry["output_tail"] = output[-3000:]
            if code != 0:
                entry["output_tail"] = output[-3000:]
            result["parts"][part["name"]] = entry
            write_json_atomic(out_path, result)
    print(f"\n{'part':28s} {'ms/step':>8s} {'tokens/s':>10s} {'MFU':>6s}  val loss by step")
    for name, e in result["parts"].items():
        ms, tok, mfu = e.get("ms_per_step"), e.get("tokens_per_sec"), e.get("mfu")
        val_loss = json.dumps(e.get("val_loss", e.get("skipped")))
        print(f"{name:28s} {ms or float('nan'):8.2f} {tok or float('nan'):10.0f} "
              f"{mfu if isinstance(mfu, float) else float('nan'):6.3f}  {val_loss}")
    write_json_atomic(out_path, result)


if __name__ == "__main__":
    app.run(main)
