"""`castlab sweep FILE` and `castlab status DIR` (the tables in castlab.sweep.status), and the
sweep driver.

The module loads without torch, pyarrow or pandas (each function imports what it uses), so the
command line's parsers build at once; see tests/test_cli_startup.py.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from castlab.sweep import MAX_PLANNED_RUNS
from castlab.sweep.phases import PHASES
from castlab.sweep.status import (
    flagged_lines,
    plan_records,
    plan_rows,
    plan_status,
    status_records,
    status_table,
    write_csv,
)

if TYPE_CHECKING:
    from castlab.sweep.plan import PlannedRun
    from castlab.sweep.progress import SweepProgress
    from castlab.sweep.runner import Outcome
    from castlab.sweep.spec import SweepSpec


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
    states = {r.run_id: store.run_state(r.run_dir) for r in plan}  # each folder read once
    for run in plan:
        state = states[run.run_id]
        seconds = estimates[run.run_id]
        if state in LEFT_STATES and seconds is not None:
            left += seconds
        took = format_seconds(_measured(run.run_dir)) if state == "done" else ""
        lines.append(f"{run.run_id:<22} {run.kind:<7} {state:<8} {format_seconds(seconds):>8} "
                     f"{detailed[run.run_id].basis:<5} {took:>8}  {run.label}")
    if spec is not None and spec.backend_name == "local" and not any(
            wants_cuda(r.config.device) for r in plan):  # the CPU queue's wall, not the sum
        todo = [r for r in plan if states[r.run_id] in LEFT_STATES]
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
    for line in flagged_lines(plan_rows(plan)):
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
