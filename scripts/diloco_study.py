r"""Streaming DiLoCo's quality with its spread: data-parallel, DiLoCo, Streaming DiLoCo fp4 and Streaming DiLoCo
with error-feedback compression (int2, sign1, top-k), three seeds each, on the same tokens
(training/benchmarks/diloco_study.py). Needs 8 devices (M = 8 rows): on CPU, 8 virtual ones.

    export XLA_FLAGS=--xla_force_host_platform_device_count=8
    python -m scripts.diloco_study --workdir=/tmp/study --plan_only              # runs, bytes, reductions
    python -m scripts.diloco_study --workdir=/tmp/study --out=results/diloco/study.json   # the study
    python -m scripts.diloco_study --workdir=/tmp/tiny --rows=dp,streaming_fp4_h30_m2 --seeds=0 \
        --train_flags='--steps=60 --d_model=32 --mlp_dim=64 --num_layers=2 --eval_every=30'

Every flag is a setting of ``training.benchmarks.diloco_study.DiLoCoStudyConfig``. Rerunning the same command
skips finished runs and resumes an interrupted one; the table (JSON, .md) and figure (.png) are rewritten after
every run.
"""
from scripts import common
from training.benchmarks import diloco_study


def _preflight(cfg: diloco_study.DiLoCoStudyConfig) -> None:
    """Every row's M divides the devices (one line naming the row if not), before any work."""
    import jax

    n = jax.device_count()
    for row in cfg.row_list:
        m = diloco_study.ROWS[row]["workers"]
        if n % m:
            raise ValueError(f"rows={cfg.rows!r}: {row} has M={m} workers, which does not divide the {n} devices "
                             "(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8)")


def _run(cfg: diloco_study.DiLoCoStudyConfig) -> None:
    command = diloco_study.command_line(cfg)
    record = diloco_study.run_study(cfg, command)
    if not cfg.plan_only:
        print(diloco_study.markdown(record))
        print(f"wrote {cfg.out_path} (.md, .png beside it)")


if __name__ == "__main__":
    common.main(diloco_study.DiLoCoStudyConfig, _run, preflight=_preflight)
