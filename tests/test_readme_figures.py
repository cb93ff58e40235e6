"""Every figure in README.md's Results tables is recomputed from its file in results/, with the README's rounding.

Issue "every README figure backed by a file": a table cell's numbers must equal the numbers its file gives,
formatted as the README shows them, so a figure edited by hand (or a result file replaced without the
README following) fails here. NumPy and JSON only (no JAX); reads about 6 MB of JSON, under a second.

How a cell is compared: its numbers are extracted in order (``numbers``: bold, units and words dropped;
numbers glued to letters, such as the 15 of "15x15", are not numbers) and must equal the list of expected
strings built from the file. Rows are found by a label fragment, so relabelling a row or dropping it fails
too. Sources per table: see each test.
"""
from __future__ import annotations

import collections
import json
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?!\w)(?!\.\d)")
MISSING = ("–", "-", "not run")


# --------------------------------------------------------------------------- README parsing

class Table:
    def __init__(self, lines: list[str]):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
        self.header = rows[0]
        self.rows = [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]

    def row(self, fragment: str) -> list[str]:
        """The one row whose first cell contains ``fragment``."""
        found = [r for r in self.rows if fragment in r[0]]
        assert len(found) == 1, f"{len(found)} rows of table {self.header} have {fragment!r} in their label"
        return found[0]


