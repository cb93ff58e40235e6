"""The benchmarks (training/benchmarks/) at tiny sizes: each ``run`` returns its record and its table
formats; a bad setting raises a ValueError naming the field, which the command line prints as one line."""
import json
import pathlib
import re
import subprocess
import sys

import pytest

from training.benchmarks import checkpoint as bench_ckpt
from training.benchmarks import diloco as bench_diloco
from training.benchmarks import moe as bench_moe
from training.benchmarks import timing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_interleaved_rounds_discard_warmup_and_keep_order():
    calls = []
    out = timing.interleaved({"a": lambda r: calls.append(("a", r)) or r, "b": lambda r: calls.append(("b", r)) or -r},
                             repeats=2, warmup=1)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert out == {"a": [1, 2], "b": [-1, -2]}


def test_checkpoint_run_tiny(tmp_path):
    cfg = bench_ckpt.BenchCheckpointConfig(sizes_mb="1", modes="sync,lazy", repeats=1, loop_steps=0,
                                           scratch_dir=str(tmp_path))
    record = bench_ckpt.run(cfg)
    assert set(record) == {"benchmark", "config", "saves", "training_loop"} and record["training_loop"] == []
    assert [(r["state_mb"], r["mode"]) for r in record["saves"]] == [(1, "sync"), (1, "lazy")]
    for r in record["saves"]:
        assert {"blocking_s", "durable_s", "extra_rss_mb", "blocking_over_sync_save", "repeats"} <= set(r)
        assert r["durable_s"] >= r["blocking_s"] >= 0 and len(r["repeats"]) == 1
    assert "lazy" in bench_ckpt.format_table(record)


def test_moe_run_tiny():
    cfg = bench_moe.BenchMoEConfig(models="mixtral", tokens=32, d_model=16, repeats=1,
                                   grouped="blocked,dense_equivalent", overlap="off")
    record = bench_moe.run(cfg)
    assert set(record) == {"benchmark", "config", "rows", "grouped_gemm", "overlap"}
    row, = record["rows"]
    assert set(row["median_s"]) == {"dense_equivalent", "moe_dropless", "onehot_capacity"}
    assert row["experts"] == 8 and row["top_k"] == 2 and row["moe_over_dense"] > 0
    grouped, = record["grouped_gemm"]
    assert set(grouped["median_s"]) == {"blocked", "dense_equivalent"} and "blocked_over_dense" in grouped
    assert record["overlap"] == bench_moe.OVERLAP_NOTE  # CPU, overlap off: said, not timed
    assert "mixtral" in bench_moe.format_table(record)


def test_moe_overlap_prediction_follows_the_pipeline_model():
    """overlap=predict: per C, the measured chunk compute g and the exchange a = latency + bytes / (2 C bw)
    combine as T(C) = 2a + g + (C - 1) max(g, 2a) (written out here, not the library's function), the best
    C minimises it, and the record says it is a prediction."""
    record = bench_moe.predict_overlap(["mixtral"], tokens=64, repeats=1, ep=4, bandwidth=1e9, d_model=16)
    r, = record
    assert r["local_experts"] == 2 and "prediction" in r["kind"]
    comm = 2 * 4 * 64 * 2 * 16 * 2 * 3 / 4   # fwd+bwd, float32, tokens * k * d, dispatch + combine, (ep-1)/ep
    for c in ("1", "2", "4", "8"):
        a = r["latency_s"] + comm / (2 * int(c) * 1e9)
        g = r["chunk_compute_s"][c]
        assert g > 0 and r["chunk_exchange_s"][c] == pytest.approx(a)
        assert r["predicted_s"][c] == pytest.approx(2 * a + g + (int(c) - 1) * max(g, 2 * a))
    assert r["predicted_s"][str(r["best_chunks"])] == min(r["predicted_s"].values())
    assert r["predicted_gain"] == pytest.approx(r["predicted_s"]["1"] / min(r["predicted_s"].values()))


