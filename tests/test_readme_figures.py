"""Every figure of the results pages (results/<system>/README.md) and of the README's headline table is
recomputed from its file in results/, with the page's rounding.

A table cell's numbers must equal the numbers its file gives, formatted as the page shows them, so a
figure edited by hand (or a result file replaced without its page following) fails here. So does a
provenance line under a table that no longer matches its file's provenance, a results file that says
nothing of where it came from, and development history (issue numbers, commit ids) in the pages. NumPy
and JSON only (no JAX); reads about 15 MB of JSON, a few seconds.

How a cell is compared: its numbers are extracted in order (``numbers``: bold, units and words dropped;
numbers glued to letters, such as the 15 of "15x15", are not numbers) and must equal the list of expected
strings built from the file. Rows are found by a label fragment, so relabelling a row or dropping it fails
too. Sources per table: see each test.
"""
from __future__ import annotations

import collections
import json
import math
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SYSTEMS = ("lm", "checkpoint", "moe", "diloco", "algoperf", "malloc", "jssp", "tour", "project")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?!\w)(?!\.\d)")
MISSING = ("–", "-", "not run")
PROVENANCE_LINE = re.compile(r"^- Provenance of \[`([^`]+)`\]\(([^)]+)\)(?: \([^)]*\))?: `(.+)` · commit (\w+) · "
                             r"(\d{4}-\d{2}-\d{2}) · (.+)$")


# --------------------------------------------------------------------------- page parsing

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


def page_path(system: str) -> pathlib.Path:
    return RESULTS / system / "README.md"


def tables_of(text: str) -> list[Table]:
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(Table(current))
            current = []
    return tables


def page_tables(system: str) -> list[Table]:
    """The tables of results/<system>/README.md, in page order."""
    return tables_of(page_path(system).read_text())


def prose(system: str) -> str:
    """A results page with its line breaks as spaces, for figures quoted in running text."""
    return " ".join(page_path(system).read_text().split())


def numbers(cell: str) -> list[str]:
    return [m.replace(",", "") for m in NUMBER.findall(cell.replace("**", "").replace("−", "-"))]


def check(cell: str, expected: list[str], what: str) -> None:
    assert numbers(cell) == expected, f"{what}: page cell {cell!r} shows {numbers(cell)}, its file gives {expected}"


def f(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # -1e-17 shows as 0.00


def pct(value: float, decimals: int = 0) -> str:
    return f(100 * value, decimals)


def raw(name: str):
    path = RESULTS / name
    assert path.is_file(), f"results/{name} (a results page figure's source) is missing"
    return json.loads(path.read_text())


def load(name: str):
    """A results file's data: a file of records is stored as {"provenance", "records"} (an eval_malloc file
    also holds its config, instances and summary)."""
    data = raw(name)
    return data["records"] if isinstance(data, dict) and {"provenance", "records"} <= set(data) else data


def in_prose(system: str, *fragments: str) -> None:
    text = prose(system)
    for fragment in fragments:
        assert fragment in text, f"results/{system}/README.md does not say {fragment!r} (its files give that)"


# --------------------------------------------------------------------------- provenance and history

def provenance_records() -> dict[pathlib.Path, dict]:
    """{results file: its provenance}: a JSON's own object, a PROVENANCE.md row of its folder, or the
    PROVENANCE.json at the top of a generated tree (which covers every file under it)."""
    out = {}
    for path in sorted(RESULTS.rglob("*")):
        if not path.is_file() or path.name in ("README.md", "PROVENANCE.md", "PROVENANCE.json"):
            continue
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("provenance"), dict):
                out[path] = data["provenance"]
                continue
        trees = [p / "PROVENANCE.json" for p in path.parents if (p / "PROVENANCE.json").is_file()]
        if trees:
            out[path] = json.loads(trees[0].read_text())["provenance"]
            continue
        listing = path.parent
        while listing != RESULTS and not (listing / "PROVENANCE.md").is_file():
            listing = listing.parent
        if (listing / "PROVENANCE.md").is_file():
            rel = path.relative_to(listing).as_posix()
            for row in tables_of((listing / "PROVENANCE.md").read_text())[0].rows:
                if row[0] == f"`{rel}`":
                    out[path] = {"command": row[1], "commit": row[2], "date": row[3], "machine": row[4]}
    return out


def test_every_results_file_says_how_it_was_made():
    records = provenance_records()
    files = [p for p in RESULTS.rglob("*") if p.is_file() and p.name not in ("README.md", "PROVENANCE.md",
                                                                              "PROVENANCE.json")]
    assert len(files) > 1000, "results/ lost its files"
    missing = [str(p.relative_to(RESULTS)) for p in files if p not in records]
    assert not missing, f"results files without provenance: {missing[:10]}"
    for path, prov in records.items():
        assert all(prov.get(k) for k in ("command", "commit", "date", "machine")), f"{path}: {prov}"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", prov["date"]), f"{path}: date {prov['date']!r}"
        assert re.fullmatch(r"[0-9a-f]{7,40}", prov["commit"]), f"{path}: commit {prov['commit']!r}"


def test_every_table_says_where_its_figures_come_from():
    """Under each table of a system page, before the next table, at least one provenance line, and each
    provenance line names a file whose own provenance (command, commit, date) it repeats."""
    records = provenance_records()
    for system in SYSTEMS:
        lines = page_path(system).read_text().splitlines()
        starts = [i for i, line in enumerate(lines)
                  if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(lines)
            assert any(PROVENANCE_LINE.match(line) for line in lines[start:end]), \
                f"results/{system}/README.md: the table at line {start + 1} has no provenance line under it"
        for line in lines:
            if not line.startswith("- Provenance of"):
                continue
            m = PROVENANCE_LINE.match(line)
            assert m, f"results/{system}/README.md: malformed provenance line {line!r}"
            name, target, command, commit, date, _ = m.groups()
            path = (RESULTS / system / target).resolve()
            if path.name == "PROVENANCE.json":
                prov = json.loads(path.read_text())["provenance"]
            else:
                assert path in records, f"{system}: {target} has no provenance record"
                prov = records[path]
            assert (command, commit, date) == (prov["command"], prov["commit"], prov["date"]), \
                f"{system}: provenance line of {name} says {(command, commit, date)}, the file {prov}"


HISTORY = (re.compile(r"\b[Ii]ssues? \d+"), re.compile(r"\bbefore (?:issue|commit)\b"),
           re.compile(r"(?<![\w/.-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w-])"))


@pytest.mark.parametrize("page", ["README.md", "results/README.md", *[f"results/{s}/README.md" for s in SYSTEMS],
                                  *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))])
def test_pages_carry_no_development_history(page):
    """No issue numbers or commit ids in the README, the results pages and docs/, except a commit in a
    provenance line (and the index's own explanation of provenance)."""
    for number, line in enumerate((ROOT / page).read_text().splitlines(), start=1):
        if line.startswith("- Provenance of"):
            continue
        for pattern in HISTORY:
            assert not pattern.search(line), f"{page}:{number}: {pattern.search(line).group(0)!r} in {line!r}"


# --------------------------------------------------------------------------- language model