def results_tables() -> dict[str, list[Table]]:
    """``{### title: [tables in order]}`` of README.md's "## Results" section."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Results\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Results' section followed by another '## ' section"
    out = {}
    for chunk in re.split(r"^### ", section.group(1), flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        tables, current = [], []
        for line in body.splitlines() + [""]:
            if line.startswith("|"):
                current.append(line)
            elif current:
                tables.append(Table(current))
                current = []
        out[title.strip()] = tables
    return out


@pytest.fixture(scope="module")
def tables():
    return results_tables()


def section(tables, prefix: str) -> list[Table]:
    found = [v for k, v in tables.items() if k.startswith(prefix)]
    assert len(found) == 1, f"README Results has {len(found)} '### {prefix}...' subsections"
    return found[0]


def numbers(cell: str) -> list[str]:
    return [m.replace(",", "") for m in NUMBER.findall(cell.replace("**", "").replace("−", "-"))]


def check(cell: str, expected: list[str], what: str) -> None:
    assert numbers(cell) == expected, f"{what}: README cell {cell!r} shows {numbers(cell)}, its file gives {expected}"


def f(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # -1e-17 shows as 0.00


def pct(value: float, decimals: int = 0) -> str:
    return f(100 * value, decimals)


def readme_prose() -> str:
    """The README with its line breaks as spaces, for figures quoted in running text."""
    return " ".join((ROOT / "README.md").read_text().split())


def load(name: str):
    path = RESULTS / name
    assert path.is_file(), f"results/{name} (a README figure's source) is missing"
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- language model

def test_lm_table(tables):
    """results/lm_default.json (train_lm default run), results/lm_cpu_side_by_side.json (this code vs the code
    before issue 16, alternated) and results/nanogpt_cpu_reference.json."""
    lm, nano = load("lm_default.json"), load("nanogpt_cpu_reference.json")["figures"]
    sides = load("lm_cpu_side_by_side.json")
    table = section(tables, "Language model")[0]
    cfg, summary = lm["config"], lm["summary"]
    quality = table.row("validation loss")
    check(quality[0], [str(cfg["num_layers"]), str(cfg["num_heads"]), str(cfg["d_model"]), str(cfg["seq_len"]),
                       str(cfg["batch_size"]), str(cfg["steps"]), f(lm["num_params"] / 1e6, 2)], "LM configuration")
    check(quality[1], [f(summary["val_loss"], 3), f(summary["val_bpb"], 2)], "LM validation loss")
    check(quality[2], [f(nano["val_loss_final"], 4), "1.70", f(sides["before"]["val_loss"][0], 3), "16"],
          "LM references")
    speed = table.row("speed on")
    check(speed[0], [str(lm["machine"]["cpu_count"]), "16", str(len(sides["now"]["loop_steps_per_sec"]))], "LM cores")
    check(speed[1], [f(v, 1) for v in sides["now"]["loop_steps_per_sec"] + sides["before"]["loop_steps_per_sec"]],
          "LM speed")
    check(speed[2], [f(nano["ms_per_train_step"], 0), f(nano["wall_time_s"], 0)], "nanoGPT speed")
    assert lm["summary"]["step"] == cfg["steps"] and not lm["summary"]["preempted"]
    assert summary["val_loss"] == sides["now"]["val_loss"][0]  # the default run is the first of the side-by-side


def test_lm_gpu_table(tables):
    """results/device_check_lm_h200.json (tools/device_check_lm.sh on one H200, three calls)."""
    d = load("device_check_lm_h200.json")
    table = section(tables, "Language model")[1]
    g, b, c = d["gpt2_small"], d["baby_gpt_dropout_0.2"], d["gpt2_small_lazy_checkpoint_every_50"]
    row = table.row("GPT-2-small shape (")
    check(row[0], ["2"] + [str(g["shape"][k]) for k in ("num_layers", "num_heads", "d_model", "seq_len",
                                                         "batch_size")] + ["300"], "GPT-2-small configuration")
    check(row[1], [f(g["train_lm"]["ms_per_step"], 1), pct(g["train_lm"]["mfu"], 1),
                   f(g["train_lm_xla_attention_partial"]["ms_per_step"], 1)], "GPT-2-small, ours")
    check(row[2], [f(g["nanogpt"]["ms_per_step"], 1), pct(g["nanogpt"]["mfu"], 1)], "GPT-2-small, nanoGPT")
    check(row[3], ["1.3", "45", f(g["ratio_ms_ours_over_nanogpt"], 2), "3.8"], "GPT-2-small goal")
    row = table.row("baby GPT")
    check(row[0], [str(b["shape"][k]) for k in ("num_layers", "num_heads", "d_model", "seq_len", "batch_size")]
          + ["0.2", "2000", "2000"], "baby GPT configuration")
    ours, resid, nano = b["train_lm_gpt2_dropout"], b["train_lm_residual_dropout_only"], b["nanogpt"]
    check(row[1], [f(ours["ms_per_step"], 1), f(ours["val_loss"]["2000"], 4), f(resid["ms_per_step"], 1),
                   f(resid["val_loss"]["2000"], 4)], "baby GPT, ours")
    check(row[2], [f(nano["ms_per_step"], 1), f(nano["val_loss"]["2000"], 4)], "baby GPT, nanoGPT")
    check(row[3], [f(b["ratio_ms_ours_over_nanogpt"], 2), "4"], "baby GPT goal")
    row = table.row("lazy checkpoint every 50")
    check(row[1], [f(c["lazy_every_50"]["ms_per_step"], 1), f(c["no_checkpoint"]["ms_per_step"], 1),
                   pct(c["slowdown"], 1)], "checkpoint slowdown")
    check(row[0], ["2", "50", f(c["state_bytes"] / 1e9, 2)], "checkpoint configuration")


# --------------------------------------------------------------------------- checkpointing

def test_checkpoint_tables(tables):
    """results/bench_checkpoint.json: the save table and the training-loop table."""
    bench = load("bench_checkpoint.json")
    saves = {(s["state_mb"], s["mode"]): s for s in bench["saves"]}
    save_table, loop_table = section(tables, "Checkpointing")[:2]
    for label, mb in (("64 MiB", 64), ("256 MiB", 256), ("1 GiB", 1024)):
        row = save_table.row(label)
        lazy, plain, sync = saves[mb, "lazy"], saves[mb, "async"], saves[mb, "sync"]
        check(row[1], [f(1e3 * lazy["blocking_s"], 1), f(1e3 * plain["blocking_s"], 1)], f"{label} blocking")
        sync_time = f(1e3 * sync["blocking_s"], 0) if sync["blocking_s"] < 1 else f(sync["blocking_s"], 2)
        check(row[2], [pct(lazy["blocking_over_sync_save"], 2), pct(plain["blocking_over_sync_save"], 1), sync_time],
              f"{label} share of a sync save")
        check(row[3], [f(lazy["durable_s"], 2), f(sync["durable_s"], 2)], f"{label} time until durable")
        check(row[4], [f(lazy["extra_rss_mb"], 0), f(plain["extra_rss_mb"], 0)], f"{label} extra memory")
    loop = {(r["mode"], r["every"]): r for r in bench["training_loop"]}
    for every in (10, 50, 200):
        row = next(r for r in loop_table.rows if r[0] == str(every))
        check(row[1], [pct(loop["lazy", every]["slowdown"], 1)], f"K={every} lazy")
        check(row[2], [pct(loop["async", every]["slowdown"], 1)], f"K={every} async")


# --------------------------------------------------------------------------- MoE

MOE_MODELS = (("Mixtral", "mixtral"), ("Qwen2-MoE", "qwen2_moe"), ("Phi-3.5-MoE", "phi35_moe"))


def test_moe_cpu_table(tables):
    """results/bench_moe.json (CPU)."""
    bench = load("bench_moe.json")
    rows = {r["model"]: r for r in bench["rows"]}
    grouped = {r["model"]: r for r in bench["grouped_gemm"]}
    cpu = section(tables, "Sharded MoE")[0]
    for label, model in MOE_MODELS:
        row, r, g = cpu.row(label), rows[model], grouped[model]
        what = f"MoE CPU {model}"
        check(row[1], [str(r["experts"]), str(r["top_k"])], what)
        check(row[2], [str(r["hidden"])], what)
        check(row[3], [f(r["moe_over_dense"], 2)], what)
        check(row[4], [f(r["onehot_over_moe"], 2)], what)
        check(row[5], [f(g["blocked_over_dense"], 2), f(g["bucketed_over_dense"], 2),
                       f(g["per_expert_loop_over_dense"], 2)], what)


def test_moe_lm_vs_dense(tables):
    """results/lm_moe_vs_dense_300.json: the bullet "MoE LM vs dense LM ... validation loss **a** vs **b**"."""
    runs = load("lm_moe_vs_dense_300.json")
    text = (ROOT / "README.md").read_text()
    shown = re.search(r"MoE LM vs dense LM.*?validation loss \*\*([\d.]+)\*\* vs \*\*([\d.]+)\*\*", text, re.S)
    assert shown, "README's MoE section lost its 'MoE LM vs dense LM ... validation loss' bullet"
    expected = [f(runs["moe"]["summary"]["val_loss"], 3), f(runs["dense"]["summary"]["val_loss"], 3)]
    assert list(shown.groups()) == expected, f"MoE vs dense LM: README {shown.groups()}, file {expected}"
    assert runs["moe"]["config"]["moe"]["num_experts"] == 8 and runs["dense"]["config"]["moe"] is None


def ratio_range(num: float, den: float, num_half: float, den_half: float) -> tuple[float, float]:
    """Bounds of num/den when num and den are figures rounded to +-num_half, +-den_half."""
    return (num - num_half) / (den + den_half), (num + num_half) / (den - den_half)


def consistent(text: str, bounds: tuple[float, float], what: str) -> None:
    """Some ratio within ``bounds`` rounds to the README figure ``text`` (at the decimals it shows)."""
    half = 0.5 * 10.0 ** -len(text.partition(".")[2])
    lo, hi = bounds
    assert float(text) - half <= hi and float(text) + half >= lo, f"{what}: README {text} outside [{lo:.3f}, {hi:.3f}]"


def test_moe_h100_table(tables):
    """results/bench_moe_h100.json. Its full-layer and run-4 milliseconds are stored rounded, so a ratio the
    README shows must be one those rounded figures allow; run 2's ratios are stored exactly."""
    bench = load("bench_moe_h100.json")
    run1, run3 = bench["full_layer_ms"]["ragged_dot (run 1)"], bench["full_layer_ms"]["bucketed (run 3)"]
    run2, run4 = bench["grouped_gemm_run2_detail"], bench["grouped_gemm_only_ms"]["run 4"]
    gpu = section(tables, "Sharded MoE")[1]
    for label, model in MOE_MODELS:
        row, what = gpu.row(label), f"MoE H100 {model}"
        check(row[1], [f(run3[model]["dense_equivalent"], 2)], what + " dense ms")
        check(row[2], [f(run3[model]["moe_dropless"], 2)], what + " bucketed ms")
        check(row[3], [f(run1[model]["moe_dropless"], 1)], what + " ragged_dot ms")
        check(row[4], [f(run1[model]["onehot_capacity"], 1)], what + " one-hot ms")
        moe, dense = run3[model]["moe_dropless"], run3[model]["dense_equivalent"]
        (shown,) = numbers(row[5])
        consistent(shown, ratio_range(moe, dense, 0.005, 0.005), what + " MoE / dense")
        (shown,) = numbers(row[6])
        consistent(shown, ratio_range(run1[model]["onehot_capacity"], moe, 0.05, 0.005), what + " one-hot / MoE")
        grouped = numbers(row[7])
        dense4 = run4[model]["dense_equivalent"]
        consistent(grouped[0], ratio_range(run4[model]["bucketed"], dense4, 0.005, 0.005), what + " bucketed GEMM")
        consistent(grouped[1], ratio_range(run4[model]["blocked"], dense4, 0.005, 0.005), what + " blocked GEMM")
        if model in run2:
            assert grouped[2:] == [f(run2[model]["ragged_dot_over_dense"], 2 if model == "mixtral" else 1),
                                   f(run2[model]["per_expert_loop_over_dense"], 2)], what + f" grouped {grouped}"
        else:
            assert len(grouped) == 2 and row[7].count("–") == 2, f"{what}: {row[7]!r}, but run 2 did not reach it"


