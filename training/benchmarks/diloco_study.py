r"""Streaming DiLoCo's quality, measured so it can be believed: data-parallel, DiLoCo, Streaming DiLoCo in fp4 and
Streaming DiLoCo with error-feedback compression (int2, sign1, top-k) trained on the same tokens, three seeds
each, with each row's mean and spread of the validation loss beside its bytes between workers.

Each (row, seed) is one ``train_diloco`` run (:func:`training.diloco.train`, in this process) in its own
workdir, ``WORKDIR/runs/<row>/seed<seed>``: a run that finished with the settings it would run with now is
skipped, an interrupted one (killed, or stopped by SIGTERM, which checkpoints) resumes from its last
checkpoint bit for bit, so rerunning a killed study's command continues it. The table (JSON with provenance,
and markdown beside it) is rewritten after every run.

Rows (:data:`ROWS`): the settings each sets on top of :data:`TRAIN_DEFAULTS` and ``train_flags``. Streaming
rows use P = 2 fragments, overlap τ = 1 and α = 0.5 (:data:`STREAMING`); error-feedback rows are Streaming
rows whose outer gradients travel compressed with error feedback (parallel/diloco.py). Data-parallel is run
at M = 2; its validation loss does not depend on M (the same global batch and AdamW step on every device),
and its bytes between M worker groups are counted for each row's M (``training.diloco.dp_bytes_between``).

Per row: validation loss (mean, sample standard deviation, min and max over seeds), its ratio to DP's (ratio
of the seed means, and the mean and spread of the per-seed ratios, seed s against DP seed s), bytes one
device sends between the M workers and their reduction against DP between the same M groups, the same over
the whole mesh, and the goals of :data:`GOALS` evaluated on the finished rows.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shlex
import statistics
import time
from typing import Any

from absl import logging

from parallel import checkpoint as ckpt_lib
from training import config as config_lib
from training import lm
from training import run as run_lib
from training.benchmarks import diloco_link

# Every run's train_diloco settings unless train_flags say otherwise: a 1.28 M-parameter byte-level LM
# (4 blocks, width 160), 3,000 inner steps of 16 x 64 bytes (H = 100: 30 outer steps per fragment).
TRAIN_DEFAULTS: dict[str, Any] = dict(num_layers=4, num_heads=4, d_model=160, mlp_dim=432, batch_size=16, seq_len=64,
                                      steps=3000, eval_every=500, eval_batches=20, log_every=50, checkpoint_every=250)
WARMUP_FRACTION = 0.05  # warm-up steps / steps unless train_flags set warmup_steps: 150 of the study's 3000
STREAMING = dict(algo="streaming", fragments=2, overlap_tau=1, alpha=0.5)
TOPK_FRACTION = 0.1


def _stream(workers: int, h: int, precision: str, **more) -> dict:
    return dict(STREAMING, workers=workers, inner_steps=h, outer_precision=precision, **more)


def _ef(workers: int, precision: str, **more) -> dict:
    return _stream(workers, 100, precision, error_feedback=True, **more)


ROWS: dict[str, dict[str, Any]] = {
    "dp": dict(algo="dp", workers=2),
    "diloco_fp32_h100_m2": dict(algo="diloco", workers=2, inner_steps=100, outer_precision="fp32"),
    "diloco_fp32_h100_m4": dict(algo="diloco", workers=4, inner_steps=100, outer_precision="fp32"),
    "streaming_fp4_h30_m2": _stream(2, 30, "fp4"),
    "streaming_fp4_h100_m2": _stream(2, 100, "fp4"),
    "streaming_fp4_h30_m4": _stream(4, 30, "fp4"),
    "streaming_fp4_h100_m4": _stream(4, 100, "fp4"),
    "ef_int2_h100_m2": _ef(2, "int2"),
    "ef_sign1_h100_m2": _ef(2, "sign1"),
    "ef_topk_int2_h100_m2": _ef(2, "int2", topk_fraction=TOPK_FRACTION),
    "streaming_fp4_h100_m8": _stream(8, 100, "fp4"),
    "ef_int2_h100_m8": _ef(8, "int2"),
    "ef_sign1_h100_m8": _ef(8, "sign1"),
    "ef_topk_int2_h100_m8": _ef(8, "int2", topk_fraction=TOPK_FRACTION),
}
# The study's rows unless --rows says otherwise: the rows, M = 8 last (reported, not a goal).
DEFAULT_ROWS = tuple(r for r in ROWS if r != "diloco_fp32_h100_m4")
# Settings a row or the study sets (not allowed in train_flags).
OWNED = tuple(sorted({k for row in ROWS.values() for k in row} | {
    "workdir", "overwrite", "seed", "stop_after", "error_feedback_decay", "topk_fraction", "error_feedback",
    "multihost", "coordinator_address", "num_processes", "process_id"}))
# What the study checks (the goals): rows of `kind` at M in `workers`, mean of the seeds.
GOALS = (
    dict(name="streaming_fp4", kind="streaming fp4", workers=(2, 4), min_reduction=400.0, max_loss_ratio=1.01),
    dict(name="error_feedback", kind="error feedback", workers=(2,), min_reduction=1000.0, max_loss_ratio=1.01),
)


@dataclasses.dataclass(frozen=True)
class DiLoCoStudyConfig:
    """Settings of the study.

    workdir: Directory of the study: runs/<row>/seed<s>/ (each a train_diloco workdir) and, by default,
      study.json, study.md and study.png.
    out: Results JSON, rewritten after every run (the markdown table and the figure beside it, .md and
      .png); empty: WORKDIR/study.json.
    rows: Comma-separated rows (see training/benchmarks/diloco_study.py ROWS), 'default' (all but
      diloco_fp32_h100_m4) or 'all'.
    seeds: Comma-separated seeds, one run per row and seed (integers >= 0).
    train_flags: train_diloco flags for every run on top of the study's defaults (model, batch, steps,
      optimiser, evaluation), e.g. '--steps=600 --d_model=64'; the rows' settings are not allowed here.
    plan_only: Print the runs, their byte budgets and the rows already finished, and write the table without
      training (its bytes are exact: they depend only on the settings).
    """
    workdir: str = ""
    out: str = ""
    rows: str = "default"
    seeds: str = "0,1,2"
    train_flags: str = ""
    plan_only: bool = False

    def __post_init__(self):
        self.row_list  # noqa: B018 (validates)
        self.seed_list  # noqa: B018
        flat = self.train_flat
        for run in self.plan():
            self.train_config(run, flat)
        if self.out:
            run_lib.require_output_file("out", self.out)

    @property
    def row_list(self) -> list[str]:
        names = [r.strip() for r in self.rows.split(",") if r.strip()]
        if names == ["all"]:
            return list(ROWS)
        if names == ["default"]:
            return list(DEFAULT_ROWS)
        bad = [r for r in names if r not in ROWS]
        if not names or bad:
            raise ValueError(f"rows={self.rows!r}: unknown row(s) {bad}; allowed: default, all, or from "
                             f"{', '.join(ROWS)}")
        return list(dict.fromkeys(names))

    @property
    def seed_list(self) -> list[int]:
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            seeds = []
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(f"seeds={self.seeds!r} must be a comma-separated list of integers >= 0")
        return list(dict.fromkeys(seeds))

    @property
    def train_flat(self) -> dict[str, Any]:
        return diloco_link.parse_train_flags(self.train_flags, owned=OWNED, owned_hint="see rows and seeds")

    @property
    def out_path(self) -> pathlib.Path:
        return pathlib.Path(self.out or pathlib.Path(self.workdir) / "study.json").expanduser()

    def plan(self) -> list["RunSpec"]:
        """Every run, row by row (DP first: the other rows' ratios need it), seeds inside."""
        rows = sorted(self.row_list, key=lambda r: r != "dp")
        return [RunSpec(row, seed) for row in rows for seed in self.seed_list]

    def run_dir(self, run: "RunSpec") -> pathlib.Path:
        return pathlib.Path(self.workdir).expanduser() / "runs" / run.row / f"seed{run.seed}"

    def train_config(self, run: "RunSpec", flat: dict | None = None):
        """The run's TrainDiLoCoConfig (ValueError naming train_flags or the setting that is wrong)."""
        from training import diloco as diloco_exp

        flat = self.train_flat if flat is None else flat
        settings = {**TRAIN_DEFAULTS, **flat, **ROWS[run.row], "seed": run.seed, "workdir": str(self.run_dir(run))}
        settings.setdefault("warmup_steps", round(WARMUP_FRACTION * settings["steps"]))
        try:
            return config_lib.from_flat(diloco_exp.TrainDiLoCoConfig, settings)
        except ValueError as e:
            raise ValueError(f"the run {run.key} is not a valid train_diloco run: {e} "
                             f"(from train_flags={self.train_flags!r} and the row's settings)") from None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    row: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.row}/seed{self.seed}"


