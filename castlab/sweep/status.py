"""What a results folder or a sweep's plan holds: `castlab status` tables, JSON and CSV, the
teacher convergence check and the flagged-runs lines that `castlab sweep`, `castlab status` and
`castlab fit-law` end with.

Loads without torch, pyarrow or pandas (each function imports what it uses).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from castlab.errors import UserError

if TYPE_CHECKING:
    from castlab.sweep.plan import PlannedRun
    from castlab.sweep.spec import SweepSpec

# dense-KD at the largest budget may improve on its teacher by at most this (DESIGN.md):
# more means the teacher was not converged and the sparse law would measure leftover pretraining.
TEACHER_CONVERGENCE_TOLERANCE = 0.02


def plan_rows(plan: list[PlannedRun]):
    """The stored rows of a plan's runs, teachers included, as one frame (empty without any)."""
    import pandas as pd

    from castlab import store

    rows = []
    for run in plan:
        try:
            rows.append(store.read_row(run.run_dir))
        except Exception:  # noqa: BLE001 - no row (blocked, interrupted) or unreadable: not flagged here
            continue
    return pd.DataFrame(rows)


def teacher_gains(rows) -> list[dict]:
    """Per model with dense-KD runs: how much dense-KD at its largest budget improves on the
    teacher's PPL (mean over seeds; negative: worse), and whether that is within
    TEACHER_CONVERGENCE_TOLERANCE."""
    if not len(rows) or "teacher_ppl" not in rows:
        return []
    kd = rows[(rows["method"] == "dense-kd") & (rows["status"] == "ok")]
    out = []
    for model, group in kd.groupby("model"):
        top = group[group["tokens"] == group["tokens"].max()]
        gain = float(((top["teacher_ppl"] - top["ppl"]) / top["teacher_ppl"]).mean())
        out.append({"model": model, "tokens": int(top["tokens"].iloc[0]),
                    "improvement": gain if math.isfinite(gain) else None,
                    "converged": bool(gain <= TEACHER_CONVERGENCE_TOLERANCE)
                    if math.isfinite(gain) else None})
    return out


def flagged_lines(rows) -> list[str]:
    """What the checks flag among store rows: teachers dense-KD improves by more than the
    tolerance, runs whose AdamS decay did not finish (``decay_budget_warning``), failed runs;
    or one line saying which checks passed. Printed at the end of a sweep and by fit-law."""
    if not len(rows) or "status" not in rows:
        return []
    lines = []
    gains = teacher_gains(rows)
    tol = f"{100 * TEACHER_CONVERGENCE_TOLERANCE:.0f}%"
    for g in gains:
        if g["converged"] is False:
            lines.append(f"flagged: teacher {g['model']} NOT CONVERGED: dense-kd at "
                         f"{g['tokens']:,} tokens improves on it by {100 * g['improvement']:.2f}% "
                         f"(> {tol}); sparse-vs-dense gaps and the law include leftover "
                         "pretraining: train the teacher longer (teacher.tokens)")
    ok = rows[rows["status"] == "ok"]
    warned = (ok[ok["decay_budget_warning"].fillna("").astype(str).str.len() > 0]
              if "decay_budget_warning" in ok else ok.iloc[:0])
    for method, group in warned.groupby("method"):
        total = int((ok["method"] == method).sum())
        budgets = ", ".join(f"{int(t):,}" for t in sorted(set(group["tokens"])))
        lines.append(f"flagged: {len(group)} of {total} {method} runs did not finish AdamS's "
                     f"decay (tokens {budgets}): the masked weights were not driven to zero, so "
                     "the final prune is not lossless and a law fitted on them includes that "
                     "shock (decay_budget_warning in the rows; raise lambda, the lr or the steps)")
    failed = rows[rows["status"] == "failed"]
    if len(failed):
        lines.append(f"flagged: {len(failed)} failed run(s): {', '.join(failed['run_id'][:6])}"
                     + (" ..." if len(failed) > 6 else "") + " (reasons: castlab status)")
    if lines:
        return lines
    checked = [g for g in gains if g["converged"] is not None]
    passed = [f"every teacher converged (dense-kd within {tol} of it at the largest budget)"
              if checked else "teacher convergence not checked (no dense-kd row with its "
              "teacher's PPL)"]
    if "decay_budget_warning" in ok:
        passed.append("every run that pruned with AdamS finished its decay")
    return ["checks: no run flagged: " + "; ".join(passed)]


