"""Checks of the runs table ``castlab fit-law`` is given, before any fitting.

A user's table (or a hand-edited store) is untrusted input: it is bounded in size, its header
must name each column once, N, D and loss must be finite and physically plausible cell by cell
(a few perplexities among losses, N x 1e300), a size label must name one N, sparsity lies in
[0, 1), and ``--method`` filters a table that has a ``method`` column instead of being ignored.
Every refusal is one line naming the column, the row and what is allowed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law.points import PPL_LOOKING, STORE_COLUMNS, read_table

MAX_ROWS = 20_000  # ten times the sweep planner's run limit; fits scale with rows x draws
MAX_TABLE_BYTES = 256 * 2**20
MAX_DRAWS = 100_000
MAX_SEED = 2**32 - 1
# Plausible ranges: the largest language models have ~1e13 parameters and ~1e14 tokens.
N_RANGE = (1.0, 1e15)
D_RANGE = (1.0, 1e18)
PPL_RANGE = (1.0, 1e7)  # perplexity given with --loss-is-ppl


def check_fit_args(args) -> None:
    """fit-law's numeric arguments that would otherwise fail deep inside (a negative seed) or
    run for hours (a billion draws)."""
    if not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed: got {args.seed}, allowed an integer 0 to {MAX_SEED}")
    if args.draws > MAX_DRAWS:
        raise UserError(f"--draws: got {args.draws}, allowed at most {MAX_DRAWS:,}")
    if args.heldout_draws > MAX_DRAWS:
        raise UserError(f"--heldout-draws: got {args.heldout_draws}, allowed at most "
                        f"{MAX_DRAWS:,}")


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        return next(csv.reader(handle), [])


def _cells(df: pd.DataFrame, col: str, low: float, high: float, what: str) -> None:
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(values) & (values >= low) & (values <= high))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(f"{col}: {int(bad.sum())} of {len(values)} rows outside {what} "
                        f"[{low:g}, {high:g}] (first at row {first}: {values[first]:.4g})")


def _losses(df: pd.DataFrame, col: str, is_ppl: bool) -> None:
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    if is_ppl:
        _cells(df, col, np.nextafter(PPL_RANGE[0], 2), PPL_RANGE[1], "perplexities")
        return
    high = values > PPL_LOOKING
    if high.any() and not high.all():  # all of them: points.py says to pass --loss-is-ppl
        first = int(np.flatnonzero(high)[0])
        raise UserError(f"{col}: {int(high.sum())} of {len(values)} cells are above "
                        f"{PPL_LOOKING:g} (first at row {first}: {values[first]:.4g}), which "
                        "looks like perplexity among losses in nats/token; give every cell in "
                        "one unit (losses, or perplexities with --loss-is-ppl)")


def _one_n_per_size(df: pd.DataFrame, size_col: str, n_col: str) -> None:
    counts = df.groupby(df[size_col].astype(str))[n_col].nunique()
    several = counts[counts > 1]
    if len(several):
        label = several.index[0]
        ns = sorted(df.loc[df[size_col].astype(str) == label, n_col].unique())[:4]
        raise UserError(f"{size_col}: size '{label}' covers {int(several.iloc[0])} values of "
                        f"{n_col} ({', '.join(f'{v:.4g}' for v in ns)}); allowed one N per size "
                        "label")


def _sparsity(values: pd.Series, col: str) -> None:
    s = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~((s >= 0) & (s < 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(f"{col}: {int(bad.sum())} of {len(s)} rows outside [0, 1) (first at "
                        f"row {first}: {s[first]:.4g}); sparsity is a fraction of weights")


def checked_table(src: Path, args, cols) -> pd.DataFrame:
    """``read_table(src)`` bounded and checked for ``fit-law`` (see the module docstring); a
    mapped table with a ``method`` column keeps the rows of ``--method``."""
    check_fit_args(args)
    src = Path(src)
    if src.exists() and not (src.is_dir() or src.is_file()):
        raise UserError(f"{src}: not a regular file (a device or FIFO), allowed a results "
                        "directory, a .csv or a .parquet file")
    if src.is_file() and src.stat().st_size > MAX_TABLE_BYTES:
        raise UserError(f"{src}: {src.stat().st_size / 2**20:,.0f} MiB, allowed a table of at "
                        f"most {MAX_TABLE_BYTES / 2**20:,.0f} MiB")
    header = _csv_header(src) if src.is_file() and src.suffix == ".csv" else []
    df = read_table(src)
    names = [str(c) for c in (header or df.columns)]
    twice = next((c for i, c in enumerate(names) if c in names[:i]), None)
    if twice is not None:
        raise UserError(f"{src}: column '{twice}' appears twice in the header; allowed each "
                        "column once")
    if cols is None:
        if set(STORE_COLUMNS) <= set(df.columns):
            rows = df[(df["status"] == "ok") & (df["method"] == args.method)]
            _bound(rows, src)
            _cells(rows, "params_non_embedding", *N_RANGE, "parameter counts")
            _cells(rows, "tokens", *D_RANGE, "token counts")
            _cells(rows, "eval_loss", 1e-6, PPL_LOOKING, "losses in nats/token")
            if "sparsity" in rows and args.form in ("frantar", "auto"):
                _sparsity(rows["sparsity"], "sparsity")
        return df
    if "method" in df.columns:
        found = sorted(set(df["method"].astype(str)))
        if len(found) > 1 or args.method not in found:
            df = df[df["method"].astype(str) == args.method].reset_index(drop=True)
            if df.empty:
                raise UserError(f"{src}: --method {args.method}: no rows of that method in the "
                                f"table's method column (found: {', '.join(found[:8])})")
    _bound(df, src)
    for col in (cols.n_col, cols.d_col, cols.loss_col, cols.s_col, cols.size_col):
        if col and col not in df.columns:
            return df  # points.py names the missing column
    _cells(df, cols.n_col, *N_RANGE, "parameter counts")
    _cells(df, cols.d_col, *D_RANGE, "token counts")
    _losses(df, cols.loss_col, cols.loss_is_ppl)
    if cols.s_col:
        _sparsity(df[cols.s_col], cols.s_col)
    if cols.size_col and not df[cols.size_col].isna().any():
        _one_n_per_size(df, cols.size_col, cols.n_col)
    return df


def _bound(df: pd.DataFrame, src: Path) -> None:
    if len(df) > MAX_ROWS:
        raise UserError(f"{src}: {len(df):,} runs to fit, allowed at most {MAX_ROWS:,} (a law "
                        "is fitted to one study; fit a subset, e.g. one method)")
