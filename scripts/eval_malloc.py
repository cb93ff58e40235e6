r"""Evaluates mallocGame solvers on a directory of instances (rl/malloc/evaluate.py).

    python -m scripts.eval_malloc --solver=heuristic --out=/tmp/heuristic.json
    python -m scripts.eval_malloc --solver=cpsat --time_limit=10 --instances=rl/malloc/instances/test
    python -m scripts.eval_malloc --solver=all --out=/tmp/all.json     # every solver + a comparison table
    python -m scripts.eval_malloc --solver=muzero --simulations=64      # the shipped mallocMuZero network
    python -m scripts.eval_malloc --solver=alphazero --simulations=64   # ablation: search over the true game
    python -m scripts.eval_malloc --solver=muzero --simulations=32 --samples=128   # best of 128 episodes
    # your own program: heuristic vs CP-SAT vs the rollout search, a table, every placement and the memory maps
    python -m scripts.eval_malloc --program=mypackage.mymodule:make_step --out=runs/mine.json   # + runs/mine.png
    python -m scripts.eval_malloc --hlo=dump/module_0042.jit_step.cpu_after_optimizations.txt --capacity_bytes=8388608

Every flag is a setting of ``rl.malloc.evaluate.EvalMallocConfig``; the solvers and the records of --out
are described in rl/malloc/evaluate.py.
"""
from rl.malloc import evaluate
from scripts import common

if __name__ == "__main__":
    common.main(evaluate.EvalMallocConfig, evaluate.run)
