"""Baseline submissions in the upstream AlgoPerf format, each with its tuning search space JSON."""
import pathlib

BASELINES_DIR = pathlib.Path(__file__).resolve().parent
# The external-tuning reference submissions (each NAME.py has NAME_search_space.json beside it).
REFERENCE_BASELINES = ("nadamw", "adamw", "sgd_nesterov", "heavy_ball")
# Short-list search spaces, one per baseline and scored workload (LIST_SPACES_DIR/NAME/WORKLOAD.json), chosen
# leave-one-workload-out from the target-setting trials (algoperf.search_spaces).
LIST_SPACES_DIR = BASELINES_DIR / "search_spaces"


def submission_path(name: str) -> pathlib.Path:
    return BASELINES_DIR / f"{name}.py"


def search_space_path(name: str) -> pathlib.Path:
    return BASELINES_DIR / f"{name}_search_space.json"


def list_search_space_path(name: str, workload: str) -> pathlib.Path:
    return LIST_SPACES_DIR / name / f"{workload}.json"


def check_baseline_names(field: str, names) -> None:
    """ValueError naming ``field`` unless every baseline in ``names`` has its search space beside it."""
    for name in names:
        if not search_space_path(name).exists():
            raise ValueError(f"{field}={','.join(names)!r}: {name!r} has no search space "
                             f"{search_space_path(name).name} in {BASELINES_DIR}")