def test_lm_table():
    """lm/lm_default.json (the default run), lm/lm_cpu_side_by_side.json (its two speed runs) and
    lm/nanogpt_cpu_reference.json."""
    lm, nano = load("lm/lm_default.json"), load("lm/nanogpt_cpu_reference.json")["figures"]
    sides = load("lm/lm_cpu_side_by_side.json")
    table = page_tables("lm")[0]
    cfg, summary = lm["config"], lm["summary"]
    quality = table.row("validation loss")
    check(quality[0], [str(cfg["num_layers"]), str(cfg["num_heads"]), str(cfg["d_model"]), str(cfg["seq_len"]),
                       str(cfg["batch_size"]), str(cfg["steps"]), f(lm["num_params"] / 1e6, 2)], "LM configuration")
    check(quality[1], [f(summary["val_loss"], 3), f(summary["val_bpb"], 2)], "LM validation loss")
    check(quality[2], [f(nano["val_loss_final"], 4), "1.70"], "LM references")
    speed = table.row("speed on")
    now = sides["now"]
    check(speed[0], [str(lm["machine"]["cpu_count"]), str(len(now["loop_steps_per_sec"]))], "LM cores")
    check(speed[1], [f(v, 1) for v in now["loop_steps_per_sec"]] + [f(v, 0) for v in now["wall_time_s"]],
          "LM speed")
    check(speed[2], [f(nano["ms_per_train_step"], 0), f(nano["wall_time_s"], 0)], "nanoGPT speed")
    assert summary["step"] == cfg["steps"] and not summary["preempted"]
    assert summary["val_loss"] == now["val_loss"][0] and summary["wall_time_s"] == now["wall_time_s"][0]
    below = [r for r in lm["val_curve"] if r["val_loss"] < nano["val_loss_final"]]
    first = below[0]
    assert all(r["val_loss"] < nano["val_loss_final"] for r in lm["val_curve"] if r["step"] >= first["step"])
    in_prose("lm", f"1.39× its wall time for the whole run ({f(summary['wall_time_s'], 0)} vs "
                   f"{f(nano['wall_time_s'], 0)} s",
             f"below nanoGPT's final {f(nano['val_loss_final'], 3)} from step {first['step']} on "
             f"({f(first['val_loss'], 3)})",
             f"({f(sides['before']['loop_steps_per_sec'][0], 1)} and {f(sides['before']['loop_steps_per_sec'][1], 1)} "
             "steps/s)")
    assert f(summary["wall_time_s"] / nano["wall_time_s"], 2) == "1.39"


def test_lm_gpu_table():
    """lm/device_check_lm_h200.json (tools/device_check_lm.sh on one H200, three calls)."""
    d = load("lm/device_check_lm_h200.json")
    table = page_tables("lm")[1]
    g, b, c = d["gpt2_small"], d["baby_gpt_dropout_0.2"], d["gpt2_small_lazy_checkpoint_every_50"]
    row = table.row("GPT-2-small shape (")
    check(row[0], ["2"] + [str(g["shape"][k]) for k in ("num_layers", "num_heads", "d_model", "seq_len",
                                                         "batch_size")] + ["300"], "GPT-2-small configuration")
    check(row[1], [f(g["train_lm"]["ms_per_step"], 1), pct(g["train_lm"]["mfu"], 1),
                   f(g["train_lm_xla_attention_partial"]["ms_per_step"], 1)], "GPT-2-small, ours")
    check(row[2], [f(g["nanogpt"]["ms_per_step"], 1), pct(g["nanogpt"]["mfu"], 1)], "GPT-2-small, nanoGPT")
    check(row[3], ["1.3", "45", f(g["ratio_ms_ours_over_nanogpt"], 2)], "GPT-2-small goal")
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
    by_step = ", ".join(f"{f(ours['val_loss'][s], d)} / {f(nano['val_loss'][s], d)} at {int(s):,}"
                        for s, d in (("500", 3), ("1000", 3), ("1500", 3), ("2000", 4)))
    blocking = c["checkpoint_blocking_s"]
    per_save = (blocking["lazy_every_50_six_saves"] - blocking["no_checkpoint_final_save_only"]) / 5
    in_prose("lm", f"ours / nanoGPT: {by_step};",
             f"({f(resid['val_loss']['1000'], 3)}, then {f(resid['val_loss']['1500'], 3)} and "
             f"{f(resid['val_loss']['2000'], 3)})",
             f"ended at {f(g['train_lm']['val_loss']['300'], 4)} and {f(c['no_checkpoint']['val_loss']['300'], 4)} "
             "in calls 1 and 3",
             f"the step is {pct(g['ratio_ms_ours_over_nanogpt'] - 1)} % slower",
             f"each save blocks about {f(1e3 * per_save, 0)} ms ({f(blocking['lazy_every_50_six_saves'], 2)} s over "
             f"six saves, {f(blocking['no_checkpoint_final_save_only'], 2)} s of it the final one)")


# --------------------------------------------------------------------------- checkpointing

def test_checkpoint_tables():
    """checkpoint/bench_checkpoint.json: the save table and the training-loop table."""
    bench = load("checkpoint/bench_checkpoint.json")
    saves = {(s["state_mb"], s["mode"]): s for s in bench["saves"]}
    save_table, loop_table = page_tables("checkpoint")[:2]
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
    baseline = loop["none", 0]["all_steps_per_sec"]
    in_prose("checkpoint", f"ranged {f(min(baseline), 1)}–{f(max(baseline), 1)} steps/s across repeats")


def test_checkpoint_multiprocess_table():
    """checkpoint/multiprocess.json: consecutive 2-process train_lm runs per checkpoint mode, how each ended."""
    record = load("checkpoint/multiprocess.json")
    table = page_tables("checkpoint")[2]
    assert sorted(r[0].strip("`") for r in table.rows) == sorted(record["summary"])
    for row in table.rows:
        s = record["summary"][row[0].strip("`")]
        check(row[1], [str(s["trials"])], f"{row[0]} trials")
        check(row[2], [str(s["ok"])], f"{row[0]} finished")
        check(row[3], [str(s["stalled"])], f"{row[0]} stalled")
        check(row[4], [str(s["lost"] + s["failed"] + s["timeout"])], f"{row[0]} other")
    before = load("checkpoint/multiprocess_default_threads.json")["summary"].values()
    in_prose("checkpoint", f"every trial stalled: {sum(s['stalled'] for s in before)} of "
                           f"{sum(s['trials'] for s in before)}, in every mode")


# --------------------------------------------------------------------------- MoE

MOE_MODELS = (("Mixtral", "mixtral"), ("Qwen2-MoE", "qwen2_moe"), ("Phi-3.5-MoE", "phi35_moe"))
MOE_H200_MODELS = (("Mixtral", "mixtral"), ("Qwen1.5-MoE", "qwen15_moe"), ("DeepSeekMoE", "deepseek_moe"))
PALLAS_TILES = ("64x64x256", "64x64x64", "128x64x128", "128x32x128")


def test_moe_cpu_table():
    """moe/bench_moe.json (CPU)."""
    bench = load("moe/bench_moe.json")
    rows = {r["model"]: r for r in bench["rows"]}
    grouped = {r["model"]: r for r in bench["grouped_gemm"]}
    cpu = page_tables("moe")[0]
    for label, model in MOE_MODELS:
        row, r, g = cpu.row(label), rows[model], grouped[model]
        what = f"MoE CPU {model}"
        check(row[1], [str(r["experts"]), str(r["top_k"])], what)
        check(row[2], [str(r["hidden"])], what)
        check(row[3], [f(r["moe_over_dense"], 2)], what)
        check(row[4], [f(r["onehot_over_moe"], 2)], what)
        check(row[5], [f(g["blocked_over_dense"], 2), f(g["bucketed_over_dense"], 2),
                       f(g["per_expert_loop_over_dense"], 2)], what)


def ratio_range(num: float, den: float, num_half: float, den_half: float) -> tuple[float, float]:
    """Bounds of num/den when num and den are figures rounded to +-num_half, +-den_half."""
    return (num - num_half) / (den + den_half), (num + num_half) / (den - den_half)


def consistent(text: str, bounds: tuple[float, float], what: str) -> None:
    """Some ratio within ``bounds`` rounds to the page's figure ``text`` (at the decimals it shows)."""
    half = 0.5 * 10.0 ** -len(text.partition(".")[2])
    lo, hi = bounds
    assert float(text) - half <= hi and float(text) + half >= lo, f"{what}: page {text} outside [{lo:.3f}, {hi:.3f}]"


def test_moe_h100_table():
    """moe/bench_moe_h100.json. Its full-layer and run-4 milliseconds are stored rounded, so a ratio the
    page shows must be one those rounded figures allow; run 2's ratios are stored exactly."""
    bench = load("moe/bench_moe_h100.json")
    run1, run3 = bench["full_layer_ms"]["ragged_dot (run 1)"], bench["full_layer_ms"]["bucketed (run 3)"]
    run2, run4 = bench["grouped_gemm_run2_detail"], bench["grouped_gemm_only_ms"]["run 4"]
    gpu = page_tables("moe")[1]
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