# --------------------------------------------------------------------------- DiLoCo

DILOCO_ROWS = (  # README label fragment -> runs of results/diloco_study.json (one per "a / b" figure)
    ("DiLoCo M=2 H=30 fp32", ("diloco_m2_h30",)),
    ("DiLoCo M=4 H=30 fp32", ("diloco_m4_h30",)),
    ("Streaming M=2 H=30 P=2 τ=1 α=0.5 fp4", ("stream_m2_h30_fp4",)),
    ("Streaming M=4 H=30 P=2 τ=1 fp4", ("stream_m4_h30_fp4",)),
    ("Streaming M=2 H=100 P=2 τ=1 fp4", ("stream_m2_h100_fp4",)),
    ("Streaming M=2 H=30 P=2 τ=0 α=0 fp32", ("stream_m2_h30_fp32_tau0",)),
    ("Streaming M=2 H=30 P=2 τ=5 fp4", ("stream_m2_h30_fp4_tau5",)),
    ("τ = 2", ("stream_m2_h30_fp4_tau2",)),
    ("outer lr 0.4 / 1.0", ("stream_m2_h30_fp4_olr0.4", "stream_m2_h30_fp4_olr1.0")),
    ("bf16 / fp8", ("stream_m2_h30_bf16", "stream_m2_h30_fp8")),
)
DILOCO_COLUMNS = ("val_loss_ratio_to_dp", "bytes_reduction_vs_dp", "peak_reduction_vs_dp",  # README columns 1-4
                  "mesh_bytes_reduction_vs_dp")


