r"""Scores AlgoPerf logs: time to target, performance profiles (tau in [1, 4]), benchmark scores.

    python -m scripts.score_algoperf --experiment_dir=/tmp/ap --out_dir=results/algoperf

``--experiment_dir`` holds one folder per submission (each with study_K/WORKLOAD_jax/trial_N) or a
single submission. Targets come from our workload registry, else from each trial's
meta_data_*.json (upstream logs). Writes scores.md (table), scores.json and performance_profiles.png.
"""
from __future__ import annotations

import json
import math
import pathlib

from absl import app, flags

from algoperf import scoring
from algoperf import workloads as workloads_lib
from scripts import common

FLAGS = flags.FLAGS


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def score(experiment_dir: str, out_dir: str | None = None, base_workloads=None,
          study_rule: str = "upstream") -> scoring.ScoreReport:
    logs = scoring.read_experiment(experiment_dir)
    report = scoring.score_experiment(logs, workloads_lib.validation_targets(), workloads_lib.VARIANTS,
                                      base_workloads=base_workloads, study_rule=study_rule)
    out = pathlib.Path(out_dir or experiment_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = scoring.format_table(report)
    reach = scoring.format_reach_table(report)
    (out / "scores.md").write_text(f"{table}\n\nTrials and studies that reached the validation target:\n\n{reach}\n")
    common.write_json_atomic(out / "scores.json", {
        "study_rule": study_rule, "scores": report.scores, "base_workloads": report.base_workloads, "variants": report.variants,
        "workload_times_s": {s: {w: _finite(t) for w, t in per.items()} for s, per in report.workload_times.items()},
        "scored_times_s": {s: {w: _finite(t) for w, t in per.items()} for s, per in report.scored_times.items()},
        "trial_times_s": json.loads(json.dumps(report.trial_times, default=str).replace("Infinity", "null")),
    })
    scoring.plot_profiles(report, out / "performance_profiles.png")
    print(table + "\n\n" + reach)
    return report


def define_flags() -> None:
    """The scorer's flags; defined only when run as a script (so other scripts can import score())."""
    flags.DEFINE_string("experiment_dir", None, "Logs to score.")
    flags.DEFINE_string("out_dir", None, "Where to write scores.md, scores.json and the PNG (default: experiment_dir).")
    flags.DEFINE_list("base_workloads", None, "Base workloads of the profile (default: every non-variant workload found).")
    flags.DEFINE_enum("study_rule", "upstream", list(scoring.STUDY_RULES),
                      "How a study's trials make its time: upstream's scoring code (earliest evaluation index "
                      "reaching the target) or the fastest trial (the rules document's wording).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.experiment_dir:
        raise SystemExit("error: --experiment_dir is required")
    try:
        scoring.read_experiment(FLAGS.experiment_dir)  # a wrong directory fails before anything is written
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    score(FLAGS.experiment_dir, FLAGS.out_dir, FLAGS.base_workloads, FLAGS.study_rule)


if __name__ == "__main__":
    define_flags()
    app.run(main)
