"""The law part of the reference report: held-out predictions of the largest budget, the chosen form.

The splits are castlab.law.validate's (the same as `castlab fit-law`): fit on budgets <= D/2 or
<= D/4 and predict the largest budget D, plus leave-one-size-out while three sizes remain to
train on. Here each split is scored for both the total sparse loss and its gap to the dense-kd
twin; each split's interval carries the form's extrapolation term learned from its other splits
(conformal-style, castlab.law.validate.calibrate_tau). The whole result is kept as plain JSON so
the report tables are a deterministic function of the rows plus that file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law.bootstrap import Bootstrap, bootstrap, interval, param_summary, predictive_draws
from castlab.law.choose import candidate_forms, unidentified_forms
from castlab.law.choose import choose_form as choose_among
from castlab.law.fit import Fit, fit_form
from castlab.law.forms import FORMS
from castlab.law.points import Points, check_fittable, points_from_frame
from castlab.law.predict import Law, fit_to_json
from castlab.law.validate import (
    Holdout,
    calibrate_tau,
    holdouts,
    ppl_of_log_loss,
)
from castlab.law.validate import (
    distance as validate_distance,
)
from castlab.report.study import Study as ReportStudy

SCHEMES = ("D/2", "D/4", "size")
TARGETS = ("total", "gap")
PRED_COLUMNS = ["form", "scheme", "split", "target", "size", "n", "tokens", "seed", "actual",
                "pred", "lo", "hi", "rel_err", "excess_err", "distance", "sd", "note"]


def _note_rows(form: str, h: Holdout, note: str, targets=TARGETS) -> list[dict]:
    return [{"form": form, "scheme": h.scheme, "split": h.name, "target": t, "note": note}
            for t in targets]


def _bootstrap(fit: Fit, train: Points, draws: int, seed: int,
               tau: float = 0.0) -> Bootstrap | None:
    """Bootstrap refits of ``fit`` on ``train`` (extrapolation term ``tau``), or None when there
    are no usable draws."""
    if draws <= 0:
        return None
    boot = bootstrap(fit, train, draws=draws, seed=seed)
    boot.tau = tau
    return boot if len(boot.thetas) else None


def _gap_prediction(form: str, fit: Fit, boot: Bootstrap | None, h: Holdout, test: Points,
                    kd: Points | None, y: np.ndarray, y_draws, draws: int, seed: int):
    """Predicted ln(L_cast / L_densekd) at ``test``, its draws, and a note when there is none.

    kd_gap models the gap itself (its dense-kd curve is dropped); any other form predicts it as
    the same form fitted to the cast runs minus that form fitted to the dense-kd runs.
    """
    if "lkd" in FORMS[form].needs:
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
    if kd_fit.on_bound:
        return None, None, f"dense-kd fit not identified: {', '.join(kd_fit.on_bound)} on a bound"
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
                  level: float, seed: int, tau: float = 0.0) -> list[dict]:
    """Prediction rows (one per held-out run and target) for ``form`` on split ``h``; the
    intervals carry the extrapolation term ``tau`` (sd of ln L per decade beyond the data)."""
    train, test = cast.subset(h.train(cast)), cast.subset(h.test(cast))
    if not len(test):
        return _note_rows(form, h, "no held-out runs")
    if not len(train):
        return _note_rows(form, h, "no training runs")
    try:
        check_fittable(FORMS[form], train)
        fit = fit_form(form, train)
    except UserError as err:
        return _note_rows(form, h, str(err))
    # A parameter on its bound is held there (the constrained optimum), scored and said so, as
    # castlab.law.validate does: the shipped report and `castlab report` agree.
    bound = f"{', '.join(fit.on_bound)} held at a bound" if fit.on_bound else ""
    y = fit.predict_log(test)
    boot = _bootstrap(fit, train, draws, seed, tau)
    y_draws = None if boot is None else predictive_draws(fit, boot, test, seed=seed)
    gap, gap_draws, gap_note = _gap_prediction(form, fit, boot, h, test, kd, y, y_draws, draws,
                                               seed)
    dist = validate_distance(h, train, test)
    # PPL = e^L and the forms predict ln L, hence the (bounded) double exponential.
    rows = _point_rows(form, h, "total", test, dist, np.exp(test.loss), ppl_of_log_loss(y),
                       y_draws, level, ppl_of_log_loss,
                       None if y_draws is None else np.nanstd(y_draws, axis=0), note=bound)
    if gap is None:
        rows += _note_rows(form, h, gap_note, targets=("gap",))
    else:
        ratio = test.loss / test.lkd  # L_cast / L_densekd (NaN where a run has no twin)
        rows += _point_rows(form, h, "gap", test, dist, ratio, np.exp(gap), gap_draws, level,
                            np.exp, note=bound)
    return rows


def _point_rows(form, h, target, test, dist, actual, pred, draws, level, to_value,
                sd=None, note: str = "") -> list[dict]:
    """One row per held-out run with a finite actual value; ``sd``: sd of ln L of the draws."""
    sd = np.full(len(test), np.nan) if sd is None else sd
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
                     "distance": float(dist[i]), "sd": float(sd[i]), "note": note})
    return rows


def predictions_frame(records: list[dict]) -> pd.DataFrame:
    """The held-out records as a frame with every column of PRED_COLUMNS (NaN where absent)."""
    df = pd.DataFrame(records, columns=PRED_COLUMNS)
    df["note"] = df["note"].fillna("")
    return df


def _scored_total(preds: pd.DataFrame) -> pd.DataFrame:
    """Total-target rows with a prediction, in castlab.law.validate's column names."""
    t = preds[(preds["target"] == "total") & preds["rel_err"].notna()]
    loss_err = np.log(t["pred"].astype(float)) / np.log(t["actual"].astype(float)) - 1
    return t.assign(loss_rel_err=loss_err, are=t["rel_err"].abs())