def shown_as(cell_numbers: list[str], values: list[float], what: str) -> None:
    """Each value, rounded to the decimals its README figure shows, is that figure; a figure shared by
    several runs (written once) must hold for each of them."""
    if len(cell_numbers) == 1 < len(values):
        cell_numbers = cell_numbers * len(values)
    assert len(cell_numbers) == len(values), f"{what}: {cell_numbers} vs {len(values)} runs"
    for text, value in zip(cell_numbers, values):
        decimals = len(text.partition(".")[2])
        assert f(value, decimals) == text, f"{what}: README {text}, file {value} ({f(value, decimals)})"


def test_diloco_table(tables):
    """results/diloco_study.json (the study's runs; results/diloco_study.md is the same table)."""
    runs = {r["run"]: r for r in load("diloco_study.json")}
    table = section(tables, "Streaming DiLoCo")[0]
    for fragment, names in DILOCO_ROWS:
        row = table.row(fragment)
        for column, key in enumerate(DILOCO_COLUMNS, start=1):
            shown_as(numbers(row[column]), [runs[n][key] for n in names], f"DiLoCo {fragment!r} {key}")


# --------------------------------------------------------------------------- AlgoPerf

BASELINE_NAMES = {"adamw": "AdamW", "nadamw": "NAdamW", "heavy_ball": "heavy ball", "sgd_nesterov": "SGD Nesterov"}


def test_algoperf_targets_table(tables):
    """results/algoperf/targets.json (targets, who set them, budgets) and results/algoperf/ctr_bayes_floor.json."""
    workloads = load("algoperf/targets.json")["workloads"]
    table = section(tables, "AlgoPerf suite")[0]
    assert sorted(row[0] for row in table.rows) == sorted(workloads)
    for row in table.rows:
        entry = workloads[row[0]]
        expected = [str(entry["validation_target"])]
        if row[0] == "ctr":
            expected.append(f(load("algoperf/ctr_bayes_floor.json")["validation_bayes_log_loss"], 3))
        check(row[1], expected, f"AlgoPerf target {row[0]}")
        assert row[2] == BASELINE_NAMES[entry["best"]["baseline"]], f"AlgoPerf {row[0]}: set by {row[2]!r}"
        check(row[3], [f"{entry['max_runtime_s']:g}"], f"AlgoPerf budget {row[0]}")


def _reached(trial_times: dict, workload: str) -> tuple[int, int, int, int]:
    """(trials that reached the target, trials, studies with one that did, studies) of one submission."""
    studies = trial_times[workload].values()
    times = [t for study in studies for t in study.values()]
    return (sum(t is not None for t in times), len(times),
            sum(any(t is not None for t in study.values()) for study in studies), len(studies))