def _status_scan(root: Path):
    """(store scan, its rows, [(run_id, state)] of run folders without a row) of a results
    directory; a one-line UserError when it is not one."""
    from castlab import store

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such results directory (nothing has run there yet; "
                        "`castlab status SWEEP.yaml` shows a planned sweep's runs)")
    found = store.scan(root)  # one row per run id; corrupt files and copied folders named
    done_dirs = {p.parent for p in store.result_paths(root)}
    unfinished = [(d.name, "stray" if store.is_stray(d) else store.run_state(d)) for d in sorted(
        p.parent for p in root.rglob(store.CONFIG_FILE)) if d not in done_dirs]
    return found, found.frame(), unfinished


# the mask life of sparse runs (drift from the step-0 mask at T/2 and at the end, mean flip rate
# over every refresh, masked step towards zero / lr); older rows lack them
LIFE_COLUMNS = ("prune_shock", "mask_drift_half", "mask_drift", "mask_flip_rate", "masked_step_lr")


def _run_view(rows):
    """The status columns of done and failed rows, sorted by model, method, tokens, seed."""
    view = rows.assign(state=rows["status"].map({"ok": "done", "failed": "failed"}))
    cols = ["run_id", "method", "model", "tokens", "seed", "state", "eval_loss", "ppl",
            *[c for c in LIFE_COLUMNS if c in view], "wall_seconds", "reason"]
    view = view.reindex(columns=cols)
    return view.sort_values(["model", "method", "tokens", "seed"], na_position="last")


def _state_counts(rows, unfinished, found) -> Counter:
    return Counter(["done" if s == "ok" else "failed" for s in rows["status"]]
                   + [s for _, s in unfinished] + ["corrupt"] * len(found.corrupt))


def status_table(root: Path) -> str:
    """The status table of a results directory: every run, done/failed (reason)/running/pending,
    corrupt (the file and what is wrong), stray, and copied folders that were not counted."""
    found, rows, unfinished = _status_scan(root)
    lines = []
    if len(rows):
        view = _run_view(rows)
        view["reason"] = view["reason"].fillna("").astype(str).str.slice(0, 60)
        lines.append(view.to_string(index=False, formatters=column_formats(view), na_rep="-"))
    for run_id, state in unfinished:
        hint = "  (config only, nothing trained: delete it or rerun it)" if state == "stray" else ""
        lines.append(f"{run_id:<22} {state}{hint}")
    for file, message in found.corrupt:  # redone by the next sweep, the file moved aside
        lines.append(f"{file.parent.name:<22} corrupt  {message}")
    for run_id, kept, skipped in found.duplicates:
        lines.append(f"{skipped.parent.name:<22} duplicate of {run_id}, not counted  ({skipped}; "
                     f"kept {kept})")
    lines.extend(convergence_check(rows))
    # the other checks (the teacher's is the line above): unfinished decays, failures, or a pass
    lines.extend(line for line in flagged_lines(rows) if not line.startswith("flagged: teacher"))
    states = _state_counts(rows, unfinished, found)
    dupes = f"; {len(found.duplicates)} duplicate folders skipped" if found.duplicates else ""
    lines.append(f"{sum(states.values())} runs: "
                 + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + dupes
                 + " (dense teachers live in the cache and are not counted here)")
    return "\n".join(lines)


