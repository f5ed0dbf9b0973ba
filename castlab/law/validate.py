"""Held-out validation on a few fixed splits, per form, and the unbiased choice of a form.

Splits (the same ones for `castlab fit-law` and analysis/lawstudy.py): predict the top budget D
from the runs at budgets <= D/2 and <= D/4; on a table with many distinct budgets "the top
budget" is the top decile of D (budgets >= its 90% quantile). Cross-size forms also leave one
size out, only while three or more sizes remain to train on (with many sizes: the top decile of
N). Each split refits the form on its training runs, predicts the held-out ones with a bootstrap
interval, and the form's extrapolation term ``tau`` (sd of ln L per decade beyond the data) is
learned conformal-style from the residuals of its *other* splits, so no held-out interval is
calibrated on its own residuals. Forms are compared in loss (PPL alongside) on the token splits
every candidate fitted; a form whose held-out coverage is far below the nominal level ranks
after the calibrated ones. A parameter that ends on its bound is held there (the constrained
optimum), reported in the split's note, and the split is scored like any other.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binom, norm

from castlab.errors import UserError
from castlab.law.bootstrap import DEFAULT_LEVEL, bootstrap
from castlab.law.fit import fit_form
from castlab.law.forms import FORMS
from castlab.law.parallel import map_in_order
from castlab.law.points import ColumnMap, Points, check_fittable, points_from_frame

HELDOUT_DRAWS = 100  # per split; the full-data law gets the full bootstrap
SLACK = 1.01  # budgets x2 apart can be off by step rounding
MANY_BUDGETS = 12  # above this many distinct budgets the held-out set is a quantile bin
MANY_SIZES = 8  # above this many sizes one split holds out the top decile of N
TOP_QUANTILE = 0.9
TOKEN_SCHEMES = ("D/2", "D/4")
LN_CLIP = 50.0  # |ln L| beyond this is no loss: predictions are clipped before any exp
COLUMNS = ["form", "scheme", "split", "size", "n", "tokens", "sparsity", "loss", "pred_loss",
           "ppl", "pred_ppl", "lo_ppl", "hi_ppl", "distance", "rel_err", "loss_rel_err",
           "covered", "note"]


def exp_clipped(v):
    """exp of ln-loss / ln-PPL values with the exponent bounded: never inf, never a warning."""
    return np.exp(np.clip(v, -LN_CLIP, LN_CLIP))


def ppl_of_log_loss(y):
    """PPL = e^L from predicted ln L, bounded (a diverging prediction reads as a huge PPL)."""
    return exp_clipped(exp_clipped(y))


@dataclass(frozen=True)
class Holdout:
    """One train/test division: a token cut (train D <= cut, test D >= test_from) or sizes."""

    scheme: str  # 'D/2', 'D/4' or 'size'
    name: str
    cut: float | None = None
    test_from: float | None = None
    size: str | None = None  # leave this size out
    n_from: float | None = None  # leave sizes with N >= n_from out
    per_run: bool = False  # trajectories: cut and test_from are fractions of each run's last D

    def train(self, pts: Points) -> np.ndarray:
        """Mask of the training runs among ``pts``."""
        if self.per_run:
            return pts.d <= self.cut * run_top(pts) * SLACK
        if self.cut is not None:
            return pts.d <= self.cut * SLACK
        if self.size is not None:
            return pts.size != self.size
        return pts.n < self.n_from

    def test(self, pts: Points, largest: float | None = None) -> np.ndarray:
        """Mask of the held-out runs among ``pts`` (``largest`` is ignored: kept for callers)."""
        if self.per_run:
            return pts.d >= self.test_from * run_top(pts) / SLACK
        if self.cut is not None:
            return pts.d >= self.test_from / SLACK
        return ~self.train(pts)


def run_top(pts: Points) -> np.ndarray:
    """Per point: the largest budget D of its run (its final checkpoint)."""
    runs = pts.runs()
    top = {r: pts.d[runs == r].max() for r in dict.fromkeys(runs)}
    return np.array([top[r] for r in runs])


def is_trajectory(pts: Points) -> bool:
    """Whether ``pts`` holds runs with several checkpoints each (run ids repeat)."""
    return pts.run is not None and len(np.unique(pts.run)) < len(pts)


def holdouts(pts: Points, form_name: str) -> list[Holdout]:
    """The fixed splits for ``form_name`` on ``pts`` (see module docstring). On trajectories
    (run ids that repeat) two more token splits come first: fit each run's checkpoints up to
    D/2 (D/4) of that run's last budget D and predict every run's final checkpoint (extending
    each run), besides the table-wide ones (beyond the largest budget)."""
    out = []
    if is_trajectory(pts):
        out = [Holdout(f"D/{k}", f"each run's D/{k} -> its last D", cut=1 / k, test_from=1.0,
                       per_run=True) for k in (2, 4)]
    budgets = np.unique(pts.d)
    top = float(budgets[-1]) if len(budgets) <= MANY_BUDGETS \
        else float(np.quantile(pts.d, TOP_QUANTILE))
    out += [Holdout(f"D/{k}", f"D<={top / k:,.0f} -> {top:,.0f}", cut=top / k, test_from=top)
            for k in (2, 4)]
    if FORMS[form_name].per_size:
        return out
    labels = list(dict.fromkeys(pts.size))
    if len(labels) - 1 < 3:
        return out
    if len(labels) <= MANY_SIZES:
        return out + [Holdout("size", f"without {label}", size=str(label)) for label in labels]
    n_from = float(np.quantile(pts.n, TOP_QUANTILE))
    return out + [Holdout("size", f"without N>={n_from:.3g}", n_from=n_from)]


def distance(h: Holdout, train: Points, test: Points) -> np.ndarray:
    """Decades (log10) each held-out run lies beyond the training data, in D or in N."""
    if h.per_run:  # beyond the same run's last training checkpoint
        runs = train.runs()
        last = {r: train.d[runs == r].max() for r in dict.fromkeys(runs)}
        return np.log10(test.d / np.array([last.get(r, train.d.max()) for r in test.runs()]))
    if h.cut is not None:  # beyond the largest training budget at the run's size, if trained
        top = {n: train.d[train.n == n].max() for n in np.unique(train.n)}
        return np.log10(test.d / np.array([top.get(n, train.d.max()) for n in test.n]))
    train_n = np.unique(train.n)
    ln = np.log10(test.n)[:, None] - np.log10(train_n)[None, :]
    return np.abs(ln).min(axis=1)


def calibrate_tau(resid, sd, dist, level: float = DEFAULT_LEVEL) -> float:
    """Smallest extrapolation sd per decade ``tau`` for which the intervals
    ``+-z sqrt(sd^2 + (tau dist)^2)`` cover a conformal ``level`` share of the residuals
    (the ceil((n + 1) level)-th smallest per-point requirement, capped at the largest)."""
    resid, sd, dist = (np.asarray(v, np.float64) for v in (resid, sd, dist))
    ok = np.isfinite(resid) & np.isfinite(sd) & np.isfinite(dist)
    if not ok.any():
        return 0.0
    z = norm.ppf(0.5 + level / 2)
    need = np.maximum(0.0, (resid[ok] / z) ** 2 - sd[ok] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(need > 0, np.sqrt(need) / np.maximum(dist[ok], 1e-3), 0.0)
    per = np.sort(per)
    k = min(len(per), int(np.ceil((len(per) + 1) * level))) - 1
    return float(per[k])


@dataclass
class _Scored:
    """One fitted split of one form, kept until its interval can be built with the cross tau."""

    rows: list[dict]
    y_param: np.ndarray | None  # (B, n) bootstrap predictions of ln L (no noise)
    sigma: float
    dist: np.ndarray
    resid: np.ndarray
    sd: np.ndarray


def _score(name: str, h: Holdout, pts: Points, draws: int, seed: int) -> _Scored | dict:
    """Fit ``name`` on the split's training runs and predict the held-out ones (no interval yet);
    a dict is the note row of a split that could not be fitted identifiably."""
    train, test = pts.subset(h.train(pts)), pts.subset(h.test(pts))
    base = {"form": name, "scheme": h.scheme, "split": h.name}
    if not len(test) or not len(train):
        return {**base, "note": "no held-out runs" if not len(test) else "no training runs"}
    try:
        check_fittable(FORMS[name], train)
        fit = fit_form(name, train)
    except UserError as err:
        return {**base, "note": str(err)}
    pred = np.clip(fit.predict_log(test), -LN_CLIP, LN_CLIP)
    y_param, sigma = None, float("nan")
    if draws > 0:
        boot = bootstrap(fit, train, draws=draws, seed=seed)
        sigma = boot.sigma
        if len(boot.thetas):
            y_param = np.clip(fit.predict_log(test, boot.thetas, boot.dense_thetas),
                              -LN_CLIP, LN_CLIP)
    dist = distance(h, train, test)
    resid = np.log(test.loss) - pred
    with warnings.catch_warnings():  # a per-size form has no prediction at an unseen size
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.full(len(test), np.nan) if y_param is None \
            else np.sqrt(np.nanvar(y_param, axis=0) + sigma**2)
    loss_pred = exp_clipped(pred)
    # A parameter on its bound is held there (the constrained optimum): scored, and said so.
    bound = f"{', '.join(fit.on_bound)} held at a bound" if fit.on_bound else ""
    rows = []
    for i in range(len(test)):
        ppl, pred_ppl = float(np.exp(test.loss[i])), float(ppl_of_log_loss(pred[i]))
        rows.append({**base, "size": str(test.size[i]), "n": test.n[i], "tokens": test.d[i],
                     "sparsity": test.s[i], "loss": test.loss[i], "pred_loss": loss_pred[i],
                     "ppl": ppl, "pred_ppl": pred_ppl, "lo_ppl": np.nan, "hi_ppl": np.nan,
                     "distance": dist[i], "rel_err": pred_ppl / ppl - 1,
                     "loss_rel_err": loss_pred[i] / test.loss[i] - 1,
                     "note": bound if np.isfinite(pred[i]) else
                     f"no prediction at size {test.size[i]}: not among the training runs"})
    return _Scored(rows, y_param, sigma, dist, resid, sd)


def _with_interval(s: _Scored, tau: float, level: float, seed: int) -> list[dict]:
    """The split's rows with the level interval: bootstrap + run noise + tau * distance."""
    if s.y_param is None or not np.isfinite(s.sigma):
        return s.rows
    sd = np.sqrt(s.sigma**2 + (tau * s.dist) ** 2)
    y = s.y_param + sd * np.random.default_rng(seed).standard_normal(s.y_param.shape)
    q = (1 - level) / 2
    lo, hi = np.quantile(y, [q, 1 - q], axis=0)
    for r, a, b in zip(s.rows, lo, hi, strict=True):
        r["lo_ppl"], r["hi_ppl"] = float(ppl_of_log_loss(a)), float(ppl_of_log_loss(b))
    return s.rows