def command_line(cfg: DiLoCoStudyConfig) -> str:
    """The study's command for its provenance: the settings that differ from their defaults, shell-quoted."""
    given, defaults = config_lib.to_flat(cfg), config_lib.to_flat(DiLoCoStudyConfig())
    return " ".join(["python -m scripts.diloco_study"] + [
        shlex.quote(f"--{k}={v}") for k, v in given.items() if v != defaults[k]])


# ----------------------------------------------------------------------------- runs
def _flat_of_saved(cls: type, nested: dict) -> dict[str, Any]:
    """The flat settings recorded in a run's config.json (``dataclasses.asdict`` of its config); settings it
    does not record are left out."""
    missing = object()
    flat = {}
    for f in config_lib.flat_fields(cls):
        obj = nested
        for part in f.path:
            obj = obj.get(part, missing) if isinstance(obj, dict) else missing
        if obj is not missing:
            flat[f.name] = obj
    return flat


def finished_summary(cfg: DiLoCoStudyConfig, run: RunSpec, train_cfg) -> dict | None:
    """The run's summary if it finished with the settings it would run with now; None if it has not
    finished (never started, or interrupted: it resumes). ValueError if it was made with other settings."""
    from training import diloco as diloco_exp

    workdir = cfg.run_dir(run)
    if not (workdir / "config.json").exists():
        return None
    cls = type(train_cfg)
    saved = {**config_lib.to_flat(cls()), **config_lib.absent_means(cls),
             **_flat_of_saved(cls, json.loads((workdir / "config.json").read_text()))}
    given = config_lib.to_flat(lm.with_platform_model(train_cfg))  # as the run records it (dtype resolved)
    diffs = ckpt_lib.config_differences(saved, given,
                                        run_lib.RUN_RESUME_IGNORE + diloco_exp.RESUME_IGNORE)
    if diffs:
        listed = "; ".join(f"--{k}: it has {a!r}, the study gives {b!r}" for k, a, b in diffs)
        raise ValueError(f"the run {run.key} in {workdir} was made with other settings ({listed}): use another "
                         "--workdir for these settings, or remove that run's directory")
    path = workdir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    done = summary.get("step") == train_cfg.steps and not summary.get("preempted")
    return summary if done else None


