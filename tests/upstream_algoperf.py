"""Upstream AlgoPerf's way of reading an experiment tree, for tests that our trees stay readable by it."""
import csv
import os
import pathlib
import re


def upstream_scoring_walk(submission_directory: pathlib.Path) -> list[tuple]:
    """How upstream's score_submissions.py + scoring_utils.get_experiment_df walk a directory: every entry of
    the scored folder is a submission, every entry of a submission a study (os.listdir on it: a file raises
    NotADirectoryError), directories in a study are workloads, ``trial_N`` entries in those are trials.
    Returns (submission, study, workload folder, trial, evaluation rows) per trial, sorted."""
    found = []
    for submission in os.listdir(submission_directory):
        experiment = os.path.join(submission_directory, submission)
        for study in os.listdir(experiment):
            workloads = [w for w in os.listdir(os.path.join(experiment, study))
                         if os.path.isdir(os.path.join(experiment, study, w))]
            for workload in workloads:
                for trial in os.listdir(os.path.join(experiment, study, workload)):
                    if re.match(r"trial_(\d+)", trial):
                        path = os.path.join(experiment, study, workload, trial, "eval_measurements.csv")
                        with open(path) as f:
                            rows = list(csv.DictReader(f))
                        found.append((submission, study, workload, trial, len(rows)))
    return sorted(found)
