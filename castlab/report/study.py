"""The law part of a report: held-out validation, the chosen form, its fit on every CAST run.

Built on castlab.law's public API only (``points_from_frame``, ``validate.heldout_predictions``
/ ``choose_form`` / ``candidate_forms``, ``fit_form``, ``bootstrap``, ``Law``),
so a change inside the law package changes the report's numbers, never its code. The held-out
summary is reported per kind of split the validation makes, always including the question a
reader asks: "from budgets <= D/4, what will D give?" (the largest budget predicted from
training budgets at most a quarter of it). The law package is being reworked; where its API
differs between versions (extrapolation terms, the form-choice signature) both are handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law import validate
from castlab.law.bootstrap import bootstrap, param_summary
from castlab.law.choose import candidate_forms, choose_form
from castlab.law.fit import fit_form
from castlab.law.points import Points, points_from_frame
from castlab.law.predict import Law

# Budgets of one sweep are nominal powers of two apart, but rounding to whole optimizer steps
# can move one by a fraction of a percent: a ratio of 4 within this slack counts as 4.
RATIO_SLACK = 1.01


@dataclass
class Study:
    """Held-out predictions, their summary, the chosen form and its law (or why there is none)."""

    level: float
    heldout: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    chosen: str | None = None
    law: Law | None = None
    points: Points | None = None
    params: dict = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)
    error: str = ""


KIND_LABELS = {"D/2": "D/2 -> D", "D/4": "D/4 -> D", "tokens": "every token split",
               "size": "leave one size out"}


def quarter_points(heldout: pd.DataFrame) -> pd.DataFrame:
    """Held-out rows that predict the largest budget D from training budgets <= D/4.

    Where validation has a ``D/4`` split these are its rows. An expanding-window validation
    (scheme ``tokens``) names its cut through ``distance`` (log10 of held-out D over the largest
    training D): among the splits at least a factor 4 away the one nearest to 4x is kept, so each
    run at D appears once, predicted from as much data as D/4 allows.
    """
    scored = heldout[heldout["rel_err"].notna()]
    if (scored["scheme"] == "D/4").any():
        return scored[scored["scheme"] == "D/4"].assign(kind=KIND_LABELS["D/4"])
    tok = scored[scored["scheme"] == "tokens"]
    if tok.empty:
        return tok.assign(kind=[])
    top = tok[tok["tokens"] >= tok["tokens"].max() / RATIO_SLACK]
    far = top[top["distance"] >= np.log10(4 / RATIO_SLACK)]
    keep = far.groupby("form")["distance"].transform("min") == far["distance"]
    return far[keep].assign(kind=KIND_LABELS["D/4"])


def summarize_heldout(heldout: pd.DataFrame, forms: list[str]) -> pd.DataFrame:
    """Per form and kind of split: points, mean/max ARE, bias and interval coverage."""
    kinds = {KIND_LABELS.get(str(k), str(k)): heldout[heldout["scheme"] == k]
             for k in dict.fromkeys(heldout["scheme"].dropna())}
    if "D/4" not in set(heldout["scheme"]):
        kinds = {KIND_LABELS["D/4"]: quarter_points(heldout), **kinds}
    out = []
    for form in forms:
        for kind, frame in kinds.items():
            sub = frame[frame["form"] == form]
            if sub.empty:
                continue
            scored = sub[sub["rel_err"].notna()]
            notes = sorted(set(sub.loc[sub["rel_err"].isna(), "note"].astype(str)) - {""})
            cov = scored["covered"].dropna()
            out.append({"form": form, "split": kind, "points": len(scored),
                        "are": scored["are"].mean() if len(scored) else np.nan,
                        "are_max": scored["are"].max() if len(scored) else np.nan,
                        "bias": scored["rel_err"].mean() if len(scored) else np.nan,
                        "coverage": cov.mean() if len(cov) else np.nan,
                        "note": "; ".join(notes)[:160]})
    return pd.DataFrame(out, columns=["form", "split", "points", "are", "are_max", "bias",
                                      "coverage", "note"])


def _predictions(pts: Points, forms: list[str], draws: int, level: float, seed: int):
    """Held-out predictions and, where validation reports them, each form's extrapolation sd."""
    taus: dict[str, float] = {}
    try:
        return validate.heldout_predictions(pts, forms, draws, level, seed, taus), taus
    except TypeError:  # a validation without extrapolation terms
        return validate.heldout_predictions(pts, forms, draws, level, seed), {}


def choose(heldout: pd.DataFrame, forms: list[str]) -> str:
    """The form validation chooses (its own rule, whichever version of it this castlab has);
    without one: the lowest mean held-out PPL ARE over the token splits among the forms scored
    on the most points."""
    try:
        chosen = choose_form(heldout, forms)
        return str(chosen[0] if isinstance(chosen, tuple) else chosen)
    except TypeError:
        pass
    tok = heldout[(heldout["scheme"] != "size") & heldout["rel_err"].notna()]
    if tok.empty:
        raise UserError("no form could be validated: too few token budgets below the largest")
    score = tok.groupby("form")["are"].agg(["mean", "count"])
    best = score[score["count"] == score["count"].max()].sort_values("mean")
    return str(best.index[0])


def run_study(rows: pd.DataFrame, *, draws: int = 1000, heldout_draws: int = 200,
              level: float = 0.9, seed: int = 0, forms: list[str] | None = None) -> Study:
    """Validate every identifiable form on the CAST rows, choose one, fit it on all of them."""
    study = Study(level=level)
    try:
        pts = points_from_frame(rows, "cast")
    except UserError as err:
        study.error = str(err)
        return study
    study.points = pts
    usable, study.excluded = candidate_forms(pts, forms)
    if not usable:
        study.error = "no law form can be identified from these CAST runs"
        return study
    study.heldout, taus = _predictions(pts, usable, heldout_draws, level, seed)
    study.summary = summarize_heldout(study.heldout, usable)
    try:
        study.chosen = choose(study.heldout, usable)
    except UserError as err:
        study.error = str(err)
        return study
    try:
        fit = fit_form(study.chosen, pts)
    except UserError as err:
        study.error = f"the chosen form {study.chosen} did not fit all CAST runs ({err})"
        return study
    boot = bootstrap(fit, pts, draws=draws, seed=seed)
    if study.chosen in taus and hasattr(boot, "tau"):  # widen bands with distance, as fit-law
        boot.tau = float(taus[study.chosen])
    study.params = param_summary(fit, boot, level)
    study.law = Law(fit, boot, pts.sizes(), level)
    return study