def run_study(cfg: DiLoCoStudyConfig, command: str = "") -> dict:
    """Runs (or continues) the study; returns the record written to ``cfg.out_path`` (and .md, .png beside)."""
    from training import diloco as diloco_exp

    run_lib.require_workdir(cfg.workdir)
    plan = cfg.plan()
    configs = {run: cfg.train_config(run) for run in plan}
    budgets = {row: diloco_exp.byte_budget(configs[next(r for r in plan if r.row == row)]) for row in cfg.row_list}
    summaries: dict[RunSpec, dict] = {}
    for run in plan:
        summary = finished_summary(cfg, run, configs[run])
        if summary is not None:
            summaries[run] = summary
    todo = [run for run in plan if run not in summaries]
    logging.info("study: %d runs, %d finished, %d to run (%s)", len(plan), len(summaries), len(todo),
                 ", ".join(r.key for r in todo) or "none")
    if cfg.plan_only:
        record = build_record(cfg, configs, budgets, summaries, command, session={})
        write_outputs(cfg, record)
        print(format_plan(cfg, configs, budgets, summaries))
        return record
    session = {"runs": 0, "steps": 0, "wall_s": 0.0}
    record = build_record(cfg, configs, budgets, summaries, command, session)
    write_outputs(cfg, record)
    for i, run in enumerate(todo):
        started = time.monotonic()
        logging.info("study: run %d of %d to go: %s", i + 1, len(todo), run.key)
        summary = diloco_exp.train(configs[run])
        wall = time.monotonic() - started
        steps_done = summary["step"] - (summary.get("resumed_from") or 0)
        session.update(runs=session["runs"] + 1, steps=session["steps"] + steps_done, wall_s=session["wall_s"] + wall)
        if summary.get("preempted"):
            record = build_record(cfg, configs, budgets, summaries, command, session)
            write_outputs(cfg, record)
            logging.warning("study: stopped during %s at step %d (checkpointed); rerun the same command to go on",
                            run.key, summary["step"])
            record["stopped"] = run.key
            return record
        for key in ("bytes_sent", "mesh_bytes_sent", "payload_bytes"):  # the accounting the table uses
            if summary[key] != budgets[run.row][key]:
                raise AssertionError(f"{run.key}: {key} {summary[key]} differs from the byte budget "
                                     f"{budgets[run.row][key]}")
        summaries[run] = summary
        record = build_record(cfg, configs, budgets, summaries, command, session)
        write_outputs(cfg, record)
        left = len(todo) - i - 1
        if session["steps"]:
            per_step = session["wall_s"] / session["steps"]
            remaining = sum(configs[r].steps for r in todo[i + 1:]) * per_step
            logging.info("study: %s done (val loss %.4f, %.0f s); %d run(s) left, about %.1f h at this session's "
                         "%.3f s per step", run.key, summary.get("val_loss", math.nan), wall, left, remaining / 3600,
                         per_step)
    return record


