"""`castlab report RESULTS [--out DIR] [--html]`: Markdown + PNG report of any sweep's result
rows, and with ``--html`` the same report as one self-contained HTML file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from castlab.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `castlab report`."""
    p = subparsers.add_parser(
        "report", help="write a Markdown + PNG report of a sweep's results",
        description="Headline PPL table (size x method x budget, mean ± sd over seeds), teacher "
                    "convergence, the scaling law fitted to the CAST runs with its held-out "
                    "errors, intervals and coverage, and figures, written as REPORT.md + PNGs.")
    p.add_argument("results", type=Path, help="results directory of a sweep (searched recursively)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: RESULTS/report)")
    p.add_argument("--draws", type=int, default=1000,
                   help="bootstrap draws of the law fitted to every CAST run (default: 1000)")
    p.add_argument("--heldout-draws", type=int, default=200,
                   help="bootstrap draws per held-out split (default: 200)")
    p.add_argument("--level", type=float, default=0.9,
                   help="interval level (default: 0.9)")
    p.add_argument("--no-law", action="store_true",
                   help="tables and the PPL figure only: fit no law")
    p.add_argument("--html", action="store_true",
                   help="also write REPORT.html: tables and figures (base64 PNG) in one file "
                        "that opens in a browser")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Load the rows, run the law study, draw the figures, write REPORT.md; print its path."""
    if args.draws < 0 or args.heldout_draws < 0:
        raise UserError(f"--draws/--heldout-draws: got {args.draws}/{args.heldout_draws}, "
                        "allowed integers >= 0")
    if not 0 < args.level < 1:
        raise UserError(f"--level: got {args.level}, allowed a number between 0 and 1")
    out = write_report(args.results, args.out, draws=args.draws,
                       heldout_draws=args.heldout_draws, level=args.level, law=not args.no_law)
    print(out)
    if args.html:
        from castlab.report.html import write_html

        print(write_html(out))
    return 0


def write_report(results: Path, out_dir: Path | None = None, *, draws: int = 1000,
                 heldout_draws: int = 200, level: float = 0.9, law: bool = True) -> Path:
    """Write ``REPORT.md`` and its figures for the runs under ``results``; return its path."""
    from castlab import store
    from castlab.report.figures import draw_all
    from castlab.report.render import render
    from castlab.report.study import Study, run_study
    from castlab.report.tables import ok_rows

    results = Path(results)
    rows = store.load(results)
    if ok_rows(rows).empty:
        raise UserError(f"{results}: no finished runs to report on")
    out_dir = Path(out_dir) if out_dir is not None else results / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    if law:
        print(f"fitting the law to {len(rows)} rows ({draws} bootstrap draws)", file=sys.stderr)
        study = run_study(rows, draws=draws, heldout_draws=heldout_draws, level=level)
    else:
        study = Study(level=level, error="not fitted (--no-law)")
    figures = draw_all(rows, study, out_dir)
    path = out_dir / "REPORT.md"
    path.write_text(render(rows, study if law else None, figures, out_dir, str(results)))
    return path
