"""Sweeps: a YAML grid (spec) -> a plan of content-hashed runs -> a backend that executes it.

``castlab sweep FILE`` runs or previews a sweep; ``castlab status DIR`` lists a store's runs.
"""

# Plans larger than this are refused unless `castlab sweep --allow-large`: a typo in seeds or
# budgets (100k seeds planned 400k runs) should cost a one-line error, not days of compute.
# (Here rather than in plan.py so the command line's help names it without loading torch.)
MAX_PLANNED_RUNS = 2000
