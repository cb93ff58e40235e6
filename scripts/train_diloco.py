r"""Trains the byte-level LM data-parallel, with DiLoCo or with Streaming DiLoCo (training/diloco.py),
counting every byte sent.

    python -m scripts.train_diloco --workdir=/tmp/dp --algo=dp --workers=2 --steps=1200
    python -m scripts.train_diloco --workdir=/tmp/sd --algo=streaming --workers=2 --inner_steps=60 \
        --fragments=2 --overlap_tau=1 --alpha=0.5 --outer_precision=fp4 --steps=1200
    python -m scripts.train_diloco --workdir=/tmp/cmp --compare=/tmp/dp,/tmp/sd   # table + plots

Every flag but ``--compare`` is a setting of ``training.diloco.TrainDiLoCoConfig``. Writes config.json,
metrics.jsonl (and TensorBoard event files), loss_curve.png, bytes_curve.png, summary.json and Orbax
checkpoints; ``--compare=DIR,...`` instead writes comparison.json / comparison.md / comparison_loss.png for
finished runs into --workdir.
"""
from absl import flags

from scripts import common
from training import diloco


def _compare_flag() -> None:
    flags.DEFINE_string("compare", "", "Comma-separated finished run dirs: write a comparison table instead.")


def _maybe_compare(cfg) -> bool:
    if not flags.FLAGS.compare:
        return False
    diloco.compare([d for d in flags.FLAGS.compare.split(",") if d], diloco.run_lib.require_workdir(cfg.workdir))
    return True


if __name__ == "__main__":
    common.main(diloco.TrainDiLoCoConfig, diloco.train, preflight=diloco.check_devices, async_collectives=True,
                extra_flags=_compare_flag, dispatch=_maybe_compare)