# ----------------------------------------------------------------------------- the table
def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def row_kind(settings: dict) -> str:
    if settings["algo"] == "dp":
        return "data-parallel"
    if settings.get("error_feedback"):
        return "error feedback"
    if settings["algo"] == "streaming":
        return f"streaming {settings['outer_precision']}"
    return f"diloco {settings['outer_precision']}"


def build_record(cfg: DiLoCoStudyConfig, configs: dict, budgets: dict, summaries: dict, command: str,
                 session: dict) -> dict:
    """The study's JSON: provenance, settings, one entry per row (aggregated over its finished seeds), every
    finished run, and the goals evaluated on the finished rows."""
    from training import diloco as diloco_exp

    dp_runs = {r.seed: s for r, s in summaries.items() if r.row == "dp"}
    rows = []
    for name in cfg.row_list:
        runs = {r.seed: s for r, s in summaries.items() if r.row == name}
        first = configs[next(r for r in configs if r.row == name)]
        d = first.diloco
        budget = budgets[name]
        dp_budget = budgets.get("dp")
        row = {"row": name, "kind": row_kind(ROWS[name]), "M": d.workers,
               "H": d.inner_steps if d.algo != "dp" else 1, "P": d.num_fragments, "tau": d.tau,
               "outer": diloco_exp.outer_label(d) if d.algo != "dp" else "fp32 gradients",
               "steps": first.steps, "outer_steps": first.steps // d.inner_steps if d.algo != "dp" else None,
               "seeds": sorted(runs), "bytes_between_workers": budget["bytes_sent"],
               "peak_bytes_between_workers": budget["peak_bytes"], "mesh_bytes": budget["mesh_bytes_sent"]}
        if dp_budget is not None:
            dp_sent, dp_peak = diloco_exp.dp_bytes_between(dp_budget, d.workers)
            row["bytes_reduction_vs_dp"] = dp_sent / budget["bytes_sent"] if budget["bytes_sent"] else math.inf
            row["peak_reduction_vs_dp"] = dp_peak / budget["peak_bytes"] if budget["peak_bytes"] else math.inf
            row["mesh_bytes_reduction_vs_dp"] = dp_budget["mesh_bytes_sent"] / budget["mesh_bytes_sent"]
        if runs:
            row["val_loss"] = _spread([s["val_loss"] for s in runs.values()])
            row["wall_s"] = _spread([s["wall_time_s"] for s in runs.values()])
        if runs and dp_runs:
            row["val_loss_ratio_to_dp"] = (row["val_loss"]["mean"]
                                           / statistics.fmean(s["val_loss"] for s in dp_runs.values()))
            paired = [runs[s]["val_loss"] / dp_runs[s]["val_loss"] for s in sorted(runs) if s in dp_runs]
            if paired:
                row["paired_ratio_to_dp"] = _spread(paired)
        rows.append(row)
    record = {"provenance": run_lib.provenance(command), "study": dataclasses.asdict(cfg),
              "train_defaults": {**TRAIN_DEFAULTS, **cfg.train_flat},
              "num_params": _num_params(next(iter(configs.values()))),
              "rows": rows, "goals": evaluate_goals(rows, len(cfg.seed_list)),
              "runs": [{"row": r.row, "seed": r.seed, "val_loss": s.get("val_loss"),
                        "wall_time_s": s.get("wall_time_s"), "bytes_sent": s["bytes_sent"],
                        "resumed_from": s.get("resumed_from")}
                       for r, s in sorted(summaries.items(), key=lambda kv: (kv[0].row, kv[0].seed))],
              "planned_runs": len(configs), "finished_runs": len(summaries)}
    if session.get("steps"):
        record["session"] = {**session, "s_per_step": session["wall_s"] / session["steps"]}
    return record


