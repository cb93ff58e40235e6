"""The study's plan (training/benchmarks/diloco_study.py): written without training, its byte columns equal to
the trainer's own accounting (training.diloco.byte_budget), and an ``out`` path in a folder that does not
exist yet accepted."""
import json

from training import diloco as diloco_exp
from training.benchmarks import diloco_study


def test_plan_only_writes_the_table_with_the_byte_budget_of_every_row(tmp_path):
    out = tmp_path / "new" / "plan.json"
    flags = "--steps=40 --d_model=32 --mlp_dim=64 --num_layers=2 --eval_every=20"
    cfg = diloco_study.DiLoCoStudyConfig(workdir=str(tmp_path / "w"), out=str(out), rows="dp,streaming_fp4_h30_m2",
                                         seeds="0", train_flags=flags, plan_only=True)
    record = diloco_study.run_study(cfg)
    on_disk = json.loads(out.read_text())
    assert on_disk["rows"] == json.loads(json.dumps(record["rows"]))
    assert [r["row"] for r in on_disk["rows"]] == ["dp", "streaming_fp4_h30_m2"]
    assert on_disk["finished_runs"] == 0 and on_disk["planned_runs"] == 2
    assert out.with_suffix(".md").is_file()
    for row in on_disk["rows"]:
        budget = diloco_exp.byte_budget(cfg.train_config(next(r for r in cfg.plan() if r.row == row["row"])))
        assert row["bytes_between_workers"] == budget["bytes_sent"], row["row"]
        assert row["mesh_bytes"] == budget["mesh_bytes_sent"], row["row"]
    dp, streaming = on_disk["rows"]
    assert 0 < streaming["bytes_between_workers"] < dp["bytes_between_workers"]