def _score_job(job) -> _Scored | dict:
    return _score(*job)


def heldout_predictions(pts: Points, forms=None, draws: int = HELDOUT_DRAWS,
                        level: float = DEFAULT_LEVEL, seed: int = 0,
                        taus: dict | None = None) -> pd.DataFrame:
    """One row per (form, split, held-out run); a split a form cannot fit gets one row with a
    note. ``taus`` (if given) receives each form's extrapolation term from all its splits."""
    rows = []
    names = list(forms or FORMS)
    jobs = [(name, h, pts, draws, seed) for name in names for h in holdouts(pts, name)]
    # the splits are independent fits: on several cores at once (castlab.law.parallel)
    results = map_in_order(_score_job, jobs)
    for name in names:
        scored = []
        for job, s in zip(jobs, results, strict=True):
            if job[0] != name:
                continue
            if isinstance(s, dict):
                rows.append(s)
            else:
                scored.append(s)
        for k, s in enumerate(scored):  # each split's tau from the other splits' residuals
            others = [o for j, o in enumerate(scored) if j != k]
            tau = calibrate_tau(*_pooled(others), level=level) if others else 0.0
            rows += _with_interval(s, tau, level, seed)
        if taus is not None:
            taus[name] = calibrate_tau(*_pooled(scored), level=level) if scored else 0.0
    df = pd.DataFrame(rows, columns=COLUMNS)
    num = COLUMNS[4:17]
    df[num] = df[num].astype(float)
    df["note"] = df["note"].fillna("")
    df["are"] = df["rel_err"].abs()
    inside = (df["ppl"] >= df["lo_ppl"]) & (df["ppl"] <= df["hi_ppl"])
    df["covered"] = inside.astype(float).where(df["lo_ppl"].notna())
    return df


