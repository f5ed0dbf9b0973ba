"""`castlab sweep FILE` and `castlab status DIR`, and the sweep driver they share.

The module loads without torch, pyarrow or pandas (each function imports what it uses), so the
command line's parsers build at once; see tests/test_cli_startup.py.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from castlab.errors import UserError
from castlab.sweep import MAX_PLANNED_RUNS
from castlab.sweep.phases import PHASES

if TYPE_CHECKING:
    from castlab.sweep.plan import PlannedRun
    from castlab.sweep.progress import SweepProgress
    from castlab.sweep.runner import Outcome
    from castlab.sweep.spec import SweepSpec

# dense-KD at the largest budget may improve on its teacher by at most this (DESIGN.md):
# more means the teacher was not converged and the sparse law would measure leftover pretraining.
TEACHER_CONVERGENCE_TOLERANCE = 0.02


LEFT_STATES = ("pending", "running", "corrupt")  # states whose runs a sweep still has to do


def plan_estimates(plan: list[PlannedRun], spec: SweepSpec | None = None,
                   basis_lines: list[str] | None = None) -> dict[str, float | None]:
    """Estimated wall seconds per run id (castlab.sweep.estimate: stored rows, else timed steps
    here; CUDA runs from stored CUDA rates or the H200 model, never timed here)."""
    from castlab.sweep import estimate

    return {k: v.seconds for k, v in estimate.plan_estimates(plan, spec, basis_lines).items()}


def _measured(run_dir: Path) -> float | None:
    """Wall seconds of a done run, from its row."""
    from castlab import store

    try:
        return float(store.read_row(run_dir)["wall_seconds"])
    except Exception:  # noqa: BLE001 - a missing or unreadable row just has no time
        return None


def plan_table(plan: list[PlannedRun], spec: SweepSpec | None = None) -> tuple[list[str], float]:
    """Lines of the dry-run table (estimate, what it rests on, and the measured time of done
    runs; with ``spec`` per-phase totals and wall times on its backend, and the basis of the
    estimates per model and method) and the estimated seconds of work left (on a local CPU
    backend the wall time of its queue over the CPU slots, else summed over runs)."""
    from castlab import store
    from castlab.device import wants_cuda
    from castlab.sweep import estimate, gpu_estimate, phases
    from castlab.sweep.plan import format_seconds

    basis: list[str] = []
    detailed = estimate.plan_estimates(plan, spec, basis)
    estimates = {k: v.seconds for k, v in detailed.items()}
    lines = [f"{'run_id':<22} {'kind':<7} {'status':<8} {'estimate':>8} {'basis':<5} "
             f"{'took':>8}  cell"]
    left = 0.0
    for run in plan:
        state = store.run_state(run.run_dir)
        seconds = estimates[run.run_id]
        if state in LEFT_STATES and seconds is not None:
            left += seconds
        took = format_seconds(_measured(run.run_dir)) if state == "done" else ""
        lines.append(f"{run.run_id:<22} {run.kind:<7} {state:<8} {format_seconds(seconds):>8} "
                     f"{detailed[run.run_id].basis:<5} {took:>8}  {run.label}")
    if spec is not None and spec.backend_name == "local" and not any(
            wants_cuda(r.config.device) for r in plan):  # the CPU queue's wall, not the sum
        todo = [r for r in plan if store.run_state(r.run_dir) in LEFT_STATES]
        left = estimate.wall_seconds(todo, estimates, spec)
    if spec is not None:
        lines += phases.phase_summary(plan, estimates, spec, LEFT_STATES)
        if any(wants_cuda(r.config.device) for r in plan):
            lines.append(gpu_estimate.assumptions())
    if basis:
        lines.append("estimates rest on (rows: stored runs' median rate and overhead; timed: "
                     f"real steps timed here; each run + {estimate.FORK_SECONDS:.0f} s to start):")
        lines += basis
    return lines, left


def run_sweep(spec: SweepSpec, retry_failed: bool = False, progress: bool = True,
              tracker: SweepProgress | None = None, phase: str = "all") -> dict[str, Outcome]:
    """Teachers first, then every run whose teacher is done; returns {run_id: outcome}.

    ``phase`` 'teachers' stops after the teachers; 'students' trains no teacher (the caller
    checks first that the ones it needs are done, see castlab.sweep.phases).
    ``tracker`` (local backend) prints 'run k of N, elapsed, ETA' above each run's own bar.
    """
    from castlab import store
    from castlab.sweep.backends import make_backend
    from castlab.sweep.plan import build_plan

    plan = build_plan(spec)
    backend = make_backend(spec.backend_name, spec.backend_options, progress=progress)
    if tracker is not None and hasattr(backend, "tracker"):
        backend.tracker = tracker
    teachers = [r for r in plan if r.kind == "teacher"] if phase != "students" else []
    outcomes = backend.execute(teachers, retry_failed) if teachers else {}
    if phase == "teachers":
        return outcomes
    ready, blocked = [], []
    for run in (r for r in plan if r.kind == "run"):
        if run.needs is None or store.run_state(run.needs) == "done":
            ready.append(run)
        else:
            blocked.append(run)
    outcomes.update(backend.execute(ready, retry_failed) if ready else {})
    for run in blocked:
        outcomes[run.run_id] = "blocked"
        print(f"  blocked {run.run_id}  {run.label}: teacher {run.needs.name} is not done")
    return outcomes


def _log_invocation(spec: SweepSpec, started: float, counts: Counter,
                    overrides: list[str] | None = None) -> None:
    """Append this invocation's wall time, outcome counts and --set overrides to
    RESULTS/sweep_log.jsonl."""
    import json
    import socket

    from castlab import store

    entry = {"sweep": spec.name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
             "wall_seconds": round(time.time() - started, 1), "host": socket.gethostname(),
             "backend": spec.backend_name, "outcomes": dict(sorted(counts.items()))}
    if overrides:
        entry["overrides"] = list(overrides)
    results = Path(spec.results_dir())
    results.mkdir(parents=True, exist_ok=True)
    with open(results / store.SWEEP_LOG_FILE, "a") as log:  # one short append: no partial lines
        log.write(json.dumps(entry) + "\n")


def load_for_command(args) -> SweepSpec:
    """The sweep file with the command line's --set, --backend and --results applied,
    size-checked."""
    from castlab.sweep.plan import check_plan_size
    from castlab.sweep.spec import load_sweep

    # --results given on the command line may name any writable place (see SweepSpec.results);
    # --set values are put into the parsed file before it is validated (castlab.sweep.overrides)
    spec = load_sweep(args.file, results=getattr(args, "results_dir", None),
                      overrides=getattr(args, "overrides", None) or ())
    if getattr(args, "backend", None):
        spec.backend = args.backend
        spec.validate(str(args.file))
    check_plan_size(spec, allow_large=getattr(args, "allow_large", False))
    return spec


def _cmd_sweep(args) -> int:
    from castlab import store
    from castlab.device import wants_cuda
    from castlab.sweep import phases
    from castlab.sweep.plan import build_plan, format_seconds
    from castlab.sweep.progress import SweepProgress

    spec = load_for_command(args)
    if getattr(args, "verify", None) is not None:  # rerun K done runs; compare with their rows
        from castlab.sweep.verify import verify

        lines, identical = verify(spec, args.verify, progress=not args.quiet)
        print("\n".join(lines))
        return 0 if identical else 1
    phase = getattr(args, "phase", "all")
    if args.dry_run:
        plan = phases.select(build_plan(spec), phase)
        lines, left = plan_table(plan, spec)
        print("\n".join(lines))
        counts = Counter(store.run_state(r.run_dir) for r in plan)
        shared = any(wants_cuda(r.config.device) for r in plan)  # runs may share cards
        print(f"{len(plan)} runs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
              f"estimated time left {format_seconds(left)}"
              + (" summed over runs (wall per phase above)" if shared else
                 "" if spec.backend_name == "local" else " summed over runs")
              + f"; results in {spec.results_dir()}")
        return 0

    def stop(signum, frame):  # SIGTERM (scancel, kill) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    plan = phases.select(build_plan(spec), phase)
    if phase == "students":  # never trains a teacher: refuse before anything starts
        phases.check_teachers_ready(build_plan(spec), args.file)
    previous = signal.signal(signal.SIGTERM, stop)
    todo_states = (*LEFT_STATES, "failed") if args.retry_failed else LEFT_STATES
    states = {r.run_id: store.run_state(r.run_dir) for r in plan}
    todo = [r for r in plan if states[r.run_id] in todo_states]
    print_skipped(plan, states, todo, spec, args.retry_failed)
    # --quiet shows no progress lines: skip the estimate (it may time a few steps per preset)
    # (of the whole plan, as the dry run: done runs' rows are what the rates come from)
    every = {} if args.quiet or not todo else plan_estimates(plan, spec)
    estimates = {r.run_id: every.get(r.run_id) or 0.0 for r in todo}
    expected, slots = None, 1
    if estimates and spec.backend_name == "local" and not any(
            wants_cuda(r.config.device) for r in plan):
        from castlab.sweep import estimate

        expected = estimate.wall_seconds(todo, estimates, spec)
        slots = estimate.cpu_slots(spec)
    started = time.time()
    # 'run k/N' counts the runs this invocation has to do; the skipped ones get no line
    tracker = SweepProgress(total=len(todo), estimates=estimates, started=started, slots=slots)
    try:
        outcomes = run_sweep(spec, retry_failed=args.retry_failed, progress=not args.quiet,
                             tracker=tracker, phase=phase)
    finally:
        signal.signal(signal.SIGTERM, previous)
    counts = Counter(outcomes.values())
    _log_invocation(spec, started, counts, getattr(args, "overrides", None) or [])
    teachers = sum(r.kind == "teacher" for r in plan)
    print(f"sweep {spec.name}{'' if phase == 'all' else f' (phase {phase})'}: {len(outcomes)} runs ({teachers} teacher"
          f"{'s' * (teachers != 1)} + {len(outcomes) - teachers}) in {format_seconds(time.time() - started)}"
          + (f" (estimated {format_seconds(expected)} before it started)" if expected is not None
             else f" (estimated {format_seconds(sum(estimates.values()))} of run time before it "
             "started)" if estimates else "") + ": "
          + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    for line in flagged_lines(_plan_rows(plan)):
        print(line)
    print(f"results in {spec.results_dir()} (castlab status {spec.results_dir()})")
    return 1 if counts.get("failed") or counts.get("blocked") else 0


def print_skipped(plan: list[PlannedRun], states: dict[str, str], todo: list[PlannedRun],
                  spec: SweepSpec, retry_failed: bool) -> None:
    """One line for the planned runs this invocation skips (done, or failed without
    --retry-failed), instead of a 'run k/N' line each."""
    skipped = Counter(states[r.run_id] for r in plan if r not in todo)
    if not skipped:
        return
    failed = skipped.get("failed", 0)
    print(f"sweep {spec.name}: skipping {sum(skipped.values())} of {len(plan)} planned runs ("
          + ", ".join(f"{n} {s}" for s, n in sorted(skipped.items())) + ")"
          + (" (--retry-failed reruns the failed ones)" if failed and not retry_failed else "")
          + f"; {len(todo)} to run", flush=True)


def _plan_rows(plan: list[PlannedRun]):
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


def _cmd_status(args) -> int:
    import json

    target = Path(args.results)
    fmt = "json" if args.json else "csv" if args.csv else "text"
    if target.suffix in (".yaml", ".yml") and not target.is_dir():
        args.file = target
        spec = load_for_command(args)
        results = spec.results_dir()
        if fmt == "json":
            json.dump({"sweep": spec.name, "planned": plan_records(spec),
                       "results": status_records(results) if results.is_dir() else None},
                      sys.stdout, indent=1)
            print()
        elif fmt == "csv":
            write_csv(plan_records(spec))
        else:
            if results.is_dir():
                print(status_table(results))
            print(plan_status(spec))
        return 0
    if fmt == "json":
        json.dump(status_records(target), sys.stdout, indent=1)
        print()
    elif fmt == "csv":
        write_csv(status_records(target)["runs"])
    else:
        print(status_table(target))
    return 0


def _add_overrides(parser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="replace a field of the sweep file before it is validated (YAML "
                             "value; dotted keys into sections), e.g. --set train.seq_len=128 "
                             "--set budgets=[4k,8k]; repeatable")


def register(subparsers) -> None:
    """Add `castlab sweep` and `castlab status`."""
    p = subparsers.add_parser(
        "sweep", help="run (or --dry-run) a sweep file: teachers, then every cell; resumable",
        description="Run every run of a sweep file. Done runs are skipped, interrupted runs "
                    "resume from their checkpoint, failed runs are retried with --retry-failed.")
    p.add_argument("file", type=Path, help="sweep YAML (see sweeps/smoke.yaml)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan: run ids, status, estimated time; run nothing")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument("--phase", choices=PHASES, default="all",
                   help="teachers: only the dense teachers the plan needs (cached under "
                        "$CASTLAB_CACHE/teachers); students: every other run, refused while a "
                        "needed teacher is not done; all (default): both")
    p.add_argument("--backend", choices=["local", "ray", "slurm"],
                   help="override the file's backend (with default options)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or child output")
    p.add_argument("--results", dest="results_dir", type=Path, metavar="DIR",
                   help="results directory, overriding the file's `results:` (any writable "
                        "path; a path in the file must stay inside the working directory "
                        "unless absolute)")
    _add_overrides(p)
    p.add_argument("--allow-large", action="store_true",
                   help=f"plan more than {MAX_PLANNED_RUNS:,} runs")
    p.add_argument("--verify", type=int, metavar="K",
                   help="rerun K random done runs into a scratch folder and compare their PPL "
                        "and weights with the stored rows (bit-identical or not); exit 1 if any "
                        "differs")
    p.set_defaults(func=_cmd_sweep)

    s = subparsers.add_parser("status", help="table of the runs in a results directory",
                              description="Every run under DIR: done, failed (with reason), "
                                          "running or pending; unreadable files are named.")
    s.add_argument("results", help="results directory (e.g. results/ or results/opt_family), or "
                                   "a sweep file: its planned runs, done or not, teachers apart")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true",
                     help="print the runs, teacher checks and counts as JSON")
    fmt.add_argument("--csv", action="store_true", help="print one CSV row per run")
    _add_overrides(s)
    s.set_defaults(func=_cmd_status)