def test_moe_h200_tables():
    """moe/bench_moe_h200.json (the layer by implementation, the grouped GEMM alone with the Pallas tile
    sweep) and moe/train_lm_moe_pallas_h200.json (a MoE LM with the Pallas kernels)."""
    bench = load("moe/bench_moe_h200.json")
    rows = {r["model"]: r for r in bench["rows"]}
    grouped = {g["model"]: g for g in bench["grouped_gemm"]}
    table = page_tables("moe")[2]
    for label, model in MOE_H200_MODELS:
        row, r, g, what = table.row(label), rows[model], grouped[model], f"MoE H200 {model}"
        assert r["impl_resolves_to"] == r["fastest_dropless"] == "bucketed", what
        check(row[1], [str(r["experts"]), str(r["top_k"])], what)
        check(row[2], [str(r["hidden"])], what)
        ms = r["median_s"]
        check(row[3], [f(1e3 * ms["dense_equivalent"], 2)], what + " dense")
        check(row[4], [f(1e3 * ms["moe_dropless"], 2)], what + " MoE")
        check(row[5], [f(1e3 * ms["onehot_capacity"], 2)], what + " one-hot")
        check(row[6], [f(r["moe_over_dense"], 2)], what + " MoE / dense")
        check(row[7], [f(r["onehot_over_moe"], 2)], what + " one-hot / MoE")
        check(row[8], [f(g["bucketed_over_dense"], 2), f(g["blocked_over_dense"], 2), f(g["ragged_dot_over_dense"], 2),
                       f(g["pallas_64x64x256_over_dense"], 2)], what + " grouped")
        assert "Shared memory size limit exceeded" in r["errors"]["moe_pallas"], what
    assert "64×64×256" in table.header[8]
    ranges = {t: [g[f"pallas_{t}_over_dense"] for g in grouped.values()] for t in PALLAS_TILES}
    best = min(PALLAS_TILES, key=lambda t: max(ranges[t]))
    assert best == "64x64x256", best
    bucketed = [g["bucketed_over_dense"] for g in grouped.values()]
    span = lambda v: f"{f(min(v), 2)}–{f(max(v), 2)}×"  # noqa: E731
    requested, available = (int(x) for x in re.search(r"requested (\d+), available: (\d+)",
                                                      rows["mixtral"]["errors"]["moe_pallas"]).groups())
    in_prose("moe", f"ran at {span(ranges['64x64x256'])} dense, against {span(bucketed)} for XLA's bucketed",
             f"(tilings 64×64×64: {span(ranges['64x64x64'])}, 128×64×128: {span(ranges['128x64x128'])}, "
             f"128×32×128: {span(ranges['128x32x128'])})",
             f"asked Triton for {requested:,} bytes of shared memory where the H200 has {available:,}",
             f"H200 {f(r_(rows, 'qwen15_moe', 'onehot_over_moe'), 2)}×, "
             f"{f(r_(rows, 'deepseek_moe', 'onehot_over_moe'), 2)}×)",
             f"H200 {f(min(r_(rows, m, 'moe_over_dense') for m in ('qwen15_moe', 'deepseek_moe')), 2)}–"
             f"{f(max(r_(rows, m, 'moe_over_dense') for m in ('qwen15_moe', 'deepseek_moe')), 2)}×)")
    h100 = load("moe/bench_moe_h100.json")["grouped_gemm_run2_detail"]
    ragged = ([g["ragged_dot_over_dense"] for g in grouped.values()]
              + [v["ragged_dot_over_dense"] for v in h100.values()])
    in_prose("moe", f"{f(min(ragged), 0)}–{f(max(ragged), 0)}× dense in the tables above")
    lm = load("moe/train_lm_moe_pallas_h200.json")
    row = page_tables("moe")[3].row("--moe_impl=pallas")
    check(row[1], [str(lm["step"])], "Pallas LM steps")
    check(row[2], [f(lm["val_loss"], 3)], "Pallas LM loss")
    check(row[3], [f(lm["steps_per_sec"], 1)], "Pallas LM steps/s")
    assert not lm["preempted"]
    assert "--moe_impl=pallas" in raw("moe/train_lm_moe_pallas_h200.json")["provenance"]["command"]


def r_(rows: dict, model: str, key: str) -> float:
    return rows[model][key]


def test_moe_lm_vs_dense():
    """moe/lm_moe_vs_dense_300.json: the MoE LM and the dense one with the same active parameters."""
    runs = load("moe/lm_moe_vs_dense_300.json")
    table = page_tables("moe")[4]
    check(table.row("MoE, 8 experts")[1], [f(runs["moe"]["summary"]["val_loss"], 3)], "MoE LM")
    check(table.row("dense")[1], [f(runs["dense"]["summary"]["val_loss"], 3)], "dense LM")
    assert runs["moe"]["config"]["moe"]["num_experts"] == 8 and runs["dense"]["config"]["moe"] is None
    assert runs["moe"]["config"]["moe"]["top_k"] == 2 and runs["moe"]["config"]["steps"] == 300


# --------------------------------------------------------------------------- DiLoCo

