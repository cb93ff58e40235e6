r"""Mutation check: plants the named bugs of tools/mutants.py one at a time in a private copy of the
checkout and runs the tests each must trip; prints the caught/survived table and the catch rate.

    python -m tools.mutation_check --out=results/project/mutation_check.json
    python -m tools.mutation_check --only=fp4_ties_round_up,ppo_pg_sign_flip --timeout=120
    python -m tools.mutation_check --list_mutants        # which mutants still apply (STALE otherwise)

Every flag is a setting of ``tools.mutation.MutationCheckConfig``. The source checkout is never written to.
Exit status 1 when a mutant is STALE (its ``old`` text no longer occurs exactly once) or the canary survives.
"""
from scripts import common
from tools import mutation

if __name__ == "__main__":
    common.main(mutation.MutationCheckConfig, mutation.report)