def _pooled(scored: list[_Scored]):
    cat = [np.concatenate([getattr(s, k) for s in scored]) for k in ("resid", "sd", "dist")]
    return cat[0], cat[1], cat[2]


def summarize(pred: pd.DataFrame, forms) -> pd.DataFrame:
    """Per form and scheme (D/2, D/4, size; 'tokens' = D/2 and D/4 together): held-out mean
    loss and PPL ARE, PPL bias, interval coverage, points, and notes of unfitted splits."""
    rows = []
    for name in forms:
        row: dict = {"form": name}
        notes = []
        for scheme, keep in (("D/2", ["D/2"]), ("D/4", ["D/4"]), ("tokens", TOKEN_SCHEMES),
                             ("size", ["size"])):
            sub = pred[(pred["form"] == name) & pred["scheme"].isin(keep)]
            scored = sub[sub["rel_err"].notna()]
            row[f"{scheme}_splits"] = int(scored["split"].nunique())
            row[f"{scheme}_points"] = len(scored)
            row[f"{scheme}_are"] = float(scored["are"].mean()) if len(scored) else np.nan
            row[f"{scheme}_loss_are"] = (float(scored["loss_rel_err"].abs().mean())
                                         if len(scored) else np.nan)
            row[f"{scheme}_are_max"] = float(scored["are"].max()) if len(scored) else np.nan
            row[f"{scheme}_bias"] = float(scored["rel_err"].mean()) if len(scored) else np.nan
            cov = scored["covered"].dropna().astype(float)
            row[f"{scheme}_coverage"] = float(cov.mean()) if len(cov) else np.nan
            if scheme in ("D/2", "D/4", "size"):
                skipped = sub[sub["rel_err"].isna()].drop_duplicates("split")
                if len(skipped):
                    notes.append(f"{scheme}: {skipped['note'].iloc[0]}")
                bound = scored.loc[scored["note"] != "", "note"]
                if len(bound):
                    notes.append(f"{scheme}: {bound.iloc[0]}")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