def test_algoperf_scores_table(tables):
    """results/algoperf/scores/{external,self}/scores.json (median workload times, scores, trials reaching)."""
    scores = load("algoperf/scores/external/scores.json")
    table = section(tables, "AlgoPerf suite")[1]
    columns = table.header[1:-1]
    assert sorted(columns) == sorted(scores["workload_times_s"]["adamw"]), table.header
    for baseline, name in BASELINE_NAMES.items():
        row = next(r for r in table.rows if r[0] == name)
        for column, cell in zip(columns, row[1:-1]):
            seconds = scores["workload_times_s"][baseline][column]
            assert cell == ("miss" if seconds is None else f(seconds, 1)), f"AlgoPerf {name} {column}: {cell!r}"
        assert row[-1] == f(scores["scores"][baseline], 3)
    self_tuning = load("algoperf/scores/self/scores.json")
    row = next(r for r in table.rows if r[0].startswith("self-tuning NAdamW"))
    for column, cell in zip(columns, row[1:-1]):
        seconds = self_tuning["workload_times_s"]["self_tuning_nadamw"][column]
        assert cell == ("miss" if seconds is None else f(seconds, 1)), f"AlgoPerf self-tuning {column}: {cell!r}"
    text = (ROOT / "README.md").read_text()
    # "Trials reaching the target (of 60 per workload): ctr 16/60, ..."
    sentence = re.search(r"Trials reaching the target \(all four baselines\):(.*?)\.", text, re.S).group(1)
    reached = {w: (int(a), int(b)) for w, a, b in re.findall(r"(\w+)\s+(\d+)/(\d+)", sentence)}
    for workload in columns:
        totals = [_reached(per, workload) for per in scores["trial_times_s"].values()]
        assert reached.get(workload) == (sum(t[0] for t in totals), sum(t[1] for t in totals)), workload
    # "Studies reaching the target, per baseline: NAdamW ctr 3/3, lm 2/3, mnist1d 0/3; ..."
    sentence = re.search(r"Studies reaching the target, per baseline:(.*?)\.\n", text, re.S).group(1)
    for baseline, name in BASELINE_NAMES.items():
        part = re.search(rf"(?<!\w){name} ([^;]*)", sentence).group(1)
        shown = {w: (int(a), int(b)) for w, a, b in re.findall(r"(\w+)\s+(\d+)/(\d+)", part)}
        for workload in columns:
            _, _, hit, studies = _reached(scores["trial_times_s"][baseline], workload)
            assert shown.get(workload) == (hit, studies), f"studies reaching: {name} {workload}"


# --------------------------------------------------------------------------- mallocGame

def malloc_summary(records: list[dict], base: list[dict]) -> dict:
    """Mean normalised benefit, gap to the CP-SAT optimum, shares vs the heuristic (both from
    results/malloc_eval.json) and wall time, as rl/malloc/evaluate.summarise computes them."""
    heur = {r["instance"]: r for r in base if r["solver"] == "heuristic"}
    opt = {r["instance"]: r for r in base if r["solver"] == "cpsat" and r.get("optimal")}
    gaps = [1 - r["benefit"] / opt[r["instance"]]["benefit"] for r in records
            if r["instance"] in opt and opt[r["instance"]]["benefit"] > 0]
    diff = np.array([r["benefit"] - heur[r["instance"]]["benefit"] for r in records])
    tol = 1e-9 * max(1.0, max(abs(heur[r["instance"]]["benefit"]) for r in records))
    return {"benefit": float(np.mean([r["normalised_benefit"] for r in records])),
            "gap": 100 * float(np.mean(gaps)), "at_opt": float(np.mean([g <= 1e-9 for g in gaps])),
            "ge": float(np.mean(diff >= -tol)), "gt": float(np.mean(diff > tol)),
            "wall": float(np.mean([r["wall_time_s"] for r in records])), "n": len(records)}


