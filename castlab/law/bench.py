"""Timed checks of the fitter for `castlab bench fit`: Epoch's Chinchilla refit and a bootstrap."""

from __future__ import annotations

import time
from pathlib import Path

from castlab.errors import UserError
from castlab.law.bootstrap import bootstrap
from castlab.law.epoch import EPOCH_INTERVALS, EPOCH_NAIVE_SECONDS, EPOCH_PARAMS, epoch_points
from castlab.law.fit import fit_form, huber_objective
from castlab.law.synthetic import SIZES, synthetic_case

EPOCH_TARGET_SECONDS = EPOCH_NAIVE_SECONDS / 100
BOOT_TARGET_SECONDS = 30.0  # our own budget: a 1000-draw law fit should stay interactive
BENCH_BUDGETS = tuple(1e6 * 4.0**k for k in range(5))  # 4 sizes x 5 budgets x 3 seeds = 60 runs


def _row(bench, measured, unit, target, ok, note="") -> dict:
    return {"bench": bench, "measured": float(measured), "unit": unit, "target": target,
            "ok": bool(ok), "note": note}


def run_fit_bench(epoch_csv: str | Path | None = None, repeats: int = 3) -> list[dict]:
    """Rows: Epoch chinchilla fit (time, objective, parameters vs their 95% intervals) and a
    1000-draw bootstrap on 60 synthetic runs (time). The fit time is the best of ``repeats``."""
    rows = []
    try:
        pts = epoch_points(epoch_csv)
    except UserError as err:
        return [_row("epoch chinchilla fit", float("nan"), "s", f"<= {EPOCH_TARGET_SECONDS:.2f} s",
                     False, str(err))]
    times, fit = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit = fit_form("chinchilla", pts)
        times.append(time.perf_counter() - t0)
    theirs = huber_objective("chinchilla", pts, EPOCH_PARAMS)
    params = fit.params()
    inside = {k: lo <= params[k] <= hi for k, (lo, hi) in EPOCH_INTERVALS.items()}
    rows.append(_row("epoch chinchilla fit time", min(times), "s",
                     f"<= {EPOCH_TARGET_SECONDS:.2f} s (naive: {EPOCH_NAIVE_SECONDS:.0f} s)",
                     min(times) <= EPOCH_TARGET_SECONDS,
                     f"{len(pts)} points, {fit.starts} grid starts; runs: "
                     + ", ".join(f"{t:.2f}" for t in times)))
    rows.append(_row("epoch chinchilla objective", fit.objective, "summed Huber",
                     f"<= {theirs:.7g} (Epoch's params)", fit.objective <= theirs,
                     ", ".join(f"{k} {params[k]:.4g} (Epoch {EPOCH_PARAMS[k]:.4g})"
                               for k in EPOCH_PARAMS)))
    rows.append(_row("epoch params inside their 95% intervals", sum(inside.values()), "of 5",
                     "5", all(inside.values()),
                     ", ".join(k for k, v in inside.items() if not v) or "all inside"))
    runs = synthetic_case("chinchilla", rng_seed=0, seeds=3, budgets=BENCH_BUDGETS, sizes=SIZES)
    base = fit_form("chinchilla", runs)
    boot = bootstrap(base, runs, draws=1000, seed=0)
    rows.append(_row(f"bootstrap 1000 draws, {len(runs)} runs", boot.seconds, "s",
                     f"<= {BOOT_TARGET_SECONDS:.0f} s", boot.seconds <= BOOT_TARGET_SECONDS,
                     f"chinchilla form, {boot.failed} unconverged draws"))
    return rows