def choose_form(preds: pd.DataFrame, unidentified=()) -> str | None:
    """Lowest mean held-out loss ARE predicting D on the D/2 / D/4 splits every candidate form
    scored (castlab.law.choose.choose_form); forms in ``unidentified`` are not chosen. None if
    no form was scored on a token split."""
    t = _scored_total(preds)
    forms = [f for f in dict.fromkeys(t["form"]) if f not in set(unidentified)]
    try:
        return choose_among(t, forms)[0]
    except UserError:
        return None


def _taus(preds: pd.DataFrame, level: float) -> dict[tuple[str, str], float]:
    """Per (form, split): the extrapolation term from the form's other splits' total residuals."""
    t = _scored_total(preds)
    t = t[t["sd"].notna()]
    resid = np.log(np.log(t["actual"].astype(float))) - np.log(np.log(t["pred"].astype(float)))
    t = t.assign(resid=resid)
    out = {}
    for (form, split), _ in preds.groupby(["form", "split"]):
        o = t[(t["form"] == form) & (t["split"] != split)]
        out[(form, split)] = (calibrate_tau(o["resid"], o["sd"], o["distance"], level)
                              if len(o) else 0.0)
    return out


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
    many_sizes = len(set(cast.size)) >= 4

    def score_all(taus: dict) -> pd.DataFrame:
        records: list[dict] = []
        for form in usable:
            for h in holdouts(cast, form):
                records += score_holdout(form, h, cast, kd, heldout_draws, level, seed,
                                         taus.get((form, h.name), 0.0))
            if FORMS[form].per_size and many_sizes:
                records += _note_rows(form, Holdout("size", "leave one size out"),
                                      "fitted per size: cannot predict an unseen size")
        return predictions_frame(records)

    # Two passes: residuals without the extrapolation term, then each split's interval with the
    # term learned from the form's other splits (same seeds: the same fits and draws).
    first = score_all({})
    taus = _taus(first, level)
    preds = score_all(taus) if any(v > 0 for v in taus.values()) else first
    bad = unidentified_forms(cast, usable)
    chosen = choose_form(preds, bad)
    data = {**base, "data_hash": cast.digest(), "cast_runs": len(cast), "forms": usable,
            "excluded": excluded, "unidentified": bad, "chosen": chosen,
            "chosen_by": "lowest mean held-out loss ARE predicting the largest budget on the "
                         "D/2 and D/4 splits every candidate form fitted identifiably",
            "heldout": _records(preds)}
    law = None
    if chosen is not None:
        try:
            fit = fit_form(chosen, cast)
        except UserError as err:  # FitError: the optimiser did not converge on all the runs
            data["error"] = f"the chosen form {chosen} did not fit all cast runs ({err})"
            return Study(data, None, cast)
        boot = bootstrap(fit, cast, draws=draws, seed=seed)
        t = _scored_total(preds)
        t = t[(t["form"] == chosen) & t["sd"].notna()]
        boot.tau = calibrate_tau(np.log(np.log(t["actual"])) - np.log(np.log(t["pred"])),
                                 t["sd"], t["distance"], level) if len(t) else 0.0
        data.update({"params": param_summary(fit, boot, level), "fit": fit_to_json(fit),
                     "bootstrap": {"draws": boot.draws, "failed": boot.failed,
                                   "sigma": boot.sigma, "noise_source": boot.noise_source,
                                   "tau": boot.tau}})
        law = Law(fit, boot, cast.sizes(), level)
    return Study(data, law, cast)


def stored_law(rows: pd.DataFrame, data: dict) -> Study:
    """The stored study ``data`` with its chosen law rebuilt: the chosen form refitted on every
    cast run with the stored draws, seed and extrapolation term, which ``run_study`` does too
    (same seeds: the same fit and bootstrap). Seconds, not the minutes of the held-out study."""
    cast = points_from_frame(rows, "cast", where="results")
    chosen, boot_data = data.get("chosen"), data.get("bootstrap")
    if chosen is None or boot_data is None:
        return Study(data, None, cast)
    fit = fit_form(chosen, cast)
    boot = bootstrap(fit, cast, draws=data["draws"], seed=data["seed"])
    boot.tau = float(boot_data["tau"])
    return Study(data, Law(fit, boot, cast.sizes(), data["level"]), cast)


def for_figures(study: Study) -> ReportStudy:
    """The study as castlab.report's Study, so castlab.report.figures draws it: the chosen law,
    its points and the total-PPL held-out predictions in castlab.report's column names."""
    data = study.data
    p = predictions_frame(data.get("heldout", []))
    p = p[(p["target"] == "total") & p["rel_err"].notna()]
    heldout = pd.DataFrame({
        "form": p["form"], "scheme": p["scheme"], "size": p["size"], "tokens": p["tokens"],
        "ppl": p["actual"], "pred_ppl": p["pred"], "lo_ppl": p["lo"], "hi_ppl": p["hi"],
        "rel_err": p["rel_err"], "are": p["rel_err"].abs(), "distance": p["distance"],
        "covered": (p["actual"] >= p["lo"]) & (p["actual"] <= p["hi"])})
    return ReportStudy(level=data.get("level", 0.9), heldout=heldout, chosen=data.get("chosen"),
                       law=study.law, points=study.cast, error=data.get("error", ""))


def _records(preds: pd.DataFrame) -> list[dict]:
    """Plain-Python records; json writes floats with repr, so they read back exactly."""
    text = ("form", "scheme", "split", "target", "size", "note")
    return [{k: (None if k in text and not isinstance(v, str) else v) for k, v in r.items()}
            for r in preds.to_dict("records")]