def _num_params(train_cfg) -> int:
    return int(sum(math.prod(shape) for shapes in diloco_link.param_layout(train_cfg).values() for shape in shapes))


def evaluate_goals(rows: list[dict], seeds: int) -> list[dict]:
    """Each goal per M: its rows, and whether one of them, finished with every seed, meets both bounds."""
    out = []
    for goal in GOALS:
        for m in goal["workers"]:
            candidates = [r for r in rows if r["kind"] == goal["kind"] and r["M"] == m]
            checked = []
            for r in candidates:
                complete = len(r["seeds"]) == seeds and "val_loss_ratio_to_dp" in r
                checked.append({"row": r["row"], "complete": complete,
                                "bytes_reduction_vs_dp": r.get("bytes_reduction_vs_dp"),
                                "val_loss_ratio_to_dp": r.get("val_loss_ratio_to_dp"),
                                "meets": bool(complete and r["bytes_reduction_vs_dp"] >= goal["min_reduction"]
                                              and r["val_loss_ratio_to_dp"] <= goal["max_loss_ratio"])})
            out.append({"goal": goal["name"], "M": m, "min_reduction": goal["min_reduction"],
                        "max_loss_ratio": goal["max_loss_ratio"], "rows": checked,
                        "met": any(c["meets"] for c in checked),
                        "decided": bool(checked) and all(c["complete"] for c in checked)})
    return out


def _fmt_spread(s: dict | None, digits: int = 4) -> str:
    if not s:
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} (n={s['n']})"


