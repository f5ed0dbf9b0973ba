"""Scaling laws for sparse training: forms, robust fit, held-out validation, bootstrap, predict.

Flow: ``points`` (runs -> arrays) -> ``fit`` (Huber / L-BFGS-B per ``forms`` entry) ->
``validate`` (held-out splits, form choice) -> ``bootstrap`` (intervals) -> ``predict`` (law.json,
queries) -> ``plots``; ``commands`` wires `castlab fit-law` / `castlab predict`, ``bench`` times
the Epoch reference fit and the bootstrap.
"""