def test_bench_diloco_script_end_to_end(devices, tmp_path):
    """``python -m scripts.bench_diloco`` (a README command) at tiny sizes, in its own process: flags ->
    config -> run (inner steps, then sync + merge of the outer step) -> table -> JSON. About 12 s of CPU
    (compiling the DP and DiLoCo inner steps on the 8 host devices); Table 4 is tests/test_comm_sim.py's."""
    out = tmp_path / "bench_diloco.json"
    run = subprocess.run([sys.executable, "-m", "scripts.bench_diloco", "--num_layers=1", "--d_model=16",
                          "--mlp_dim=32", "--batch_size=8", "--seq_len=8", "--steps=1", "--repeats=1",
                          "--outer_precisions=fp32", "--notable4", f"--out={out}"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DiLoCo inner" in run.stdout and "fp32" in run.stdout, run.stdout
    record = json.loads(out.read_text())
    assert set(record) == {"benchmark", "config", "devices", "inner", "machine"}
    assert record["devices"] == 8 and record["config"]["num_layers"] == 1 and not record["config"]["table4"]
    inner = record["inner"]
    assert set(inner["inner_step_s"]) == {"dp", "diloco"} and inner["diloco_inner_throughput_vs_dp"] > 0
    assert list(inner["outer_step"]) == ["fp32"] and inner["outer_step"]["fp32"]["outer_step_s"] > 0
    assert inner["outer_step"]["fp32"]["payload_bytes"] == 4 * inner["num_params"]  # every parameter, 4 bytes


@pytest.mark.parametrize("cls,overrides,match", [
    (bench_ckpt.BenchCheckpointConfig, {"modes": "fast"}, "modes='fast': bad entries ['fast']"),
    (bench_ckpt.BenchCheckpointConfig, {"loop_modes": "sync,x"}, "loop_modes='sync,x': bad entries ['x']"),
    (bench_ckpt.BenchCheckpointConfig, {"sizes_mb": "64,big"}, "sizes_mb='64,big' is not a comma-separated list"),
    (bench_ckpt.BenchCheckpointConfig, {"every": "0"}, "every='0': bad entries [0]"),
    (bench_ckpt.BenchCheckpointConfig, {"repeats": 0}, "repeats=0 must be an integer >= 1"),
    (bench_moe.BenchMoEConfig, {"models": "gpt"}, "models='gpt': bad entries ['gpt']"),
    (bench_moe.BenchMoEConfig, {"dtype": "float16"}, "dtype='float16'; allowed"),
    (bench_moe.BenchMoEConfig, {"impl": "fast"}, "impl='fast'; allowed"),
    (bench_moe.BenchMoEConfig, {"grouped": "blocked,fast"}, "grouped='blocked,fast': bad entries ['fast']"),
    (bench_moe.BenchMoEConfig, {"d_model": 4}, "d_model=4 must be an integer >= 8"),
    (bench_moe.BenchMoEConfig, {"capacity_factor": 0.0}, "capacity_factor=0.0 must be > 0"),
    (bench_diloco.BenchDiLoCoConfig, {"batch_size": 3}, "batch_size=3 must be a multiple of workers=2"),
    (bench_diloco.BenchDiLoCoConfig, {"sim_step_time": 0.0}, "sim_step_time=0.0 must be > 0"),
    (bench_diloco.BenchDiLoCoConfig, {"steps": 0}, "steps=0 must be an integer >= 1"),
    (bench_diloco.BenchDiLoCoConfig, {"outer_precisions": "fp16"}, "outer_precisions='fp16': bad entries"),
])
def test_bad_setting_names_the_field(cls, overrides, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        cls(**overrides)


def test_moe_bad_overlap_mesh_names_the_field(devices):
    with pytest.raises(ValueError, match=re.escape("overlap_mesh='expert:3'")):
        bench_moe.run(bench_moe.BenchMoEConfig(overlap="on", overlap_mesh="expert:3"))


def test_cli_bad_setting_is_one_line():
    out = subprocess.run([sys.executable, "-m", "scripts.bench_checkpoint", "--modes=fast"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --modes='fast'"), out.stderr
    assert "Traceback" not in out.stderr


def test_bench_scripts_import_no_other_script():
    for path in ("scripts/bench_checkpoint.py", "scripts/bench_diloco.py", "scripts/bench_moe.py",
                 "tools/device_check_bucketed.py"):
        source = (ROOT / path).read_text()
        imported = set(re.findall(r"(?:from scripts import |import scripts\.|from scripts\.)(\w+)", source))
        assert imported <= {"common"}, (path, imported)