def test_malloc_table(tables):
    """results/malloc_eval*.json: one file (or solver within malloc_eval.json) per row."""
    base = load("malloc_eval.json")
    assert collections.Counter(r["solver"] for r in base) == {s: 23 for s in (
        "heuristic", "firstfit", "random", "cpsat", "cpsat_game", "muzero", "alphazero")}

    def of(name: str, solver: str | None = None) -> dict:
        recs = base if name == "malloc_eval.json" else load(name)
        recs = [r for r in recs if solver is None or r["solver"] == solver]
        assert len(recs) == 23, f"{name} {solver}: {len(recs)} records, the held-out set has 23"
        return malloc_summary(recs, base)

    def shares(*summaries):  # "ge % / gt %", a pair shared by every run written once
        pairs = [[pct(s["ge"]), pct(s["gt"])] for s in summaries]
        return pairs[0] if all(p == pairs[0] for p in pairs) else sum(pairs, [])

    table = section(tables, "mallocGame")[0]
    rows = [  # label fragment, summaries, benefit decimals, gap decimals, wall (scale, decimals) or None
        ("XLA-style heuristic", [of("malloc_eval.json", "heuristic")], 2, (1e3, 0)),
        ("first-fit decreasing size", [of("malloc_eval.json", "firstfit")], 2, (1e3, 0)),
        ("random legal", [of("malloc_eval.json", "random")], 2, (1e3, 0)),
        ("CP-SAT under the game's moves", [of("malloc_eval.json", "cpsat_game")], 2, (1, 1)),
        ("mallocMuZero, shipped network, 32 simulations", [of("malloc_eval.json", "muzero")], 2, (1, 2)),
        ("mallocMuZero, shipped network, 64 simulations", [of("malloc_eval_muzero64.json")], 2, (1, 2)),
        ("AlphaZero ablation (true game in the search), 32 / 64 simulations",
         [of("malloc_eval.json", "alphazero"), of("malloc_eval_alphazero64.json")], 2, (1, 2)),
        ("best of 128 episodes", [of("malloc_eval_muzero32_best128.json")], 2, (1, 1)),
        ("rollout search** (true game", [of("malloc_eval_rollout32.json"), of("malloc_eval_rollout64.json")],
         2, (1, 2)),
        ("best trajectory it evaluated", [of("malloc_eval_rollout32_keep_best.json"),
                                          of("malloc_eval_rollout64_keep_best.json")], 2, (1, 2)),
        ("first-fit leaf rollouts", [of("malloc_eval_rollout_firstfit32.json"),
                                     of("malloc_eval_rollout_firstfit64.json")], 2, (1, 2)),
    ]
    for fragment, summaries, gap_decimals, (scale, wall_decimals) in rows:
        row, what = table.row(fragment), f"malloc {fragment!r}"
        check(row[1], [f(s["benefit"], 3) for s in summaries], what + " benefit")
        gaps = [f(s["gap"], gap_decimals) for s in summaries]
        if fragment == "XLA-style heuristic":
            gaps.append(pct(summaries[0]["at_opt"]))
        check(row[2], gaps, what + " gap")
        if fragment != "XLA-style heuristic":
            check(row[3], shares(*summaries), what + " >= / > heuristic")
        check(row[4], [f(scale * s["wall"], wall_decimals) for s in summaries], what + " time")
    cpsat = [r for r in base if r["solver"] == "cpsat"]
    row, s = table.row("CP-SAT (`AddNoOverlap2D`)"), of("malloc_eval.json", "cpsat")
    check(row[1], [f(s["benefit"], 3)], "CP-SAT benefit")
    check(row[2], [str(sum(bool(r.get("optimal")) for r in cpsat)), str(len(cpsat))], "CP-SAT optimal")
    check(row[3], [pct(s["ge"]), pct(s["gt"])], "CP-SAT >= / > heuristic")
    check(row[4], [f(s["wall"], 2)], "CP-SAT time")