def markdown(record: dict) -> str:
    prov = record["provenance"]
    lines = [f"# Streaming DiLoCo study ({record['finished_runs']} of {record['planned_runs']} runs finished)", "",
             f"Command: `{prov['command']}`  ", f"Commit {prov['commit']}, {prov['date']}, "
             f"{prov['machine'].get('cpu_count', '?')} CPUs. Model: {record['num_params'] or '?'} parameters; "
             f"every run: {', '.join(f'{k}={v}' for k, v in record['train_defaults'].items())}.", "",
             "Validation loss: mean ± sample standard deviation over seeds; ratio to DP: ratio of the seed means "
             "(paired: mean ± std of seed s / DP seed s). Bytes: one device's ring traffic between the M workers "
             "(DP: its gradient all-reduce across the same M groups), and over the whole mesh.", "",
             "| row | M | H | P | τ | outer gradients | val loss | ratio to DP | paired ratio | bytes between workers "
             "| reduction vs DP | peak reduction | whole-mesh reduction |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        ratio = r.get("val_loss_ratio_to_dp")
        lines.append(
            f"| {r['row']} | {r['M']} | {r['H']} | {r['P']} | {r['tau']} | {r['outer']} "
            f"| {_fmt_spread(r.get('val_loss'))} "
            f"| {'–' if ratio is None else f'{ratio:.4f}'} | {_fmt_spread(r.get('paired_ratio_to_dp'))} "
            f"| {r['bytes_between_workers']:.4g} | {r.get('bytes_reduction_vs_dp', math.nan):.1f}× "
            f"| {r.get('peak_reduction_vs_dp', math.nan):.1f}× "
            f"| {r.get('mesh_bytes_reduction_vs_dp', math.nan):.3f}× |")
    lines += ["", "Goals (mean of the seeds; a goal is decided once all its rows have every seed):", ""]
    for g in record["goals"]:
        rows = "; ".join(f"{c['row']}: {c['bytes_reduction_vs_dp']:.1f}×, ratio "
                         + ("–" if c["val_loss_ratio_to_dp"] is None else f"{c['val_loss_ratio_to_dp']:.4f}")
                         + ("" if c["complete"] else " (incomplete)") for c in g["rows"])
        verdict = ("met" if g["met"] else "not met") if g["decided"] or g["met"] else (
            "undecided" if g["rows"] else "no such row in this study")
        lines.append(f"- {g['goal']} at M={g['M']} (≥ {g['min_reduction']:g}× at ≤ {g['max_loss_ratio']:g}× DP's "
                     f"loss): **{verdict}** — {rows or 'no rows run'}")
    return "\n".join(lines) + "\n"


def write_outputs(cfg: DiLoCoStudyConfig, record: dict) -> None:
    out = cfg.out_path
    out.parent.mkdir(parents=True, exist_ok=True)
    run_lib.write_json_atomic(out, record)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(markdown(record))
    tmp.replace(out.with_suffix(".md"))
    if any(r.get("paired_ratio_to_dp") and r["row"] != "dp" for r in record["rows"]):
        _plot(out.with_suffix(".png"), record)


def _plot(path: pathlib.Path, record: dict) -> None:
    """Validation-loss ratio to DP (mean, min-max of the paired ratios) against the bytes reduction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in record["rows"]:
        paired, red = r.get("paired_ratio_to_dp"), r.get("bytes_reduction_vs_dp")
        if not paired or not red or r["row"] == "dp" or not math.isfinite(red):
            continue
        err = [[paired["mean"] - paired["min"]], [paired["max"] - paired["mean"]]]
        ax.errorbar([red], [paired["mean"]], yerr=err, fmt="o", capsize=3, label=f"{r['row']}")
    for goal in GOALS:
        ax.axvline(goal["min_reduction"], color="grey", lw=0.6, ls=":")
    ax.axhline(1.01, color="grey", lw=0.6, ls="--")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("bytes between workers: reduction vs data-parallel (×)")
    ax.set_ylabel("validation loss / DP's (per seed; mean, min–max)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_plan(cfg: DiLoCoStudyConfig, configs: dict, budgets: dict, summaries: dict) -> str:
    lines = [f"{len(configs)} runs ({len(cfg.row_list)} rows x {len(cfg.seed_list)} seeds), {len(summaries)} finished"]
    dp = budgets.get("dp")
    for name in cfg.row_list:
        c = configs[next(r for r in configs if r.row == name)]
        b = budgets[name]
        from training import diloco as diloco_exp

        red = ("" if dp is None
               else f"  {diloco_exp.dp_bytes_between(dp, c.diloco.workers)[0] / b['bytes_sent']:9.1f}x vs DP")
        done = sum(1 for r in summaries if r.row == name)
        lines.append(f"  {name:24s} M={c.diloco.workers} steps={c.steps} syncs={b['syncs']:5d} "
                     f"bytes between workers {b['bytes_sent']:12.4g}{red}  finished {done}/{len(cfg.seed_list)}")
    return "\n".join(lines)
