"""Generate analysis/REPORT.md and its figures from the shipped reference results.

A thin script over `castlab report` (castlab/report/): the tables of the rows (headline, cells,
convergence, paired tests, mask life, seed noise, runs) and the figures are castlab's. What is
specific to the shipped CPU studies lives here: shipping a sweep into results/reference, the law
study stored as JSON (held-out total and gap-to-twin errors, hash-checked against the rows), the
earlier study (RESULTS_v1) and the long-budget companion (RESULTS_long) beside the main one.

    python -m analysis.make_report                                  # refit the law, write all
    python -m analysis.make_report --reuse-law                      # from the stored law study
    python -m analysis.make_report --ship-from results/opt_family   # copy a sweep in, then write

Re-shipping a new default study keeps the current one as the previous study:
``git mv results/reference/opt_family results/reference/opt_family_v2`` first (the highest
``_vN`` sibling is the previous study the report summarises), then ``--ship-from``.

The long-budget companion sweep (sweeps/opt_family_long.yaml) is shipped into the sibling folder
``results/reference/opt_family_long`` (``--ship-from results/opt_family_long --results
results/reference/opt_family_long --ship-only``); when present, its own law study is fitted and
stored there and the report gains a section on it.

Shipping copies result.parquet, curve.parquet and config.yaml of every finished run (nothing
else: no checkpoints, no models) into the reference folder. The law study (held-out predictions,
the chosen form and its bootstrap intervals) is stored as JSON next to the rows so the report's
tables are a deterministic function of files in the repository (tests/test_report.py checks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

from analysis.lawstudy import for_figures, run_study, stored_law
from analysis.report import render
from castlab import store
from castlab.errors import UserError
from castlab.law.bootstrap import DEFAULT_DRAWS, DEFAULT_LEVEL
from castlab.law.forms import FORMS, get_form
from castlab.law.points import points_from_frame
from castlab.law.validate import HELDOUT_DRAWS
from castlab.report.figures import draw_all
from castlab.report.runs import teacher_info

DEFAULT_RESULTS = Path("results/reference/opt_family")
DEFAULT_REPORT = Path("analysis/REPORT.md")
DEFAULT_FIGURES = Path("analysis/figures")
LAW_FILE = "report_law.json"
TIMING_FILE = "sweep_timing.json"
SHIPPED = (store.RESULT_FILE, store.CURVE_FILE, store.CONFIG_FILE)


def previous_of(results: Path) -> Path:
    """Where the study before ``results`` lives: the sibling ``RESULTS_vN`` with the highest N
    (a re-shipped study moves the current rows to the next N), ``RESULTS_v1`` when none exists."""
    found = [(int(m.group(1)), p) for p in results.parent.glob(results.name + "_v*")
             if (m := re.fullmatch(re.escape(results.name) + r"_v(\d+)", p.name)) and p.is_dir()]
    return max(found)[1] if found else results.with_name(results.name + "_v1")


def companion_of(results: Path) -> Path:
    """Where the long-budget companion study of ``results`` lives: the sibling ``RESULTS_long``."""
    return results.with_name(results.name + "_long")


# The earlier reference study (rows + law study); its summary is shown beside the current one.
PREVIOUS_RESULTS = previous_of(DEFAULT_RESULTS)
COMPANION_RESULTS = companion_of(DEFAULT_RESULTS)


def ship(src: Path, dst: Path) -> tuple[int, list[str]]:
    """Copy the run files of every finished run under ``src`` to the same place under ``dst``.

    Returns (runs copied, run directories under ``src`` without a result yet). Refuses (UserError)
    when ``dst`` holds runs that ``src`` does not, so a stale reference is never mixed in.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"--ship-from: {src} is not a directory")
    runs = [p.parent for p in store.result_paths(src)]
    if not runs:
        raise UserError(f"--ship-from: no result rows under {src}")
    wanted = {r.relative_to(src) for r in runs}
    stale = sorted(str(p.parent.relative_to(dst)) for p in store.result_paths(dst)
                   if dst.is_dir() and p.parent.relative_to(dst) not in wanted)
    if stale:
        raise UserError(f"--ship-from: {dst} holds {len(stale)} run(s) not in {src} (first: "
                        f"{stale[0]}); remove {dst} first")
    for run in runs:
        target = dst / run.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
    if (src / store.SWEEP_LOG_FILE).is_file():  # the sweep's own record of its runs and walls
        shutil.copy2(src / store.SWEEP_LOG_FILE, dst / store.SWEEP_LOG_FILE)
    pending = sorted(str(p.parent.relative_to(src)) for p in src.rglob(store.CONFIG_FILE)
                     if p.parent not in set(runs))
    return len(runs), pending