DILOCO_ROWS = (  # page label fragment -> runs of diloco/diloco_study.json (one per "a / b" figure)
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
DILOCO_COLUMNS = ("val_loss_ratio_to_dp", "bytes_reduction_vs_dp", "peak_reduction_vs_dp",  # page columns 1-4
                  "mesh_bytes_reduction_vs_dp")


def shown_as(cell_numbers: list[str], values: list[float], what: str) -> None:
    """Each value, rounded to the decimals its page figure shows, is that figure; a figure shared by
    several runs (written once) must hold for each of them."""
    if len(cell_numbers) == 1 < len(values):
        cell_numbers = cell_numbers * len(values)
    assert len(cell_numbers) == len(values), f"{what}: {cell_numbers} vs {len(values)} runs"
    for text, value in zip(cell_numbers, values):
        decimals = len(text.partition(".")[2])
        assert f(value, decimals) == text, f"{what}: page {text}, file {value} ({f(value, decimals)})"


def test_diloco_table():
    """diloco/diloco_study.json (the study's runs; diloco/diloco_study.md is the same table)."""
    runs = {r["run"]: r for r in load("diloco/diloco_study.json")}
    table = page_tables("diloco")[0]
    for fragment, names in DILOCO_ROWS:
        row = table.row(fragment)
        for column, key in enumerate(DILOCO_COLUMNS, start=1):
            shown_as(numbers(row[column]), [runs[n][key] for n in names], f"DiLoCo {fragment!r} {key}")
    m2, m4 = runs["stream_m2_h30_fp4"], runs["stream_m4_h30_fp4"]
    in_prose("diloco", f"(240× between workers, loss {f(m2['val_loss_ratio_to_dp'], 4)} of DP's)",
             f"(+{pct(m4['val_loss_ratio_to_dp'] - 1, 1)} % loss at {f(m4['bytes_reduction_vs_dp'], 0)}×)")
    assert f(m2["bytes_reduction_vs_dp"], 0) == "240"


def test_diloco_bench_tables():
    """diloco/bench_diloco.json: inner-step throughput, the outer step, and the Table 4 simulation."""
    bench = load("diloco/bench_diloco.json")
    step, table4 = page_tables("diloco")[1:3]
    check(step.row("inner-step throughput")[1], [f(bench["inner"]["diloco_inner_throughput_vs_dp"], 3)], "DiLoCo/DP")
    outer = bench["inner"]["outer_step"]
    check(step.row("outer step")[1], [f(outer[p]["outer_over_inner_step"], 2) for p in ("fp32", "bf16", "fp8", "fp4")],
          "outer step in inner steps")
    sim = bench["table4"]
    assert sim["targets"] == [0.5, 0.8, 0.9, 0.95, 0.99]
    for label in ("Data-Parallel", "Streaming DiLoCo + overlap + FP4"):
        row = table4.row(label)
        assert row[0] == label
        shown_as(numbers(row[1]), sim["ours_gbps"][label], f"Table 4 ours {label}")
        shown_as(numbers(row[2]), sim["paper_gbps"][label], f"Table 4 paper {label}")
    a = sim["assumptions"]
    in_prose("diloco", f"({a['layers']} layers, {a['workers']} workers, step time {a['step_time_s']} s, "
                       f"{a['fragments']} fragments, H = {a['inner_steps']}, τ = {a['tau']})")


LINK_METHODS = {"data-parallel": "dp", "DiLoCo H=20 fp32": "diloco_fp32", "Streaming fp4 τ=0": "streaming_fp4",
                "Streaming fp4 τ=5": "streaming_fp4_overlap"}
LINK_RATES = ("unshaped", "100mbit", "10mbit")


def link_rows() -> dict[tuple[str, int], dict[str, dict]]:
    """diloco/link.json's rows by (method, M), then by rate."""
    out: dict = {}
    for r in raw("diloco/link.json")["rows"]:
        out.setdefault((r["method"], r["M"]), {})[r["rate"]] = r
    return out


def link_label(label: str) -> tuple[str, int]:
    method, _, m = label.rpartition(", M=")
    return LINK_METHODS[method.replace("**", "")], int(m.replace("**", ""))


def test_diloco_link_tables():
    """diloco/link.json (the sweep) and diloco/link_repeats/*.json (repeats at 10 Mbit/s): utilisation
    measured / simulated per rate, wire bytes against the trainer's accounting, validation losses."""
    rows = link_rows()
    util, wire, repeats = page_tables("diloco")[3:6]
    for row in util.rows:
        runs = rows[link_label(row[0])]
        for column, rate in enumerate(LINK_RATES, start=1):
            r = runs[rate]
            if r["status"] != "ok":
                assert row[column] in MISSING or row[column].startswith("skipped"), f"{row[0]} {rate}: {r['status']}"
                continue
            check(row[column], [f(r["utilisation"], 2), f(r["sim"]["utilisation"], 2)], f"link {row[0]} {rate}")
    for row in wire.rows:
        ok = [r for r in rows[link_label(row[0])].values() if r["status"] == "ok"]
        net = [r["wire_bytes_net"] / r["predicted_link_bytes"] - 1 for r in ok]
        losses = {f(r["val_loss"], 4) for r in ok}
        assert len(losses) == 1, f"{row[0]}: losses differ between rates: {losses}"
        check(row[1], [f(ok[0]["predicted_link_bytes"] / 1e6, 2)], f"link accounting {row[0]}")
        check(row[2], [pct(min(net), 1), pct(max(net), 1)], f"link wire over accounting {row[0]}")
        check(row[3], [losses.pop()], f"link val loss {row[0]}")
    for row in repeats.rows:
        tau = int(numbers(row[0])[-1])
        method = "streaming_fp4" if tau == 0 else "streaming_fp4_overlap"
        files = sorted((RESULTS / "diloco" / "link_repeats").glob(f"tau{max(tau, 5)}_r*.json"))
        runs = [next(r for r in raw(p.relative_to(RESULTS).as_posix())["rows"] if r["method"] == method)
                for p in files]
        steady = [r["utilisation_steady"] for r in runs]
        whole = [r["utilisation_whole_run"] for r in runs]
        check(row[1], [f(u, 2) for u in steady] + [f(float(np.median(steady)), 2)], f"repeats steady τ={tau}")
        check(row[2], [f(float(np.median(whole)), 2)], f"repeats whole run τ={tau}")
        check(row[3], [f(float(np.median([r["sim"]["utilisation"] for r in runs])), 2)], f"repeats sim τ={tau}")


# --------------------------------------------------------------------------- AlgoPerf

BASELINE_NAMES = {"adamw": "AdamW", "nadamw": "NAdamW", "heavy_ball": "heavy ball", "sgd_nesterov": "SGD Nesterov"}


def test_algoperf_targets_table():
    """algoperf/targets.json (targets, who set them, budgets) and algoperf/ctr_bayes_floor.json."""
    targets = load("algoperf/targets.json")
    workloads = targets["workloads"]
    table = page_tables("algoperf")[0]
    assert sorted(row[0] for row in table.rows) == sorted(workloads)
    for row in table.rows:
        entry = workloads[row[0]]
        expected = [str(entry["validation_target"])]
        if row[0] == "ctr":
            expected.append(f(load("algoperf/ctr_bayes_floor.json")["validation_bayes_log_loss"], 3))
        check(row[1], expected, f"AlgoPerf target {row[0]}")
        assert row[2] == BASELINE_NAMES[entry["best"]["baseline"]], f"AlgoPerf {row[0]}: set by {row[2]!r}"
        check(row[3], [f"{entry['max_runtime_s']:g}"], f"AlgoPerf budget {row[0]}")
    cfg = targets["config"]
    runs = len(cfg["workloads"]) * (len(cfg["baselines"]) * cfg["trials_per_baseline"] + cfg["reruns"])
    best = collections.defaultdict(float)
    for t in workloads["mnist1d"]["trials"]:
        best[t["baseline"]] = max(best[t["baseline"]], t["best_validation"])
    lm = workloads["lm"]
    reruns = [r["best_validation"] for r in lm["reruns"]]
    tuning = min(t["best_validation"] for t in lm["trials"] if t["baseline"] == "nadamw")
    in_prose("algoperf", f"each of the four target-setting algorithms runs {cfg['trials_per_baseline']} quasi-random",
             f"the best configuration is rerun {cfg['reruns']} times", f"({runs} runs, 35 min on the 2 cores)",
             f"NAdamW's best of its {cfg['trials_per_baseline']} target-setting points reached {best['nadamw']} "
             f"(AdamW {best['adamw']})",
             f"(reruns {f(min(reruns), 3)}–{f(max(reruns), 3)} bits/byte, the tuning run itself {f(tuning, 3)})")


def _reached(trial_times: dict, workload: str) -> tuple[int, int, int, int]:
    """(trials that reached the target, trials, studies with one that did, studies) of one submission."""
    studies = trial_times[workload].values()
    times = [t for study in studies for t in study.values()]
    return (sum(t is not None for t in times), len(times),
            sum(any(t is not None for t in study.values()) for study in studies), len(studies))


def test_algoperf_scores_table():
    """algoperf/scores/{external,self}/scores.json (median workload times, scores, trials reaching)."""
    scores = load("algoperf/scores/external/scores.json")
    table = page_tables("algoperf")[1]
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
    text = prose("algoperf")
    # "Trials reaching the target (all four baselines): ctr 41/60, ..."
    sentence = re.search(r"Trials reaching the target \(all four baselines\):(.*?)\.", text).group(1)
    reached = {w: (int(a), int(b)) for w, a, b in re.findall(r"(\w+)\s+(\d+)/(\d+)", sentence)}
    totals = {w: [_reached(per, w) for per in scores["trial_times_s"].values()] for w in columns}
    for workload in columns:
        assert reached.get(workload) == (sum(t[0] for t in totals[workload]), sum(t[1] for t in totals[workload]))
    # "Studies reaching the target, per baseline: AdamW ctr 3/3, lm 0/3, mnist1d 0/3; ..."
    sentence = re.search(r"Studies reaching the target, per baseline:(.*?)\. The goal", text).group(1)
    for baseline, name in BASELINE_NAMES.items():
        part = re.search(rf"(?<!\w){name} ([^;]*)", sentence).group(1)
        shown = {w: (int(a), int(b)) for w, a, b in re.findall(r"(\w+)\s+(\d+)/(\d+)", part)}
        for workload in columns:
            _, _, hit, studies = _reached(scores["trial_times_s"][baseline], workload)
            assert shown.get(workload) == (hit, studies), f"studies reaching: {name} {workload}"
    spread = max(scores["scores"].values()) - min(scores["scores"].values())
    trials = sum(t[1] for per in totals.values() for t in per) + sum(
        _reached(self_tuning["trial_times_s"]["self_tuning_nadamw"], w)[1] for w in columns)
    wall_min = re.match(r"(\d+) min", raw("algoperf/logs/PROVENANCE.json")["provenance"]["wall_time"]).group(1)
    verdict = "met" if spread >= 0.1 else "missed"
    in_prose("algoperf", f"best − worst = {f(spread, 3)} (goal ≥ 0.1, {verdict})",
             f"**{trials} trials in {wall_min} min")


def test_algoperf_runner_overhead():
    """algoperf/bench_algoperf.json: the runner against a hand-written loop."""
    bench = load("algoperf/bench_algoperf.json")
    row = next(t for t in page_tables("algoperf") if t.header[0] == "loop").row("AlgoPerf runner")
    check(row[1], [f(bench["runner_ms_per_step"], 2), f(bench["hand_ms_per_step"], 2)], "runner ms/step")
    check(row[2], [pct(bench["overhead"], 1)], "runner overhead")
    assert bench["repeats"] == 7 and bench["steps"] == 300 and bench["workload"] == "mnist1d"


# --------------------------------------------------------------------------- mallocGame

def malloc_summary(records: list[dict], base: list[dict]) -> dict:
    """Mean normalised benefit, gap to the CP-SAT optimum, shares vs the heuristic (both from
    malloc/malloc_eval.json) and wall time, as rl/malloc/evaluate.summarise computes them."""
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


def malloc_of(name: str, solver: str | None = None) -> dict:
    base = load("malloc/malloc_eval.json")
    recs = base if name == "malloc_eval.json" else load(f"malloc/{name}")
    recs = [r for r in recs if solver is None or r["solver"] == solver]
    assert len(recs) == 23, f"{name} {solver}: {len(recs)} records, the held-out set has 23"
    return malloc_summary(recs, base)


def test_malloc_table():
    """malloc/malloc_eval*.json: one file (or solver within malloc_eval.json) per row."""
    base = load("malloc/malloc_eval.json")
    assert collections.Counter(r["solver"] for r in base) == {s: 23 for s in (
        "heuristic", "firstfit", "random", "cpsat", "cpsat_game", "muzero", "alphazero")}
    of = malloc_of

    def shares(*summaries):  # "ge % / gt %", a pair shared by every run written once
        pairs = [[pct(s["ge"]), pct(s["gt"])] for s in summaries]
        return pairs[0] if all(p == pairs[0] for p in pairs) else sum(pairs, [])

    table = page_tables("malloc")[0]
    rows = [  # label fragment, summaries, gap decimals, wall (scale, decimals)
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


def test_malloc_windows_prose():
    """The held-out windows' figures quoted in the mallocGame prose: the move set's reach
    (malloc/malloc_moves.json) and the windows where the searches fall short of the heuristic."""
    moves = load("malloc/malloc_moves.json")
    (below,) = moves["below"]
    in_prose("malloc", f"on {moves['instances'] - moves['game_below_optimum']:,} of {moves['instances']:,} random "
                       "small instances",
             f"(game {f(below['game_optimum'], 0)}, optimum {f(below['optimum'], 0)})")
    base = load("malloc/malloc_eval.json")
    heur = {r["instance"]: r for r in base if r["solver"] == "heuristic"}
    opt = {r["instance"]: r for r in base if r["solver"] == "cpsat"}
    short = [(r["instance"], (heur[r["instance"]]["benefit"] - r["benefit"]) / r["total_benefit"])
             for r in load("malloc/malloc_eval_rollout32_keep_best.json")
             if r["benefit"] < heur[r["instance"]]["benefit"] - 1e-9]
    assert len(short) == 2
    in_prose("malloc", f"(by {' and '.join(pct(d, 2) for _, d in sorted(short, key=lambda x: x[1]))} % of the "
                       "total benefit at 32 simulations)")
    short64 = [r for r in load("malloc/malloc_eval_rollout64.json")
               if r["benefit"] < heur[r["instance"]]["benefit"] - 1e-9]
    at_opt = [r for r in short64 if heur[r["instance"]]["benefit"] >= opt[r["instance"]]["benefit"] - 1e-9]
    missed = [1 - r["benefit"] / heur[r["instance"]]["benefit"] for r in at_opt]
    in_prose("malloc", f"Of the {len(short64)} windows where the 64-simulation episode falls short of the heuristic, "
                       f"{len(at_opt)} are windows where the heuristic is optimal, missed by "
                       f"{pct(min(missed), 3)}–{pct(max(missed), 2)} %")
    searches = [malloc_of("malloc_eval.json", "muzero"), malloc_of("malloc_eval_muzero64.json"),
                malloc_of("malloc_eval.json", "alphazero"), malloc_of("malloc_eval_alphazero64.json")]
    gaps = [s["gap"] for s in searches]
    in_prose("malloc", f"stay {f(min(gaps), 0)}–{f(max(gaps), 0)} % from the optimum")


def malloc_rollouts(name: str, view: int, simulations: int = 2) -> dict[str, dict]:
    """{program: rollout record} of an eval_malloc file of the held-out whole programs: the rollout search
    keeping the best, ``simulations`` per move (0: by size, each record saying how many), whole leaf rollouts,
    the network on ``view`` slots, compilation timed."""
    config = raw(f"malloc/{name}")["config"]
    assert config["warm_up"] is False, f"{name}: a time leaves out the compilation a person waits for"
    assert config["simulations"] == simulations, f"{name}: simulations={config['simulations']}"
    recs = {r["instance"]: r for r in load(f"malloc/{name}") if r["solver"] == "rollout"}
    assert len(recs) == 4 and all(r["keep_best"] and r["simulations"] == (simulations or r["simulations"]) and
                                  r["view"] == view and r["window"] == 0 for r in recs.values()), name
    return recs


BY_SIZE = "programs_rollout_by_size.json"  # the rollout search at its default simulations (by the program's size)


def test_malloc_programs_table():
    """malloc/malloc_programs_*.json: per held-out whole program, the heuristic, CP-SAT at the MuZero agent's
    wall time and at 300 s (with its bound), the MuZero agent; malloc/programs_rollout_by_size.json and
    programs_rollout2.json: the rollout search with the network on the whole program at simulations by size
    and on 64 slots at 2 simulations; programs_rollout2_view0.json: the whole view at 2 simulations (prose)."""
    files = {k: {r["instance"]: r for r in load(f"malloc/malloc_programs_{k}.json")}
             for k in ("heuristic", "cpsat_agent_time", "cpsat300", "muzero4")}
    assert all(len(v) == 4 for v in files.values()), "the held-out whole-program set has 4 programs"
    whole, local = malloc_rollouts(BY_SIZE, 0, simulations=0), malloc_rollouts("programs_rollout2.json", 64)
    two = malloc_rollouts("programs_rollout2_view0.json", 0)
    table = page_tables("malloc")[1]
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
        check(row[6], [f(whole[name]["normalised_benefit"], 3), str(whole[name]["simulations"]),
                       f(whole[name]["wall_time_s"], 0)], f"{name} rollout search, whole view, by size")
        check(row[7], [f(local[name]["normalised_benefit"], 3), f(local[name]["wall_time_s"], 0)],
              f"{name} rollout search, 64-slot view")
    firstfit = {r["instance"]: r["normalised_benefit"] for r in load("malloc/malloc_programs_firstfit.json")}
    names = [r[0].strip("`") for r in table.rows]
    shown = " / ".join(f(firstfit[name], 3) for name in names)
    gaps = {n: 1 - files["cpsat300"][n]["benefit"] / files["cpsat300"][n]["bound"] for n in names}
    (lm4,) = load("malloc/malloc_programs_lm_rollout4_keep_best.json")
    heur = files["heuristic"]
    beats = {k: sum(recs[n]["benefit"] >= heur[n]["benefit"] for n in names)
             for k, recs in (("whole", whole), ("local", local), ("two", two))}
    in_prose("malloc", f"First-fit decreasing: {shown}.",
             f"gaps of {pct(gaps['gpt2_small_step'])} % (GPT-2-small step), "
             f"{pct(gaps['diloco_gpt2_small_outer_step'])} % (DiLoCo), {pct(gaps['moe_d512_e8_step'])} % (MoE) and "
             f"{pct(gaps['algoperf_lm_step'])} % (AlgoPerf lm)",
             f"At 4 simulations AlgoPerf's lm step reached {f(lm4['normalised_benefit'], 3)}",
             f"≥ the heuristic on **{beats['whole']} of 4** programs",
             f"only {beats['local']} of 4",
             f"At 2 simulations on all four (the earlier default): ≥ the heuristic on {beats['two']} of 4 "
             f"(MoE {f(two['moe_d512_e8_step']['normalised_benefit'], 3)} in "
             f"{f(two['moe_d512_e8_step']['wall_time_s'], 0)} s, AlgoPerf lm "
             f"{f(two['algoperf_lm_step']['normalised_benefit'], 3)} in "
             f"{f(two['algoperf_lm_step']['wall_time_s'], 0)} s)")
    assert lm4["instance"] == "algoperf_lm_step" and lm4["simulations"] == 4 and lm4["keep_best"]
    worst = max(abs(files["cpsat300"][n]["benefit"] / files["heuristic"][n]["benefit"] - 1) for n in names)
    in_prose("malloc", f"at 300 s it is within {np.ceil(1000 * worst) / 10:.1f} % of the heuristic on every program")


def test_algoperf_new_workloads_targets_and_lists():
    """algoperf/targets_{molgraph,mri}.json: the new domains' targets table; algoperf/search_spaces.json: per
    baseline and held-out workload, the list's best shortfall there / the box's first points'."""
    table = next(t for t in page_tables("algoperf") if t.header[0] == "workload" and "test target" in t.header)
    for name in ("molgraph", "mri"):
        entry = load(f"algoperf/targets_{name}.json")["workloads"][name]
        row = table.row(name)
        check(row[1], [str(entry["validation_target"])], f"{name} target")
        check(row[2], [str(entry["test_target"])], f"{name} test target")
        assert row[3] == BASELINE_NAMES[entry["best"]["baseline"]], row[3]
        check(row[4], [f"{entry['max_runtime_s']:g}"], f"{name} budget")
    record = load("algoperf/search_spaces.json")
    table = page_tables("algoperf")[-1]
    assert [c.strip("`") for c in table.header[1:]] == record["workloads"]
    cells = 0
    baselines = record["config"]["baselines"].split(",")
    assert set(baselines) == set(record["lists"])
    assert [r[0] for r in table.rows] == [BASELINE_NAMES[b] for b in baselines]
    for row, baseline in zip(table.rows, baselines):
        for w, cell in zip(record["workloads"], row[1:]):
            chosen = record["lists"][baseline][w]
            check(cell, [f(100 * chosen["best_on_held_out"], 1), f(100 * chosen["draw_head_best_on_held_out"], 1)],
                  f"{baseline} list on {w}")
            assert chosen["best_on_held_out"] <= chosen["draw_head_best_on_held_out"], (baseline, w)
            cells += chosen["best_on_held_out"] < chosen["draw_head_best_on_held_out"]
    in_prose("algoperf", f"better in {cells} of {len(BASELINE_NAMES) * len(record['workloads'])} cells")


def best_two_apart(entry: dict) -> float:
    """How far apart the best two algorithms' best target-setting points are on one workload."""
    best = {}
    for trial in entry["trials"]:
        value = trial["best_validation"] if entry["minimize"] else -trial["best_validation"]
        best[trial["baseline"]] = min(value, best.get(trial["baseline"], math.inf))
    first, second = sorted(best.values())[:2]
    return second - first


def test_algoperf_targets_repeated_with_another_seed():
    """algoperf/targets_repeat_seed1.json against the seed-0 targets: how far each target moved, against the
    gap between the best two algorithms in either run."""
    first = {}
    for name in ("targets.json", "targets_molgraph.json", "targets_mri.json"):
        first.update(load(f"algoperf/{name}")["workloads"])
    second = load("algoperf/targets_repeat_seed1.json")["workloads"]
    table = next(t for t in page_tables("algoperf") if "moved less?" in t.header)
    assert sorted(r[0] for r in table.rows) == sorted(second)
    met = 0
    for name, entry in second.items():
        row, before = table.row(name), first[name]
        moved = abs(entry["validation_target"] - before["validation_target"])
        gaps = best_two_apart(before), best_two_apart(entry)
        check(row[1], [str(before["validation_target"])], f"{name} seed-0 target")
        check(row[2], [str(entry["validation_target"])], f"{name} seed-1 target")
        assert row[1].endswith(f"({BASELINE_NAMES[before['best']['baseline']]})"), row[1]
        assert row[2].endswith(f"({BASELINE_NAMES[entry['best']['baseline']]})"), row[2]
        check(row[3], [f(moved, 5), pct(moved / before["validation_target"], 2)], f"{name} moved")
        check(row[4], [f(gaps[0], 4), f(gaps[1], 4)], f"{name} best two apart")
        reruns = [sorted(r["best_validation"] for r in e["reruns"]) for e in (before, entry)]
        check(row[5], [f(reruns[0][0], 4), f(reruns[0][-1], 4), f(reruns[1][0], 4), f(reruns[1][-1], 4)],
              f"{name} reruns")
        holds = moved < min(gaps)
        met += holds
        assert row[6].strip("*") == ("yes" if holds else "no"), (name, row[6])
    in_prose("algoperf", f"Met on {met} of {len(second)} workloads")


def test_algoperf_suite_beside_a_busy_core():
    """algoperf/loaded/scores/{external,self}/scores.json against the suite run alone (scores/): each score,
    its difference, the workloads reached, the calibration factors of both runs, and the goal's verdicts
    (same ranking; every score within 0.05)."""
    runs = [{k: load(f"algoperf/{d}scores/{k}/scores.json") for k in ("external", "self")} for d in ("", "loaded/")]
    calibrations = [load("algoperf/logs/calibration.json"), load("algoperf/loaded/calibration.json")]
    table = next(t for t in page_tables("algoperf") if "score beside a busy core" in t.header)
    workloads = runs[0]["external"]["base_workloads"]
    assert sorted(runs[1]["external"]["base_workloads"]) == sorted(workloads)
    submissions = [(name, "external", b) for b, name in BASELINE_NAMES.items()] + [
        ("self-tuning NAdamW", "self", "self_tuning_nadamw")]
    assert len(table.rows) == len(submissions)
    for name, ruleset, key in submissions:
        row = table.row(name) if ruleset == "self" else next(r for r in table.rows if r[0] == name)
        a, b = (run[ruleset]["scores"][key] for run in runs)
        check(row[1], [f(a, 3)], f"{name} alone")
        check(row[2], [f(b, 3)], f"{name} beside a busy core")
        check(row[3], [f(b - a, 3)], f"{name} difference")
        shown = [part.strip() for part in row[4].split("→")]
        for cell, run in zip(shown, runs):
            times = run[ruleset]["workload_times_s"][key]
            assert cell == (", ".join(w for w in workloads if times[w] is not None) or "none"), (name, cell)
    in_prose("algoperf", "calibration factors " + ", ".join(
        f"{w} {f(calibrations[0]['workloads'][w]['runtime_scale'], 2)} / "
        f"{f(calibrations[1]['workloads'][w]['runtime_scale'], 2)}" for w in workloads))
    rank = [sorted(BASELINE_NAMES, key=lambda b: -run["external"]["scores"][b]) for run in runs]
    worst = max(abs(runs[1]["external"]["scores"][b] - runs[0]["external"]["scores"][b]) for b in BASELINE_NAMES)
    in_prose("algoperf", f"Same ranking: **{'met' if rank[0] == rank[1] else 'missed'}**",
             f"Every score within 0.05 of the other run's: **{'met' if worst <= 0.05 else 'missed'}** "
             f"(largest difference {f(worst, 3)})")


def sci(value: float) -> str:
    """1.7 × 10⁵: one decimal, as the throughput table shows it."""
    exponent = int(np.floor(np.log10(value)))
    mantissa = value / 10 ** exponent
    return f"{mantissa:.1f} × 10{str(exponent).translate(str.maketrans('0123456789', '⁰¹²³⁴⁵⁶⁷⁸⁹'))}"


def test_malloc_throughput_table():
    """malloc/bench_malloc.json: the JAX game against the Python one, and the searches."""
    figures = load("malloc/bench_malloc.json")["figures"]
    table = page_tables("malloc")[2]
    assert table.row("JAX game vs")[1] == (f"{sci(figures['jax_game_steps_per_s'])} vs "
                                           f"{sci(figures['python_game_steps_per_s'])}: "
                                           f"**{f(figures['jax_over_python'], 1)}×**")
    assert table.row("Gumbel MuZero search")[1] == (f"{sci(figures['muzero_simulations_per_s'])} / "
                                                    f"{sci(figures['alphazero_simulations_per_s'])}")


# --------------------------------------------------------------------------- job-shop scheduling

def jssp_means(name: str) -> dict[str, float]:
    groups = collections.defaultdict(list)
    for r in load(f"jssp/{name}"):
        groups[r["size"]].append(r["gap"])
    assert all(len(g) == 10 for g in groups.values()), f"{name}: a Taillard size group is not its 10 instances"
    return {size: float(np.mean(g)) for size, g in groups.items()}


TAILLARD = ["15x15", "20x15", "20x20", "30x15", "30x20", "50x15", "50x20", "100x20"]


def test_jssp_table():
    """jssp/jssp_eval_*.json (one file per row; temperature 0.5 sampling in two files) and
    jssp/jssp_{l2d,spn}_published.json (the published L2D and SPN figures)."""
    table = page_tables("jssp")[0]
    sizes = table.header[1:]
    assert sizes == TAILLARD, sizes
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
    published = load("jssp/jssp_l2d_published.json")["mean_gap_pct"]
    row = table.row("L2D greedy")
    for size, cell in zip(sizes, row[1:], strict=True):
        check(cell, [f(published[size], 1)], f"JSSP L2D {size}")
    spn = load("jssp/jssp_spn_published.json")
    for fragment, key in (("SPN greedy", "greedy_mean_gap_pct"), ("SPN best of 128", "best_of_128_mean_gap_pct")):
        row = table.row(fragment)
        for size, cell in zip(sizes, row[1:], strict=True):
            check(cell, [f(spn[key][size], 1)], f"JSSP {fragment} {size}")


def test_jssp_prose():
    """The Taillard figures quoted in the job-shop prose: greedy means, the goals' counts, and the agent +
    CP-SAT comparison per size group (instances where the pair beats CP-SAT alone)."""
    sl, ppo = jssp_means("jssp_eval_agent_sl_greedy.json"), jssp_means("jssp_eval_agent_greedy.json")
    spn = load("jssp/jssp_spn_published.json")["greedy_mean_gap_pct"]
    missed = sum(sl[s] > spn[s] for s in TAILLARD)
    words = {7: "seven", 8: "eight", 6: "six"}
    in_prose("jssp", f"mean over the eight groups {f(np.mean(list(sl.values())), 2)} vs "
                     f"{f(np.mean(list(ppo.values())), 2)} %",
             f"is **missed** on {words[missed]} of eight groups")
    alone = {r["instance"]: r for r in load("jssp/jssp_eval_cpsat60_portfolio.json")}
    pair = load("jssp/jssp_eval_agent_cpsat60_portfolio.json")
    default = jssp_means("jssp_eval_cpsat60.json")
    means_alone, means_pair = jssp_means("jssp_eval_cpsat60_portfolio.json"), jssp_means(
        "jssp_eval_agent_cpsat60_portfolio.json")
    better = collections.Counter(r["size"] for r in pair if r["makespan"] < alone[r["instance"]]["makespan"])
    ties = collections.Counter(r["size"] for r in pair if r["makespan"] == alone[r["instance"]]["makespan"])
    in_prose("jssp", f"(mean over the seven groups {f(np.mean(list(means_alone.values())), 2)} vs "
                     f"{f(np.mean(list(default.values())), 2)} %",
             f"mean {f(np.mean(list(means_pair.values())), 2)} vs {f(np.mean(list(means_alone.values())), 2)} %")
    text = prose("jssp")
    for size in ("20x20", "30x20", "50x15", "50x20", "100x20"):  # "20x20 2.98 vs 3.60 % (better on 6 of 10)"
        shown = re.search(re.escape(f"{size} {f(means_pair[size], 2)} vs {f(means_alone[size], 2)}") +
                          r"(?: %)? \((?:better on )?(\d+)", text)
        assert shown and int(shown.group(1)) == better[size], (size, better[size])
    for size, tie in (("20x15", ""), ("30x15", ", one tie")):
        assert ties[size] == (1 if tie else 0), (size, ties[size])
        in_prose("jssp", f"{size} {f(means_pair[size], 2)} vs {f(means_alone[size], 2)} % "
                         f"(better on {better[size]}{tie})")


def test_jssp_self_label_continuation_prose():
    """jssp/jssp_self_label_continuation.json: the validation range of both runs and the best-of-128
    validation makespans quoted in the job-shop prose."""
    data = load("jssp/jssp_self_label_continuation.json")
    text = prose("jssp")
    gaps = [r["val_gap_lb_pct"] for run in data["runs"].values() for r in run["validation"]]
    start = data["runs"]["A"]["validation"][0]["val_gap_lb_pct"]
    assert f"stayed between {f(min(gaps), 2)} and {f(max(gaps), 2)} % (step 0: {f(start, 2)} %)" in text
    by_size = data["best_of_128_validation"]["by_size"]
    shipped, last, pick = "shipped (step 0)", "run A step 120 (last)", "run A step 20 (greedy-validation pick)"
    s15, s20 = by_size["15x15"], by_size["20x15"]
    assert (f"15x15 {f(s15[shipped], 1)} shipped, {f(s15[last], 1)} after 120 steps, {f(s15[pick], 1)} at step 20"
            in text and f"{f(s15['run B step 70 (lr 1e-4)'], 1)} at lr 10⁻⁴ after 70; 20x15 {f(s20[shipped], 1)} / "
            f"{f(s20[last], 1)} / {f(s20[pick], 1)}." in text)


def test_jssp_self_label_width_prose():
    """jssp/jssp_self_label_width.json: the from-scratch runs' best validation, steps and references."""
    data = load("jssp/jssp_self_label_width.json")
    text = prose("jssp")
    ref, narrow, wide = data["reference_on_this_validation"], data["runs"]["narrow"], data["runs"]["wide"]
    best = {k: f(min(r["val_gap_lb_pct"] for r in run["validation"]), 2) for k, run in data["runs"].items()}
    at = {k: {r["step"]: f(r["val_gap_lb_pct"], 2) for r in run["validation"]} for k, run in data["runs"].items()}
    last = wide["steps"] // 10 * 10
    assert (f"FDD/MWKR's gap is {f(ref['fdd_mwkr'], 2)} % and the shipped policy's {f(ref['shipped_policy'], 2)} %"
            f"): this network reached {best['narrow']} % at best in {narrow['steps']} steps" in text)
    assert (f"{wide['parameters']:,} parameters" in text and f"{best['wide']} % in {wide['steps']}" in text
            and f"(step {last}: {at['wide'][last]} vs {at['narrow'][last]} %)" in text)
    assert f"({round(narrow['parameters'], -3):,} parameters, d_model {narrow['policy']['d_model']})" in text


FAMILIES = ["taillard", "wide", "short", "two_sets", "flow"]


def test_jssp_families_table():
    """jssp/jssp_families_eval_*.json on the generated test set jssp/families/ (10 instances of each family):
    mean gap per family and over all 50, and on how many of each family's 10 the solver beats FDD/MWKR
    (strictly smaller makespan)."""
    table = page_tables("jssp")[1]
    assert table.header[1:] == FAMILIES + ["all"], table.header
    rule = {r["instance"]: r["makespan"] for r in load("jssp/jssp_families_eval_fdd_mwkr.json")}
    beats = {}
    for fragment, name in (("FDD/MWKR", "fdd_mwkr"), ("PPO + CP-SAT imitation", "agent_ppo"),
                           ("self-labelled", "agent")):
        records = load(f"jssp/jssp_families_eval_{name}.json")
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
        beats[name] = sum(r["makespan"] < rule[r["instance"]] for r in records)
    in_prose("jssp", f"beats FDD/MWKR on {beats['agent']} of 50 instances (the PPO policy: {beats['agent_ppo']})")
    bounds = (RESULTS / "jssp" / "families" / "bounds.csv").read_text().splitlines()
    assert len(bounds) == 51 and len(list((RESULTS / "jssp" / "families").glob("*_20x15_*.txt"))) == 50


def test_jssp_throughput_table():
    """jssp/bench_jssp.json: JAX environment against the Python one, per size and batch."""
    rows = load("jssp/bench_jssp.json")["rows"]
    table = page_tables("jssp")[2]
    for size in ("10x10", "15x15"):
        speedups = {r["batch"]: r["speedup"] for r in rows if r["size"] == size}
        check(table.row(size)[1], [f(speedups[b], 1) for b in (1, 64, 512)], f"JSSP env speed-up {size}")


# --------------------------------------------------------------------------- tour and project

def test_tour_table():
    """tour/tour_summary_{cpu,h200}.json: each step's wall time, and which failed."""
    cpu, gpu = load("tour/tour_summary_cpu.json"), load("tour/tour_summary_h200.json")
    steps = [k for k, v in cpu.items() if isinstance(v, dict) and "tour_step_s" in v]
    table = page_tables("tour")[0]
    assert sorted(r[0] for r in table.rows) == sorted(steps)
    for row in table.rows:
        assert "error" not in cpu[row[0]], row[0]
        check(row[1], [f(cpu[row[0]]["tour_step_s"], 1)], f"tour CPU {row[0]}")
        if row[0] not in gpu:  # a step added since the last GPU tour
            assert row[2].startswith("not run"), row
            continue
        check(row[2], [f(gpu[row[0]]["tour_step_s"], 1)], f"tour H200 {row[0]}")
        assert ("(failed)" in row[2]) == ("error" in gpu[row[0]]), row


def test_mutation_check_table():
    """project/mutation_check*.json: mutants caught, stale, wall time."""
    table = page_tables("project")[0]
    names = set()
    for fragment, name in (("every mutant of the table", "mutation_check.json"),
                           ("four of them", "mutation_check_self_label.json")):
        record = load(f"project/{name}")
        counts, row = record["counts"], table.row(fragment)
        assert record["canary"] == "caught" and counts["caught"] == record["planted"]
        check(row[1], [str(counts["caught"]), str(record["planted"]), pct(record["catch_rate"])], f"mutants {name}")
        check(row[2], [str(counts["stale"])], f"stale {name}")
        assert numbers(row[3])[0] == f(record["wall_s"], 0), f"wall time {name}"
        names |= {r["name"] for r in record["results"]} - {"canary_import_raises"}
    from tools import mutants

    whole = {r["name"] for r in load("project/mutation_check.json")["results"]} - {"canary_import_raises"}
    assert whole == names == {m.name for m in mutants.MUTANTS} - {"canary_import_raises"}, "a mutant not run"
    in_prose("project", f"The first run is the whole table ({len(names)} mutants and the canary)")


# --------------------------------------------------------------------------- the README's headline table

def bold(cell: str) -> list[str]:
    return [b.replace(",", "") for b in re.findall(r"\*\*([^*]+)\*\*", cell)]


def test_readme_headline_table():
    """One row per system in the README: each bold figure and each reference figure from its file, and the
    link to the system's page."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Results\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    (table,) = tables_of(section)
    assert len(table.rows) == 7
    for row in table.rows:
        link = re.search(r"\]\(([^)]+)\)", row[3]).group(1)
        assert (ROOT / link).is_file(), link

    lm, nano = load("lm/lm_default.json"), load("lm/nanogpt_cpu_reference.json")["figures"]
    gpu = load("lm/device_check_lm_h200.json")["gpt2_small"]
    row = table.row("Language model")
    assert bold(row[1]) == [f(lm["summary"]["val_loss"], 3), f(gpu["train_lm"]["ms_per_step"], 1)]
    check(row[2], [f(nano["val_loss_final"], 4), f(gpu["nanogpt"]["ms_per_step"], 1)], "headline LM reference")

    moe = {r["model"]: r for r in load("moe/bench_moe_h200.json")["rows"]}["qwen15_moe"]
    row = table.row("Sharded MoE")
    assert bold(row[1]) == [f(moe["onehot_over_moe"], 2) + "×", f(moe["moe_over_dense"], 2) + "×"]
    assert f"at {moe['experts']} experts" in row[1]

    runs = {r["run"]: r for r in load("diloco/diloco_study.json")}["stream_m2_h30_fp4"]
    row = table.row("Streaming DiLoCo")
    repeats = {tau: float(np.median([next(r for r in raw(f"diloco/link_repeats/tau5_r{k}.json")["rows"]
                                          if r["method"] == method)["utilisation_steady"] for k in (1, 2, 3)]))
               for tau, method in ((5, "streaming_fp4_overlap"), (0, "streaming_fp4"))}
    assert bold(row[1]) == [f(runs["bytes_reduction_vs_dp"], 0) + "×", f(runs["val_loss_ratio_to_dp"], 4) + "×",
                            f(repeats[5], 2), f(repeats[0], 2)]
    assert runs["M"] == 2 and runs["precision"] == "fp4"
    dp_link = link_rows()[("dp", 2)]["10mbit"]
    assert row[2].endswith(f"data-parallel on the same link: {f(dp_link['utilisation'], 2)}")

    saves = {(s["state_mb"], s["mode"]): s for s in load("checkpoint/bench_checkpoint.json")["saves"]}
    row = table.row("Checkpointing")
    assert bold(row[1]) == [pct(saves[256, "lazy"]["blocking_over_sync_save"], 2) + " %"]
    check(row[2], [pct(saves[256, "async"]["blocking_over_sync_save"], 1), "2"], "headline checkpoint reference")

    scores = load("algoperf/scores/external/scores.json")
    row = table.row("AlgoPerf")
    best, worst = max(scores["scores"], key=scores["scores"].get), min(scores["scores"], key=scores["scores"].get)
    assert bold(row[1]) == [f(scores["scores"][best], 3), f(scores["scores"][worst], 3)]
    assert f"({BASELINE_NAMES[best]})" in row[1] and f"({BASELINE_NAMES[worst]})" in row[1]
    self_tuning = load("algoperf/scores/self/scores.json")["trial_times_s"]
    trials = sum(_reached(per, w)[1] for scored in (scores["trial_times_s"], self_tuning)
                 for per in scored.values() for w in scores["base_workloads"])
    assert row[1].endswith(f", {trials} trials"), row[1]
    loaded = load("algoperf/loaded/scores/external/scores.json")["scores"]
    moved = max(abs(loaded[b] - scores["scores"][b]) for b in scores["scores"])
    kept = sorted(loaded, key=loaded.get) == sorted(scores["scores"], key=scores["scores"].get)
    assert f"every score within {f(moved, 3)} (goal 0.05), ranking {'kept' if kept else 'not kept'}" in row[2], row[2]

    keep, heur = malloc_of("malloc_eval_rollout32_keep_best.json"), malloc_of("malloc_eval.json", "heuristic")
    row = table.row("mallocMuZero")
    assert bold(row[1]) == [f(keep["gap"], 2) + " %", pct(keep["ge"]) + " %"]
    check(row[2], [f(heur["gap"], 2)], "headline malloc reference")
    whole = malloc_rollouts(BY_SIZE, 0, simulations=0)
    programs = {r["instance"]: r for r in load("malloc/malloc_programs_heuristic.json")}
    at_least = sum(whole[n]["benefit"] >= programs[n]["benefit"] for n in programs)
    assert (f"≥ the heuristic on {at_least} of 4 held-out whole programs, the 1,781-buffer GPT-2-small step in "
            f"{f(whole['gpt2_small_step']['wall_time_s'] / 60, 1)} min") in row[1], row[1]

    pair, alone = jssp_means("jssp_eval_agent_cpsat60_portfolio.json"), jssp_means("jssp_eval_cpsat60_portfolio.json")
    row = table.row("Job shop")
    assert bold(row[1]) == [f(np.mean(list(pair.values())), 2) + " %"]
    check(row[2], [f(np.mean(list(alone.values())), 2)], "headline job-shop reference")
    assert sorted(pair) == sorted(TAILLARD[1:])


def test_results_index_lists_the_headline_files():
    """results/README.md names, for each headline row, files that exist."""
    text = (RESULTS / "README.md").read_text()
    table = tables_of(text.split("## The README's headline figures")[1])[0]
    for row in table.rows:
        for link in re.findall(r"\]\(([^)]+)\)", row[2]):
            assert (RESULTS / link).is_file(), link
    for system in SYSTEMS:
        assert f"]({system}/README.md)" in text, system