def comparable(pred: pd.DataFrame, forms) -> tuple[list[str], list[str]]:
    """(forms, token splits) to compare on: the splits every one of ``forms`` scored; while no
    split is common, the form with the fewest scored splits is set aside. A form that scored
    fewer than half as many held-out points as the best-scored one is set aside first: an error
    on a split where it predicted one point of twenty says little."""
    tok = pred[pred["scheme"].isin(TOKEN_SCHEMES) & pred["rel_err"].notna()]
    done = {f: set(tok.loc[tok["form"] == f, "split"]) for f in forms}
    counts = tok["form"].value_counts()
    most = max((int(counts.get(f, 0)) for f in forms), default=0)
    cands = [f for f in forms if done[f] and 2 * int(counts.get(f, 0)) >= most]
    while cands:
        common = set.intersection(*(done[f] for f in cands))
        if common:
            return cands, sorted(common)
        cands.remove(min(cands, key=lambda f: (len(done[f]), f)))
    return [], []


MISCALIBRATED_P = 0.01  # held-out coverage this improbable under the nominal level loses


def miscalibrated(covered: pd.Series, level: float = DEFAULT_LEVEL) -> bool:
    """Whether held-out coverage (0/1 per point, NaN: no interval) is far below ``level``: fewer
    points covered than a binomial(n, level) gives with probability ``MISCALIBRATED_P``."""
    cov = covered.dropna().astype(float)
    return bool(len(cov)) and binom.cdf(int(cov.sum()), len(cov), level) < MISCALIBRATED_P


def why_unscored(pred: pd.DataFrame, forms) -> str:
    """Per form, the first reason none of its token splits was scored (the real cause)."""
    tok = pred[pred["scheme"].isin(TOKEN_SCHEMES)]
    out = []
    for f in forms:
        notes = tok.loc[(tok["form"] == f) & tok["rel_err"].isna(), ["split", "note"]]
        if len(notes):
            out.append(f"{f} on split {notes['split'].iloc[0]}: {notes['note'].iloc[0]}")
    return "; ".join(out) or "no token split had runs below the largest budget"