def sweep_timing(results: Path, seconds: float | None, cold: float | None) -> dict | None:
    """The sweep wall time from the command line, else from ``results/sweep_timing.json``."""
    if seconds is not None or cold is not None:
        return {"wall_seconds": seconds, "cold_cache_wall_seconds": cold, "source": "command line"}
    path = results / TIMING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {"wall_seconds": float(data["wall_seconds"]),
                "cold_cache_wall_seconds": (None if data.get("cold_cache_wall_seconds") is None
                                            else float(data["cold_cache_wall_seconds"])),
                "source": TIMING_FILE}
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: expected {{\"wall_seconds\": ..., "
                        f"\"cold_cache_wall_seconds\": ...}} ({err})") from None


def load_previous(folder: Path) -> tuple | None:
    """(rows, law study) of an earlier reference study, or None when there is none."""
    if not (folder / LAW_FILE).is_file():
        return None
    return store.load(folder, strict=True), load_study(folder / LAW_FILE)


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def load_study(path: Path) -> dict:
    """The stored law study; UserError names the file if it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no stored law study; run without --reuse-law first") from None
    except ValueError as err:
        raise UserError(f"{path}: not a law study JSON ({err})") from None


def check_hash(rows, data: dict, path: Path) -> None:
    """UserError unless the stored study was fitted to exactly these cast rows."""
    try:
        digest = points_from_frame(rows, "cast", where="results").digest()
    except UserError:
        digest = None
    if data.get("data_hash") != digest:
        raise UserError(f"{path}: the stored law study was fitted to other cast rows (data hash "
                        "differs); run without --reuse-law to refit")


def stored_study(rows, path: Path) -> dict:
    """The law study stored at ``path``, checked to belong to exactly these cast rows."""
    data = load_study(path)
    check_hash(rows, data, path)
    return data


def companion_study(folder: Path, refit: dict | None = None) -> tuple | None:
    """(rows, stored law study) of the companion sweep in ``folder``, None when it has no runs;
    with ``refit`` (``run_study`` keyword arguments) its law study is refitted and stored first."""
    if not folder.is_dir() or not any(store.result_paths(folder)):
        return None
    rows = store.load(folder, strict=True)
    if refit is not None:
        data = run_study(rows, **refit).data
        data["results"] = folder.as_posix()
        (folder / LAW_FILE).write_text(json.dumps(data, indent=1) + "\n")
    return rows, stored_study(rows, folder / LAW_FILE)


def generate(args) -> int:
    """Fit (or reuse) the law study, draw castlab.report's figures, write REPORT.md."""
    results = Path(args.results)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = store.load(results)
    for w in caught:
        print(f"make_report: warning: {w.message}", file=sys.stderr)
    law_path = Path(args.law_json) if args.law_json else results / LAW_FILE
    report, figures = Path(args.report), Path(args.figures)
    refit = None  # run_study's arguments, shared by the main and the companion study
    if args.reuse_law:
        study = stored_law(rows, stored_study(rows, law_path))
        data = study.data
    else:
        forms = None
        if args.forms:
            forms = [f.strip() for f in args.forms.split(",") if f.strip()]
            for name in forms:
                get_form(name)  # UserError naming the allowed forms
        refit = {"draws": args.draws, "heldout_draws": args.heldout_draws, "level": args.level,
                 "seed": args.seed, "forms": forms}
        study = run_study(rows, **refit)
        data = study.data
        data["teachers"] = teacher_info(rows)
        data["results"] = results.as_posix()
        data["law_json"] = law_path.as_posix()
    draw_all(rows, for_figures(study), figures)
    timing = sweep_timing(results, args.sweep_seconds, args.cold_sweep_seconds)
    if timing is not None or "sweep_timing" not in data:
        data["sweep_timing"] = timing
    law_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1) + "\n"
    if not law_path.is_file() or law_path.read_text() != text:  # a reused study stays untouched
        law_path.write_text(text)
    report.parent.mkdir(parents=True, exist_ok=True)
    # Rendered from the JSON as written, exactly what the drift test will read back.
    previous, companion = previous_of(results), companion_of(results)
    report.write_text(render(rows, json.loads(text), load_previous(previous), previous.as_posix(),
                             companion_study(companion, refit), companion.as_posix(),
                             _rel(figures, report.parent)))
    print(f"make_report: {len(rows)} runs from {results}; chosen form {data.get('chosen')}; "
          f"wrote {report}, figures in {figures}" + ("" if args.reuse_law else f", {law_path}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; user mistakes print one line and exit 2."""
    p = argparse.ArgumentParser(prog="python -m analysis.make_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(DEFAULT_RESULTS),
                   help=f"reference results folder (default {DEFAULT_RESULTS})")
    p.add_argument("--report", default=str(DEFAULT_REPORT), help="report to write")
    p.add_argument("--figures", default=str(DEFAULT_FIGURES), help="folder for the PNG figures")
    p.add_argument("--law-json", help=f"stored law study (default RESULTS/{LAW_FILE})")
    p.add_argument("--ship-from", help="first copy the finished runs of this sweep folder "
                                       "(result.parquet, curve.parquet, config.yaml) to --results")
    p.add_argument("--ship-only", action="store_true", help="with --ship-from: copy, write nothing")
    p.add_argument("--reuse-law", action="store_true",
                   help="the tables and figures from the stored law study: no held-out refits")
    p.add_argument("--sweep-seconds", type=float,
                   help=f"sweep wall time, teachers cached (default: RESULTS/{TIMING_FILE})")
    p.add_argument("--cold-sweep-seconds", type=float, help="sweep wall time from a cold cache")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help=f"bootstrap draws of the chosen law (default {DEFAULT_DRAWS})")
    p.add_argument("--heldout-draws", type=int, default=HELDOUT_DRAWS,
                   help=f"bootstrap draws per held-out split (default {HELDOUT_DRAWS})")
    p.add_argument("--forms", help="comma-separated law forms to validate (default: all of "
                                    f"{', '.join(FORMS)})")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="interval level")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)
    try:
        if args.ship_only and not args.ship_from:
            raise UserError("--ship-only needs --ship-from DIR")
        if args.ship_from:
            n, pending = ship(Path(args.ship_from), Path(args.results))
            print(f"make_report: shipped {n} runs from {args.ship_from} to {args.results}")
            if pending:
                print(f"make_report: warning: {len(pending)} run(s) without a result were not "
                      f"shipped (first: {pending[0]})", file=sys.stderr)
            if args.ship_only:
                return 0
        return generate(args)
    except UserError as err:
        print(f"make_report: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
