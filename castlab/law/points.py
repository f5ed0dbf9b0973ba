"""The runs a law is fitted to: read a results store or any table, validate, and hold as arrays."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law.forms import Form, Inputs, Scales

STORE_COLUMNS = ("method", "model", "params_non_embedding", "tokens", "eval_loss", "status")
# A loss in nats/token above this is a perplexity (ln of a 1M-token vocabulary is 13.8).
PPL_LOOKING = 20.0


@dataclass
class ColumnMap:
    """How an external table's columns map onto N, D, loss (and optionally sparsity, size)."""

    n_col: str
    d_col: str
    loss_col: str
    loss_is_ppl: bool = False
    s_col: str | None = None
    size_col: str | None = None
    run_col: str | None = None  # rows sharing a run id are checkpoints of one run


@dataclass
class Points:
    """One row per run: N, D, loss (nats/token) and the context some forms need."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    s: np.ndarray
    ldense: np.ndarray  # teacher (dense starting model) loss, NaN where unknown
    lkd: np.ndarray  # dense-kd twin loss at the same model, tokens and seed, NaN where none
    size: np.ndarray  # size label per run (model name, or "N=..." for external tables)
    seed: np.ndarray
    # Run id per point: points of one run (checkpoints of one training curve) share it and are
    # resampled together by the bootstrap. None: every point is its own run.
    run: np.ndarray | None = None
    # Learning-rate areas of the run up to each point (castlab.law.lrareas): forward area S1 and
    # annealing area S2 in lr x steps; None where the rows carry none (only the schedule-aware
    # form needs them).
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.n)

    def subset(self, idx) -> Points:
        """The points at integer indices or boolean mask ``idx``."""
        return Points(**{f.name: None if getattr(self, f.name) is None
                         else getattr(self, f.name)[idx] for f in fields(self)})

    def runs(self) -> np.ndarray:
        """Run id per point (each point its own run when no run ids were given)."""
        return np.arange(len(self)).astype(str) if self.run is None else self.run.astype(str)

    def twins(self) -> Points:
        """The dense-kd twins as points of their own (the dense curve kd_gap needs)."""
        keep = np.isfinite(self.lkd)
        out = self.subset(keep)
        out.loss, out.s = out.lkd.copy(), np.zeros(len(out))
        return out

    def inputs(self, sc: Scales) -> Inputs:
        """Rescaled design arrays for the forms."""
        areas = [None if v is None else v / sc.a0 for v in (self.s1, self.s2)]
        return Inputs(np.log(self.n / sc.n0), np.log(self.d / sc.d0), self.s, self.ldense,
                      self.lkd, *areas)

    def sizes(self) -> dict[str, dict[str, float]]:
        """Per size label: N and the dense teacher loss (first finite value)."""
        out = {}
        for label in dict.fromkeys(self.size):
            m = self.size == label
            teach = self.ldense[m][np.isfinite(self.ldense[m])]
            out[str(label)] = {"n": float(self.n[m][0]),
                               "teacher_eval_loss": float(teach[0]) if len(teach) else None}
        return out

    def digest(self) -> str:
        """sha256 over the fitted values (order-independent), to tie a law to its data."""
        # The hash keeps the twin as first defined (matched by seed, NaN elsewhere) so laws
        # stored before the seed-mean twin still match their rows; it is a function of the same
        # rows either way.
        lkd = getattr(self, "digest_lkd", self.lkd)
        cols = np.column_stack([self.n, self.d, self.loss, self.s, self.ldense, lkd])
        rows = sorted(zip(self.size.astype(str), map(tuple, np.round(cols, 12)), strict=True))
        return hashlib.sha256(repr(rows).encode()).hexdigest()


def scales_for(pts: Points) -> Scales:
    """Geometric means of N and D (the fit works on N/n0 and D/d0, both near 1), and of the
    forward learning-rate area where the points carry one."""
    s1 = None if pts.s1 is None else pts.s1[np.isfinite(pts.s1) & (pts.s1 > 0)]
    a0 = float(np.exp(np.mean(np.log(s1)))) if s1 is not None and len(s1) else 1.0
    return Scales(float(np.exp(np.mean(np.log(pts.n)))), float(np.exp(np.mean(np.log(pts.d)))),
                  a0)


def read_table(path: str | Path) -> pd.DataFrame:
    """A results store directory (castlab.store.load) or a .csv / .parquet table."""
    path = Path(path)
    if path.is_dir():
        from castlab.store import load  # the store is optional for external tables

        return load(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or results directory")
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the table is empty (no header, no rows)") from None
    except (ValueError, OSError, pd.errors.ParserError) as err:  # ArrowInvalid is a ValueError
        raise UserError(f"{path}: not a readable {path.suffix[1:]} table "
                        f"({str(err).splitlines()[0][:120]})") from None
    raise UserError(f"{path}: allowed a results directory, a .csv or a .parquet file")


def _require_columns(df: pd.DataFrame, cols, where: str) -> None:
    missing = [c for c in cols if c and c not in df.columns]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)}; "
                        f"present: {', '.join(map(str, df.columns))}")


def _positive(values: np.ndarray, name: str) -> np.ndarray:
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(f"{name}: {int(bad.sum())} of {len(values)} rows are NaN, zero or "
                        f"negative (first at row {first}: {values[first]!r}); must be positive")
    return values


def _floats(df: pd.DataFrame, col: str) -> np.ndarray:
    try:
        return pd.to_numeric(df[col]).to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise UserError(f"{col}: column has non-numeric values") from None


def points_from_frame(df: pd.DataFrame, method: str = "cast", columns: ColumnMap | None = None,
                      where: str = "table") -> Points:
    """Validated points from a store-schema frame (rows of ``method``) or a mapped external table."""
    if df.empty:
        raise UserError(f"{where}: no rows to fit")
    if columns is not None:
        return _external(df, columns, where)
    _require_columns(df, STORE_COLUMNS, where)
    ok = df[df["status"] == "ok"]
    rows = ok[ok["method"] == method].reset_index(drop=True)
    if rows.empty:
        found = sorted(set(ok["method"].astype(str)))
        raise UserError(f"{where}: no 'ok' rows with method '{method}' (found: {', '.join(found) or 'none'})")
    n = len(rows)
    seed = (rows["seed"].fillna(-1).astype(int).to_numpy() if "seed" in rows else np.full(n, -1))
    pts = Points(
        n=_positive(_floats(rows, "params_non_embedding"), "params_non_embedding"),
        d=_positive(_floats(rows, "tokens"), "tokens"),
        loss=_positive(_floats(rows, "eval_loss"), "eval_loss"),
        s=_floats(rows, "sparsity") if "sparsity" in rows else np.zeros(n),
        ldense=_floats(rows, "teacher_eval_loss") if "teacher_eval_loss" in rows else np.full(n, np.nan),
        lkd=np.full(n, np.nan), size=rows["model"].astype(str).to_numpy(), seed=seed,
        run=rows["run_id"].astype(str).to_numpy() if "run_id" in rows else None,
        s1=_floats(rows, "lr_area") if "lr_area" in rows else None,
        s2=_floats(rows, "lr_anneal_area") if "lr_anneal_area" in rows else None)
    twins = ok[ok["method"] == "dense-kd"]
    if method != "dense-kd" and not twins.empty:
        # The twin is the seed mean of the dense-kd runs at the same model and budget: studies
        # repeat seeds for one method only, and a twin matched by seed would leave most runs bare.
        kd = twins.groupby(["model", "tokens"])["eval_loss"].mean()
        pts.lkd = np.array([kd.get((m, t), np.nan) for m, t in
                            zip(rows["model"], rows["tokens"], strict=True)], dtype=float)
        by_seed = twins.groupby(["model", "tokens", "seed"])["eval_loss"].mean() \
            if "seed" in twins else {}
        pts.digest_lkd = np.array([by_seed.get((m, t, s), np.nan) for m, t, s in zip(
            rows["model"], rows["tokens"], rows["seed"] if "seed" in rows else [-1] * n,
            strict=True)], dtype=float)
        if "checkpoint" in rows:  # a mid-run checkpoint has no twin: twins are budgeted runs
            mid = rows["checkpoint"].fillna(False).astype(bool).to_numpy()
            pts.lkd[mid] = np.nan
            pts.digest_lkd[mid] = np.nan
    return pts


def size_label(n: float) -> str:
    """``N=7.8125e+06``-style label of a size told apart by its exact N (shortest exact form)."""
    short = f"{float(n):.6g}"
    return f"N={short}" if float(short) == float(n) else f"N={float(n)!r}"


def _external(df: pd.DataFrame, cm: ColumnMap, where: str) -> Points:
    _require_columns(df, (cm.n_col, cm.d_col, cm.loss_col, cm.s_col, cm.size_col, cm.run_col),
                     where)
    n = len(df)
    raw = _positive(_floats(df, cm.loss_col), cm.loss_col)
    if not cm.loss_is_ppl and float(np.median(raw)) > PPL_LOOKING:
        raise UserError(f"{cm.loss_col}: median {float(np.median(raw)):.4g} is no loss in "
                        f"nats/token (> {PPL_LOOKING:g}); if the column holds perplexity, pass "
                        "--loss-is-ppl")
    loss = np.log(raw) if cm.loss_is_ppl else raw
    if cm.loss_is_ppl:
        _positive(loss, f"{cm.loss_col} (ln of perplexity; perplexity must exceed 1)")
    nn = _positive(_floats(df, cm.n_col), cm.n_col)
    s = _floats(df, cm.s_col) if cm.s_col else np.zeros(n)
    if cm.s_col and not ((s >= 0) & (s < 1)).all():
        raise UserError(f"{cm.s_col}: sparsity must lie in [0, 1)")
    if cm.size_col and df[cm.size_col].isna().any():
        first = int(np.flatnonzero(df[cm.size_col].isna().to_numpy())[0])
        raise UserError(f"{cm.size_col}: {int(df[cm.size_col].isna().sum())} of {n} rows are "
                        f"blank (first at row {first}); every run needs a size label")
    # Sizes are told apart by exact N: rounding N merged distinct models into one "size".
    size = (df[cm.size_col].astype(str).to_numpy() if cm.size_col
            else np.array([size_label(v) for v in nn], dtype=object))
    run = None
    if cm.run_col:
        if df[cm.run_col].isna().any():
            raise UserError(f"{cm.run_col}: {int(df[cm.run_col].isna().sum())} of {n} rows have "
                            "no run id; every checkpoint needs the id of its run")
        run = df[cm.run_col].astype(str).to_numpy()
        mixed = [r for r in dict.fromkeys(run) if len(np.unique(nn[run == r])) > 1]
        if mixed:
            raise UserError(f"{cm.run_col}: run {mixed[0]!r} has rows of different sizes "
                            f"({cm.n_col}); a run id must name one training run of one model")
    return Points(n=nn, d=_positive(_floats(df, cm.d_col), cm.d_col), loss=loss, s=s,
                  ldense=np.full(n, np.nan), lkd=np.full(n, np.nan), size=size,
                  seed=np.full(n, -1), run=run)


def check_fittable(form: Form, pts: Points) -> None:
    """Raise a one-line UserError if ``pts`` cannot identify ``form``'s parameters.

    Rules: at least p + 2 points (p + 1 leaves one residual degree of freedom, no noise
    estimate worth the name), one more distinct budget than the form has D-parameters, and
    three model sizes for a form with N-terms (two sizes fit any N-exponent exactly).
    """
    p, name = len(form.params), form.name
    if "ldense" in form.needs and not np.isfinite(pts.ldense).all():
        raise UserError(f"form {name}: needs teacher_eval_loss (the dense teacher's loss) on every run")
    if "areas" in form.needs and (pts.s1 is None or not np.isfinite(pts.s1).all()
                                  or not (pts.s1 > 0).all() or not np.isfinite(pts.s2).all()):
        raise UserError(f"form {name}: needs the learning-rate areas of every point: fit a "
                        "castlab store with --curves (each run's curve.parquet logs its lr)")
    if "lkd" in form.needs and not np.isfinite(pts.lkd).all():
        raise UserError(f"form {name}: needs a dense-kd twin (same model, tokens, seed) for every run")
    levels = len(np.unique(pts.s))
    if "s" not in form.needs and levels > 1:
        raise UserError(f"form {name}: ignores sparsity, but the runs have {levels} sparsity "
                        "levels (--s-col); a form that models it: frantar")
    groups = [pts.size == g for g in dict.fromkeys(pts.size)] if form.per_size else [slice(None)]
    for g in groups:
        sub, label = pts.subset(g), (f" for size {pts.size[g][0]}" if form.per_size else "")
        if len(sub) < p + 2:
            raise UserError(f"form {name}: {p} parameters need at least {p + 2} points{label}, "
                            f"got {len(sub)}")
        budgets, need = len(np.unique(sub.d)), max(form.min_budgets, form.d_params + 1)
        if budgets < need:
            raise UserError(f"form {name}: needs at least {need} distinct token "
                            f"budgets{label}, got {budgets}")
    sizes = len(np.unique(pts.n))
    if form.uses_n and sizes < 3:
        raise UserError(f"form {name}: needs at least 3 model sizes, got {sizes}")
    if len(np.unique(pts.s)) < form.min_sparsities:
        raise UserError(f"form {name}: needs at least {form.min_sparsities} sparsity levels "
                        f"(--s-col), got {len(np.unique(pts.s))}")