def test_malloc_programs_table(tables):
    """results/malloc_programs_*.json: per held-out whole program, the heuristic, CP-SAT at the agent's wall
    time and at 300 s (with its bound), and the agent (benefit, wall time)."""
    files = {k: {r["instance"]: r for r in load(f"malloc_programs_{k}.json")}
             for k in ("heuristic", "cpsat_agent_time", "cpsat300", "muzero4")}
    assert all(len(v) == 4 for v in files.values()), "the held-out whole-program set has 4 programs"
    rollouts = {r["instance"]: r for r in load("malloc_programs_rollout2_keep_best.json")}
    assert len(rollouts) == 4 and all(r["keep_best"] and r["simulations"] == 2 for r in rollouts.values())
    cpsat_at_rollout_time = {r["instance"]: r for r in load("malloc_programs_cpsat_rollout_time.json")}
    table = section(tables, "mallocGame")[1]
    for name in files["heuristic"]:
        row = table.row(f"`{name}`")
        h, c_t, c_300, agent = (files[k][name] for k in ("heuristic", "cpsat_agent_time", "cpsat300", "muzero4"))
        check(row[1], [str(len(h["placement"]))], f"{name} buffers")
        check(row[2], [f(h["normalised_benefit"], 3)], f"{name} heuristic")
        assert c_t["time_limit_s"] == agent["wall_time_s"], f"{name}: CP-SAT was not given the agent's time"
        check(row[3], [f(c_t["normalised_benefit"], 3), f(c_t["time_limit_s"], 0)],
              f"{name} CP-SAT at the agent's time")
        check(row[4], [f(c_300["normalised_benefit"], 3), f(c_300["bound"] / c_300["total_benefit"], 3)],
              f"{name} CP-SAT 300 s and bound")
        check(row[5], [f(agent["normalised_benefit"], 3), f(agent["wall_time_s"], 0)], f"{name} agent")
        rollout, cpsat_then = rollouts[name], cpsat_at_rollout_time.get(name)
        check(row[6], [f(rollout["normalised_benefit"], 3), f(rollout["wall_time_s"], 0)], f"{name} rollout agent")
        if cpsat_then is None:
            assert row[7] in MISSING, f"{name}: {row[7]!r} but no CP-SAT record at the rollout agent's time"
        else:
            assert cpsat_then["time_limit_s"] == rollout["wall_time_s"], f"{name}: CP-SAT not given the agent's time"
            check(row[7], [f(cpsat_then["normalised_benefit"], 3)], f"{name} CP-SAT at the rollout agent's time")
    firstfit = {r["instance"]: r["normalised_benefit"] for r in load("malloc_programs_firstfit.json")}
    shown = " / ".join(f(firstfit[name.strip("`")], 3) for name in (r[0] for r in table.rows))
    prose = readme_prose()
    assert f"First-fit decreasing: {shown}." in prose, f"README's first-fit figures on the programs: {shown}"


# --------------------------------------------------------------------------- job-shop scheduling

def jssp_means(name: str) -> dict[str, float]:
    groups = collections.defaultdict(list)
    for r in load(name):
        groups[r["size"]].append(r["gap"])
    assert all(len(g) == 10 for g in groups.values()), f"{name}: a Taillard size group is not its 10 instances"
    return {size: float(np.mean(g)) for size, g in groups.items()}


def test_jssp_table(tables):
    """results/jssp_eval_*.json (one file per row; temperature 0.5 sampling in two files) and
    results/jssp_{l2d,spn}_published.json (the published L2D and SPN figures)."""
    table = section(tables, "Job-shop scheduling")[0]
    sizes = table.header[1:]
    assert sizes == ["15x15", "20x15", "20x20", "30x15", "30x20", "50x15", "50x20", "100x20"], sizes
    sources = [("SPT", ["jssp_eval_spt.json"]), ("MWKR", ["jssp_eval_mwkr.json"]), ("MOPNR", ["jssp_eval_mopnr.json"]),
               ("FDD/MWKR", ["jssp_eval_fdd_mwkr.json"]),
               ("agent, greedy (shipped", ["jssp_eval_agent_sl_greedy.json"]),
               ("agent, greedy (PPO", ["jssp_eval_agent_greedy.json"]),
               ("self-labelled policy, best of 128", ["jssp_eval_agent_sl_s128.json",
                                                       "jssp_eval_agent_sl_s128_large.json"]),
               ("PPO policy, best of 128 samples, temperature 1", ["jssp_eval_agent_s128_t1.json"]),
               ("PPO policy, best of 128 samples, temperature 0.5", ["jssp_eval_agent_s128.json",
                                                                     "jssp_eval_agent_s128_large.json"]),
               ("CP-SAT at the PPO policy's sampling wall time", ["jssp_eval_cpsat_agent_time.json"]),
               ("CP-SAT alone, 60 s (1 worker, default", ["jssp_eval_cpsat60.json"]),
               ("PPO policy greedy + CP-SAT", ["jssp_eval_agent_cpsat60.json"]),
               ("CP-SAT alone, 60 s (1 worker, portfolio", ["jssp_eval_cpsat60_portfolio.json"]),
               ("self-labelled policy + CP-SAT", ["jssp_eval_agent_cpsat60_portfolio.json"])]
    for fragment, files in sources:
        means = {k: v for name in files for k, v in jssp_means(name).items()}
        exact = [r for r in table.rows if r[0] == fragment]  # "MWKR" is also in "FDD/MWKR"
        row = exact[0] if exact else table.row(fragment)
        for size, cell in zip(sizes, row[1:], strict=True):
            if size in means:
                check(cell, [f(means[size], 2)], f"JSSP {fragment} {size}")
            else:
                assert cell.replace("*", "") in MISSING, f"JSSP {fragment} {size}: {cell!r} but no file has it"
    published = load("jssp_l2d_published.json")["mean_gap_pct"]
    row = table.row("L2D greedy")
    for size, cell in zip(sizes, row[1:], strict=True):
        check(cell, [f(published[size], 1)], f"JSSP L2D {size}")
    spn = load("jssp_spn_published.json")
    for fragment, key in (("SPN greedy", "greedy_mean_gap_pct"), ("SPN best of 128", "best_of_128_mean_gap_pct")):
        row = table.row(fragment)
        for size, cell in zip(sizes, row[1:], strict=True):
            check(cell, [f(spn[key][size], 1)], f"JSSP {fragment} {size}")


