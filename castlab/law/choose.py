"""The choice of a law form from its held-out predictions (castlab.law.validate): the summary
table per form, the forms the runs can fit, and the unbiased choice. Forms are compared in loss
(PPL alongside) on the token splits every candidate fitted; a form whose held-out coverage is far
below the nominal level ranks after the calibrated ones; with nothing scored, the first fittable
form of ``FALLBACK_ORDER`` is taken and the law marked not validated (castlab.law.commands).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binom

from castlab.errors import UserError
from castlab.law.bootstrap import DEFAULT_LEVEL
from castlab.law.fit import fit_form
from castlab.law.forms import FORMS
from castlab.law.points import ColumnMap, Points, check_fittable, points_from_frame
from castlab.law.targets import forms_that_can
from castlab.law.validate import HELDOUT_DRAWS, TOKEN_SCHEMES, heldout_predictions


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
    """The forms ``pts`` can identify (of ``forms``, default every form that predicts new
    budgets), and why each other one is out."""
    ok, out = [], {}
    for name in forms or forms_that_can(("budgets",)):
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
