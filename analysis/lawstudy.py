"""The law part of the reference report: held-out predictions of the largest budget, the chosen form.

castlab.law.validate scores an expanding window over every budget; the report asks a narrower
question (issue 7): fit on budgets <= D/2 or <= D/4 and predict the largest budget D, plus
leave-one-size-out, for both the total sparse loss and its gap to the dense-kd twin. Those splits
are built here on top of castlab.law's fit / bootstrap / predict API, and the whole result is
kept as plain JSON so the report tables are a deterministic function of the rows plus that file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law.bootstrap import Bootstrap, bootstrap, interval, param_summary, predictive_draws
from castlab.law.fit import Fit, fit_form
from castlab.law.forms import FORMS
from castlab.law.points import Points, check_fittable, points_from_frame
from castlab.law.predict import Law, fit_to_json
from castlab.law.validate import candidate_forms

SCHEMES = ("D/2", "D/4", "size")
TARGETS = ("total", "gap")
# Budgets are x2 apart but step rounding can move one by a fraction of a percent.
BUDGET_SLACK = 1.01
PRED_COLUMNS = ["form", "scheme", "split", "target", "size", "n", "tokens", "seed", "actual",
                "pred", "lo", "hi", "rel_err", "excess_err", "distance", "note"]


@dataclass(frozen=True)
class Holdout:
    """One train/test division: a token cut (train D <= cut, test the largest D) or a left-out size."""

    scheme: str
    name: str
    cut: float | None = None
    size: str | None = None

    def train(self, pts: Points) -> np.ndarray:
        """Mask of the training runs among ``pts``."""
        if self.cut is not None:
            return pts.d <= self.cut * BUDGET_SLACK
        return pts.size != self.size

    def test(self, pts: Points, largest: float) -> np.ndarray:
        """Mask of the held-out runs among ``pts`` (``largest``: the study's largest budget)."""
        if self.cut is not None:
            return pts.d >= largest / BUDGET_SLACK
        return pts.size == self.size


def holdouts(pts: Points, form_name: str) -> list[Holdout]:
    """D/2 and D/4 token cuts, and leave-one-size-out for cross-size forms (>= 3 sizes)."""
    largest = float(pts.d.max())
    out = [Holdout(f"D/{k}", f"D<={largest / k:,.0f} -> {largest:,.0f}", cut=largest / k)
           for k in (2, 4)]
    labels = list(dict.fromkeys(pts.size))
    if not FORMS[form_name].per_size and len(labels) >= 3:
        out += [Holdout("size", f"without {label}", size=str(label)) for label in labels]
    return out


def _note_rows(form: str, h: Holdout, note: str, targets=TARGETS) -> list[dict]:
    return [{"form": form, "scheme": h.scheme, "split": h.name, "target": t, "note": note}
            for t in targets]


def _distance(h: Holdout, train: Points, test: Points, largest: float) -> np.ndarray:
    """Decades beyond the training data (log10 ratio), as castlab.law.validate measures it."""
    if h.cut is not None:
        return np.full(len(test), np.log10(largest / train.d.max()))
    train_n = np.unique(train.n)
    near = train_n[np.argmin(np.abs(np.log(train_n) - np.log(test.n[0])))]
    return np.log10(test.n / near)


def _bootstrap(fit: Fit, train: Points, draws: int, seed: int) -> Bootstrap | None:
    """Bootstrap refits of ``fit`` on ``train``, or None when there are no usable draws."""
    if draws <= 0:
        return None
    boot = bootstrap(fit, train, draws=draws, seed=seed)
    return boot if len(boot.thetas) else None


def _gap_prediction(form: str, fit: Fit, boot: Bootstrap | None, h: Holdout, test: Points,
                    kd: Points | None, y: np.ndarray, y_draws, draws: int, seed: int):
    """Predicted ln(L_cast / L_densekd) at ``test``, its draws, and a note when there is none.

    kd_gap models the gap itself (its dense-kd curve is dropped); any other form predicts it as
    the same form fitted to the cast runs minus that form fitted to the dense-kd runs.
    """
    if form == "kd_gap":
        gap_fit, q = replace(fit, dense=None), test.subset(np.arange(len(test)))
        q.lkd = np.ones(len(q))  # ln 1 = 0: the form returns only its gap term
        gap_draws = None if boot is None else predictive_draws(gap_fit, boot, q, seed=seed)
        return gap_fit.predict_log(q), gap_draws, ""
    if kd is None:
        return None, None, "no dense-kd runs"
    kd_train = kd.subset(h.train(kd))
    try:
        check_fittable(FORMS[form], kd_train)
        kd_fit = fit_form(form, kd_train)
    except UserError as err:
        return None, None, f"dense-kd fit: {err}"
    gap = y - kd_fit.predict_log(test)
    kd_boot = _bootstrap(kd_fit, kd_train, draws, seed)
    if y_draws is None or kd_boot is None:
        return gap, None, ""
    # The run noise enters once (the cast draws carry it); the dense-kd draws add parameter
    # uncertainty only.
    kd_draws = predictive_draws(kd_fit, kd_boot, test, seed=seed, noise=False)
    m = min(len(y_draws), len(kd_draws))
    return gap, y_draws[:m] - kd_draws[:m], ""


def score_holdout(form: str, h: Holdout, cast: Points, kd: Points | None, draws: int,
                  level: float, seed: int) -> list[dict]:
    """Prediction rows (one per held-out run and target) for ``form`` on split ``h``."""
    largest = float(cast.d.max())
    train, test = cast.subset(h.train(cast)), cast.subset(h.test(cast, largest))
    if not len(test):
        return _note_rows(form, h, "no held-out runs")
    if not len(train):
        return _note_rows(form, h, "no training runs")
    try:
        check_fittable(FORMS[form], train)
        fit = fit_form(form, train)
    except UserError as err:
        return _note_rows(form, h, str(err))
    y = fit.predict_log(test)
    boot = _bootstrap(fit, train, draws, seed)
    y_draws = None if boot is None else predictive_draws(fit, boot, test, seed=seed)
    gap, gap_draws, gap_note = _gap_prediction(form, fit, boot, h, test, kd, y, y_draws, draws,
                                               seed)
    dist = _distance(h, train, test, largest)
    # PPL = e^L and the forms predict ln L, hence the double exponential.
    rows = _point_rows(form, h, "total", test, dist, np.exp(test.loss), np.exp(np.exp(y)),
                       y_draws, level, lambda v: np.exp(np.exp(v)))
    if gap is None:
        rows += _note_rows(form, h, gap_note, targets=("gap",))
    else:
        ratio = test.loss / test.lkd  # L_cast / L_densekd (NaN where a run has no twin)
        rows += _point_rows(form, h, "gap", test, dist, ratio, np.exp(gap), gap_draws, level,
                            np.exp)
    return rows


def _point_rows(form, h, target, test, dist, actual, pred, draws, level, to_value) -> list[dict]:
    lo = hi = np.full(len(test), np.nan)
    if draws is not None:
        lo, hi = (to_value(v) for v in interval(draws, level))
    rows = []
    for i in range(len(test)):
        if not np.isfinite(actual[i]):
            continue
        excess = (pred[i] - 1) / (actual[i] - 1) - 1 if target == "gap" else np.nan
        rows.append({"form": form, "scheme": h.scheme, "split": h.name, "target": target,
                     "size": str(test.size[i]), "n": float(test.n[i]), "tokens": float(test.d[i]),
                     "seed": int(test.seed[i]), "actual": float(actual[i]), "pred": float(pred[i]),
                     "lo": float(lo[i]), "hi": float(hi[i]),
                     "rel_err": float(pred[i] / actual[i] - 1), "excess_err": float(excess),
                     "distance": float(dist[i]), "note": ""})
    return rows


def predictions_frame(records: list[dict]) -> pd.DataFrame:
    """The held-out records as a frame with every column of PRED_COLUMNS (NaN where absent)."""
    df = pd.DataFrame(records, columns=PRED_COLUMNS)
    df["note"] = df["note"].fillna("")
    return df


def choose_form(preds: pd.DataFrame) -> str | None:
    """Lowest mean total-PPL ARE predicting D (D/2 and D/4 splits) among the forms scored on the
    most points; ties broken by the leave-one-size-out ARE. None if no form was scored."""
    total = preds[(preds["target"] == "total") & preds["rel_err"].notna()]
    tok = total[total["scheme"].isin(["D/2", "D/4"])]
    if tok.empty:
        return None
    are = tok.assign(are=tok["rel_err"].abs()).groupby("form")["are"].agg(["mean", "count"])
    size = total[total["scheme"] == "size"].assign(are=lambda d: d["rel_err"].abs())
    are["size"] = size.groupby("form")["are"].mean()
    full = are[are["count"] == are["count"].max()].sort_values(["mean", "size"], na_position="last")
    return str(full.index[0])


@dataclass
class Study:
    """The report's law results: JSON-able ``data`` plus the in-memory law and points for figures."""

    data: dict
    law: Law | None
    cast: Points | None


def run_study(rows: pd.DataFrame, draws: int = 1000, heldout_draws: int = 200,
              level: float = 0.9, seed: int = 0, forms: list[str] | None = None) -> Study:
    """Held-out predictions for every identifiable form (of ``forms``, default all), the chosen
    form, and its fit on every cast run with bootstrap intervals."""
    base = {"level": level, "draws": draws, "heldout_draws": heldout_draws, "seed": seed}
    try:
        cast = points_from_frame(rows, "cast", where="results")
    except UserError as err:
        return Study({**base, "error": str(err), "heldout": [], "chosen": None}, None, None)
    kd = None
    if ((rows["method"] == "dense-kd") & (rows["status"] == "ok")).any():
        kd = points_from_frame(rows, "dense-kd", where="results")
    usable, excluded = candidate_forms(cast, forms)
    records: list[dict] = []
    many_sizes = len(set(cast.size)) >= 3
    for form in usable:
        for h in holdouts(cast, form):
            records += score_holdout(form, h, cast, kd, heldout_draws, level, seed)
        if FORMS[form].per_size and many_sizes:
            records += _note_rows(form, Holdout("size", "leave one size out"),
                                  "fitted per size: cannot predict an unseen size")
    preds = predictions_frame(records)
    chosen = choose_form(preds)
    data = {**base, "data_hash": cast.digest(), "cast_runs": len(cast), "forms": usable,
            "excluded": excluded, "chosen": chosen,
            "chosen_by": "lowest mean held-out PPL ARE predicting the largest budget from "
                         "budgets <= D/2 and <= D/4",
            "heldout": _records(preds)}
    law = None
    if chosen is not None:
        try:
            fit = fit_form(chosen, cast)
        except UserError as err:  # FitError: the optimiser did not converge on all the runs
            data["error"] = f"the chosen form {chosen} did not fit all cast runs ({err})"
            return Study(data, None, cast)
        boot = bootstrap(fit, cast, draws=draws, seed=seed)
        data.update({"params": param_summary(fit, boot, level), "fit": fit_to_json(fit),
                     "bootstrap": {"draws": boot.draws, "failed": boot.failed,
                                   "sigma": boot.sigma, "noise_source": boot.noise_source}})
        law = Law(fit, boot, cast.sizes(), level)
    return Study(data, law, cast)


def _records(preds: pd.DataFrame) -> list[dict]:
    """Plain-Python records; json writes floats with repr, so they read back exactly."""
    text = ("form", "scheme", "split", "target", "size", "note")
    return [{k: (None if k in text and not isinstance(v, str) else v) for k, v in r.items()}
            for r in preds.to_dict("records")]