def test_jssp_self_label_continuation_prose():
    """results/jssp_self_label_continuation.json: the validation range of both runs and the best-of-128
    validation makespans quoted in the job-shop prose."""
    data = load("jssp_self_label_continuation.json")
    prose = readme_prose()
    gaps = [r["val_gap_lb_pct"] for run in data["runs"].values() for r in run["validation"]]
    start = data["runs"]["A"]["validation"][0]["val_gap_lb_pct"]
    assert (f"stayed between {f(min(gaps), 2)} and {f(max(gaps), 2)} % (step 0: {f(start, 2)} %)" in prose)
    by_size = data["best_of_128_validation"]["by_size"]
    shipped, last, pick = "shipped (step 0)", "run A step 120 (last)", "run A step 20 (greedy-validation pick)"
    s15, s20 = by_size["15x15"], by_size["20x15"]
    assert (f"15x15 {f(s15[shipped], 1)} shipped, {f(s15[last], 1)} after 120 steps, {f(s15[pick], 1)} at step 20"
            in prose and f"{f(s15['run B step 70 (lr 1e-4)'], 1)} at lr 10⁻⁴ after 70; 20x15 {f(s20[shipped], 1)} / "
            f"{f(s20[last], 1)} / {f(s20[pick], 1)}." in prose)


def test_jssp_self_label_width_prose():
    """results/jssp_self_label_width.json: the from-scratch runs' best validation, steps and references."""
    data = load("jssp_self_label_width.json")
    prose = readme_prose()
    ref, narrow, wide = data["reference_on_this_validation"], data["runs"]["narrow"], data["runs"]["wide"]
    best = {k: f(min(r["val_gap_lb_pct"] for r in run["validation"]), 2) for k, run in data["runs"].items()}
    at = {k: {r["step"]: f(r["val_gap_lb_pct"], 2) for r in run["validation"]} for k, run in data["runs"].items()}
    last = wide["steps"] // 10 * 10
    assert (f"FDD/MWKR's gap is {f(ref['fdd_mwkr'], 2)} % and the shipped policy's {f(ref['shipped_policy'], 2)} %"
            f"): this network reached {best['narrow']} % at best in {narrow['steps']} steps" in prose)
    assert (f"{wide['parameters']:,} parameters" in prose and f"{best['wide']} % in {wide['steps']}" in prose
            and f"(step {last}: {at['wide'][last]} vs {at['narrow'][last]} %)" in prose)


FAMILIES = ["taillard", "wide", "short", "two_sets", "flow"]


def test_jssp_families_table(tables):
    """results/jssp_families_eval_*.json on the generated test set results/jssp_families/ (10 instances of each
    family): mean gap per family and over all 50, and on how many of each family's 10 the solver beats FDD/MWKR
    (strictly smaller makespan)."""
    table = section(tables, "Job-shop scheduling")[1]
    assert table.header[1:] == FAMILIES + ["all"], table.header
    rule = {r["instance"]: r["makespan"] for r in load("jssp_families_eval_fdd_mwkr.json")}
    for fragment, name in (("FDD/MWKR", "fdd_mwkr"), ("PPO + CP-SAT imitation", "agent_ppo"),
                           ("self-labelled", "agent")):
        records = load(f"jssp_families_eval_{name}.json")
        by_family = collections.defaultdict(list)
        for r in records:
            by_family[r["instance"].rsplit("_", 2)[0]].append(r)
        assert sorted(by_family) == sorted(FAMILIES) and all(len(v) == 10 for v in by_family.values())
        row = table.row(fragment)
        for family, cell in zip(FAMILIES, row[1:]):
            rs = by_family[family]
            expected = [f(np.mean([r["gap"] for r in rs]), 2)]
            if name != "fdd_mwkr":
                expected.append(str(sum(r["makespan"] < rule[r["instance"]] for r in rs)))
            check(cell, expected, f"JSSP families {fragment} {family}")
        check(row[-1], [f(np.mean([r["gap"] for r in records]), 2)], f"JSSP families {fragment} all")
