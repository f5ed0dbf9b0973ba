"""Sweeps: a YAML grid (spec) -> a plan of content-hashed runs -> a backend that executes it.

``castlab sweep FILE`` runs or previews a sweep; ``castlab status DIR`` lists a store's runs.
"""