def status_records(root: Path) -> dict:
    """What status_table shows, as data: {results, runs: [one dict per run], teacher_checks,
    counts}; unfinished, corrupt and duplicate folders are runs with that state."""
    import json

    found, rows, unfinished = _status_scan(root)
    runs = json.loads(_run_view(rows).to_json(orient="records")) if len(rows) else []
    runs += [{"run_id": run_id, "state": state} for run_id, state in unfinished]
    runs += [{"run_id": file.parent.name, "state": "corrupt", "reason": message,
              "file": str(file)} for file, message in found.corrupt]
    runs += [{"run_id": skipped.parent.name, "state": "duplicate", "duplicate_of": run_id,
              "file": str(skipped)} for run_id, kept, skipped in found.duplicates]
    return {"results": str(root), "runs": runs, "teacher_checks": teacher_gains(rows),
            "counts": dict(sorted(_state_counts(rows, unfinished, found).items()))}


def plan_records(spec: SweepSpec) -> list[dict]:
    """Every planned run of a sweep file with its state, as data (teachers first)."""
    from castlab import store
    from castlab.sweep.plan import build_plan

    return [{"run_id": r.run_id, "kind": r.kind, "state": store.run_state(r.run_dir),
             "method": r.config.method, "model": r.config.model, "tokens": int(r.config.tokens),
             "seed": r.config.seed, "run_dir": str(r.run_dir)} for r in build_plan(spec)]


def write_csv(records: list[dict]) -> None:
    """Records as CSV on stdout: the union of their keys, in first-seen order."""
    import csv

    fields = list(dict.fromkeys(k for r in records for k in r))
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)


# Fixed decimals per column of the status table, so a column's numbers line up.
COLUMN_DECIMALS = {"eval_loss": 4, "ppl": 2, "wall_seconds": 1, "prune_shock": 4,
                   "mask_drift_half": 4, "mask_drift": 4, "mask_flip_rate": 4, "masked_step_lr": 3}


def column_formats(view) -> dict:
    """to_string formatters: fixed decimals per float column, '-' for a missing value."""
    def fixed(decimals: int):
        return lambda x: "-" if x != x else f"{x:,.{decimals}f}"  # x != x: NaN

    return {c: fixed(COLUMN_DECIMALS.get(c, 4)) for c in view.columns
            if view[c].dtype.kind == "f"}


def plan_status(spec: SweepSpec) -> str:
    """Status of a sweep file's plan: every planned run's state, teachers counted apart."""
    records = plan_records(spec)
    labels = {r["run_id"]: f"{r['method']} {r['model']} tokens={r['tokens']} seed={r['seed']}"
              for r in records}
    lines = [f"{'run_id':<22} {'kind':<7} {'status':<8} cell"]
    lines += [f"{r['run_id']:<22} {r['kind']:<7} {r['state']:<8} {labels[r['run_id']]}"
              for r in records]
    for kind in ("teacher", "run"):
        group = [r["state"] for r in records if r["kind"] == kind]
        if group:
            counts = Counter(group)
            lines.append(f"{counts.get('done', 0)} of {len(group)} {kind}s done ("
                         + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
                         + ("; teachers live in the cache, shared by every sweep"
                            if kind == "teacher" else f"; results in {spec.results_dir()}"))
    return "\n".join(lines)


def convergence_check(rows) -> list[str]:
    """Per model: does dense-KD at its largest budget improve the teacher's PPL by <= 2%?"""
    lines = []
    for g in teacher_gains(rows):
        head = f"teacher check {g['model']}: dense-kd at {g['tokens']:,} tokens"
        if g["improvement"] is None:
            lines.append(f"{head}: no PPL to compare with the teacher's")
            continue
        gain = g["improvement"]
        verdict = "ok" if g["converged"] else "NOT CONVERGED"
        change = (f"improves on the teacher's PPL by {100 * gain:.2f}%" if gain >= 0
                  else f"is {100 * -gain:.2f}% worse than the teacher's PPL")
        lines.append(f"{head} {change} (an improvement over "
                     f"{100 * TEACHER_CONVERGENCE_TOLERANCE:.0f}% means an unconverged teacher): "
                     f"{verdict}")
    return lines
