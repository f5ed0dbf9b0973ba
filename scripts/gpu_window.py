"""The priority tiers of a one-window study, as sweep files gpu_session.sh runs one after another.

    python scripts/gpu_window.py BASE.yaml OUT_DIR [--rehearse] [--results DIR]

Writes OUT_DIR/tier{0..3}_*.yaml and prints one line per tier, ``NAME PHASE FILE``:

- tier0_teachers: the base sweep's dense teachers (``--phase teachers``);
- tier1_core: CAST and its dense-KD twin, seed 0, every size and budget;
- tier2_baseline: the trained baseline(s) at the budgets the base file gives them, seed 0;
- tier3_seeds: the extra seeds (every ``extra_seeds`` entry of the base file, e.g. seed 1 of
  CAST, dense-KD and the baseline at the largest budget).

Every tier keeps the base file's name, train/eval/teacher settings and results folder, so its
runs have the base file's run ids: together the tiers are exactly the base sweep, and a later
``castlab sweep BASE`` finds them done. ``--rehearse`` rewrites the base for this CPU at toy sizes
(opt-tiny / opt-100k / opt-330k, device cpu, 4 budgets of 2-16 steps, 8k-token teachers) so the
session script can be checked end to end before GPU time is spent.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

CORE_METHODS = ("cast", "dense-kd")
REHEARSAL = {
    "models": ["opt-tiny", "opt-100k", "opt-330k"],
    "budgets": [512, 1024, 2048, 4096],  # 2 ... 16 steps of 4 x 64 tokens
    "teacher": {"tokens": 8192, "batch_size": 8, "eval_every": 1000, "checkpoint_every": 0},
    "train": {"device": "cpu", "seq_len": 64, "batch_size": 4, "threads": 1,
              "checkpoint_every": 0, "final_eval_tokens": 2048},
    "eval": {"every": 8, "tokens": 1024},
    "backend": "local",
}


def _name(method) -> str:
    return method if isinstance(method, str) else method["name"]


def rehearsal(base: dict) -> dict:
    """The base sweep at toy sizes on the CPU (same methods, seeds and structure)."""
    spec = copy.deepcopy(base)
    spec.update(copy.deepcopy(REHEARSAL))
    spec["name"] = f"{base['name']}_rehearsal"
    top = REHEARSAL["budgets"][-1]
    for i, method in enumerate(spec["methods"]):
        if isinstance(method, dict) and "budgets" in method:
            spec["methods"][i] = {**method, "budgets": [top]}
    return spec


def tiers(base: dict) -> list[tuple[str, str, dict]]:
    """(name, phase, sweep dict) of each tier, highest priority first."""
    no_extra = {**base, "extra_seeds": []}
    core = [m for m in base["methods"] if _name(m) in CORE_METHODS]
    others = [m for m in base["methods"] if _name(m) not in CORE_METHODS]
    out = [("tier0_teachers", "teachers", base),
           ("tier1_core", "students", {**no_extra, "methods": core})]
    if others:
        out.append(("tier2_baseline", "students", {**no_extra, "methods": others}))
    if base.get("extra_seeds"):
        out.append(("tier3_seeds", "students", base))  # its seed-0 runs are done by then
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the tier files and print ``NAME PHASE FILE`` per tier."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rehearse", action="store_true")
    parser.add_argument("--results", help="results folder written into every tier")
    args = parser.parse_args(argv)
    base = yaml.safe_load(args.base.read_text())
    if args.rehearse:
        base = rehearsal(base)
    if args.results:
        base["results"] = args.results
    args.out.mkdir(parents=True, exist_ok=True)
    for name, phase, spec in tiers(base):
        path = args.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        print(name, phase, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
