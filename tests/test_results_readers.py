"""The readers that take a results file as input (``--time_limit_from``) accept the files of results/ as
stored there: a list of records under {"provenance", "records"} (results/README.md, "Provenance")."""
import json
import pathlib

import pytest

from rl.jssp import evaluate as jssp_eval
from rl.malloc import evaluate as malloc_eval

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"


def test_jssp_time_limit_from_reads_a_results_file():
    path = RESULTS / "jssp" / "jssp_eval_cpsat_agent_time.json"
    records = json.loads(path.read_text())["records"]
    insts = jssp_eval.load_instances("taillard", "15x15")
    limits = jssp_eval.read_time_limits(str(path), insts)
    assert limits == {r["instance"]: r["wall_time_s"] for r in records} and len(insts) == 10


def test_malloc_time_limit_from_reads_a_results_file():
    agent = RESULTS / "malloc" / "malloc_programs_muzero4.json"
    cpsat = json.loads((RESULTS / "malloc" / "malloc_programs_cpsat_agent_time.json").read_text())["records"]
    assert malloc_eval.agent_wall_times(str(agent)) == {r["instance"]: r["time_limit_s"] for r in cpsat}
    with pytest.raises(ValueError, match="needs exactly one muzero/alphazero/rollout record"):
        malloc_eval.agent_wall_times(str(RESULTS / "malloc" / "malloc_programs_heuristic.json"))
