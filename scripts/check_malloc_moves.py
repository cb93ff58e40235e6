r"""How often the mallocGame's move set misses the unrestricted optimum (rl/malloc/game.py, "Completeness").

    python -m scripts.check_malloc_moves --count=5000 --out=results/malloc/malloc_moves.json

Every flag is a setting of ``rl.malloc.evaluate.MoveSetCheckConfig``: ``count`` random small instances
(``instance.tiny_contended_instance``, seed ``seed``) solved by CP-SAT unrestricted and under the game's
moves; the JSON gives the share where the two optima are equal and the instances where the game's is lower.
"""
from rl.malloc import evaluate
from scripts import common

if __name__ == "__main__":
    common.main(evaluate.MoveSetCheckConfig, evaluate.check_move_set)
