"""Held-out validation on a few fixed splits, per form, and the unbiased choice of a form.

Splits (the same ones for `castlab fit-law` and analysis/lawstudy.py): predict the top budget D
from the runs at budgets <= D/2 and <= D/4; on a table with many distinct budgets "the top
budget" is the top decile of D (budgets >= its 90% quantile). Cross-size forms also leave one
size out, only while three or more sizes remain to train on (with many sizes: the top decile of
N). Each split refits the form on its training runs, predicts the held-out ones with a bootstrap
interval, and the form's extrapolation term ``tau`` (sd of ln L per decade beyond the data) is
learned conformal-style from the residuals of its *other* splits, so no held-out interval is
calibrated on its own residuals. A parameter that ends on its bound is held there (the
constrained optimum), reported in the split's note, and the split is scored like any other.
Which form these predictions choose: castlab.law.choose.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from castlab.errors import UserError
from castlab.law.bootstrap import DEFAULT_LEVEL, bootstrap
from castlab.law.fit import fit_form
from castlab.law.forms import FORMS
from castlab.law.parallel import map_in_order
from castlab.law.points import Points, check_fittable

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
