r"""Evaluates a job-shop solver on Taillard (shipped) or a directory of instances (rl/jssp/evaluate.py).

    python -m scripts.eval_jssp --solver=spt --out=results/jssp/jssp_eval_spt.json
    python -m scripts.eval_jssp --solver=agent --samples=128 --sizes=15x15,20x15 --out=/tmp/agent128.json
    python -m scripts.eval_jssp --solver=cpsat --time_limit_from=/tmp/agent128.json --out=/tmp/cpsat.json
    python -m scripts.eval_jssp --solver=cpsat --time_limit=60 --instances=~/my_instances

Every flag is a setting of ``rl.jssp.evaluate.EvalConfig``. ``--out`` is a JSON list, one record per
instance (makespan, start times, gap to the best known upper bound, wall time); a table of the mean gap per
instance-size group is printed.
"""
from rl.jssp import evaluate
from scripts import common

if __name__ == "__main__":
    common.main(evaluate.EvalConfig, evaluate.run)