def choose_form(pred: pd.DataFrame, forms, unidentified=(),
                level: float = DEFAULT_LEVEL) -> tuple[str, list[str]]:
    """The form with the lowest mean held-out loss ARE on the common token splits (PPL ARE, then
    the name, break ties) and those splits; a form whose held-out coverage there is far below
    ``level`` (``miscalibrated``) ranks after every calibrated one; forms in ``unidentified``
    are not chosen. A UserError names why no form was scored."""
    usable = [f for f in forms if f not in set(unidentified)]
    cands, common = comparable(pred, usable)
    if not cands:
        raise UserError(f"no form could be validated on a held-out token split: "
                        f"{why_unscored(pred, usable)}")
    tok = pred[pred["split"].isin(common) & pred["form"].isin(cands) & pred["rel_err"].notna()]
    score = tok.assign(la=tok["loss_rel_err"].abs()).groupby("form")[["la", "are"]].mean()
    if "covered" in tok:
        bad = {f for f, g in tok.groupby("form") if miscalibrated(g["covered"], level)}
        score["miscal"] = [f in bad for f in score.index]
    else:
        score["miscal"] = False
    ranked = score.reset_index().sort_values(["miscal", "la", "are", "form"])
    return str(ranked["form"].iloc[0]), common


# When no held-out split can be scored, the law is the first of these the runs can fit (and
# that predicts what is asked), marked "not validated": anchored forms with one shared exponent
# pair first (fewest parameters), then the cross-size and per-size forms by parameter count.
FALLBACK_ORDER = ("teacher_mul", "kd_ratio", "teacher_add", "frantar", "chinchilla", "kd_gap",
                  "dense_gap", "loglinear", "power_d")


def fallback_form(forms) -> str:
    """The first of ``forms`` in ``FALLBACK_ORDER`` (forms not listed there come last)."""
    order = {f: i for i, f in enumerate(FALLBACK_ORDER)}
    return min(forms, key=lambda f: (order.get(f, len(order)), f))


def candidate_forms(pts: Points, forms=None) -> tuple[list[str], dict[str, str]]:
    """The forms ``pts`` can identify (of ``forms`` or all), and why each other one is out."""
    ok, out = [], {}
    for name in forms or list(FORMS):
        try:
            check_fittable(FORMS[name], pts)
            ok.append(name)
        except UserError as err:
            out[name] = str(err)
    return ok, out


def unidentified_forms(pts: Points, forms, on_bound: dict | None = None) -> dict[str, str]:
    """Forms whose fit on all of ``pts`` fails, and why. A fit with a parameter on its bound is
    kept (the parameter is held at the bound); ``on_bound`` (if given) receives those parameters
    per form."""
    out = {}
    for name in forms:
        try:
            fit = fit_form(name, pts)
        except UserError as err:
            out[name] = str(err)
            continue
        if fit.on_bound and on_bound is not None:
            on_bound[name] = list(fit.on_bound)
    return out


def heldout_table(data: pd.DataFrame | Points, forms=None, method: str = "cast",
                  columns: ColumnMap | None = None, draws: int = HELDOUT_DRAWS,
                  level: float = DEFAULT_LEVEL, seed: int = 0) -> pd.DataFrame:
    """Held-out table (one row per form, ``chosen`` marks the default) for a frame of runs.

    ``data`` is a store-schema frame (rows of ``method``), a table mapped by ``columns``, or
    Points. Forms the data cannot identify are listed with a note and no scores.
    """
    pts = data if isinstance(data, Points) else points_from_frame(data, method, columns)
    usable, excluded = candidate_forms(pts, forms)
    pred = heldout_predictions(pts, usable, draws, level, seed)
    table = summarize(pred, usable)
    bad = unidentified_forms(pts, usable)
    for name, why in bad.items():
        table.loc[table["form"] == name, "note"] = (
            table.loc[table["form"] == name, "note"] + f"; all runs: {why}").str.lstrip("; ")
    if excluded:
        table = pd.concat([table, pd.DataFrame([{"form": k, "note": v} for k, v in excluded.items()])],
                          ignore_index=True)
    table["chosen"] = False
    if usable:
        chosen, _ = choose_form(pred, usable, bad)
        table.loc[table["form"] == chosen, "chosen"] = True
    return table
