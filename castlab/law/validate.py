"""Held-out validation: expanding window over tokens and leave-one-size-out, per form.

For every split the form is refitted from its start grid on the training runs only (with a
bootstrap of ``draws`` refits for the interval) and scored on the held-out runs by the absolute
relative error (ARE) of PPL, the signed relative error of PPL (bias) and whether the held-out
PPL fell inside the prediction interval. The default form is the one with the lowest mean ARE
on the expanding window over tokens, the question the law is used for: "what will a larger
budget give?".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law.bootstrap import DEFAULT_LEVEL, bootstrap, interval, predictive_draws
from castlab.law.fit import fit_form
from castlab.law.forms import FORMS
from castlab.law.points import ColumnMap, Points, check_fittable, points_from_frame

HELDOUT_DRAWS = 200  # per split; the full-data law gets the full bootstrap


@dataclass
class Split:
    """One train/test division of the runs."""

    scheme: str  # 'tokens' (expanding window over D) or 'size' (leave one size out)
    name: str
    train: np.ndarray  # bool mask
    test: np.ndarray  # bool mask
    distance: np.ndarray  # per test run: decades beyond the training data (log10 ratio)


def splits(pts: Points, form_name: str) -> list[Split]:
    """Expanding window over D (>= 2 training budgets) and, for cross-size forms, leave-one-size-out."""
    out = []
    budgets = np.unique(pts.d)
    for cut in budgets[1:-1]:
        test = pts.d > cut
        out.append(Split("tokens", f"D<={cut:.3g}", pts.d <= cut, test, np.log10(pts.d[test] / cut)))
    labels = list(dict.fromkeys(pts.size))
    if not FORMS[form_name].per_size and len(labels) >= 3:
        for label in labels:
            test = pts.size == label
            train_n = np.unique(pts.n[~test])
            near = train_n[np.argmin(np.abs(np.log(train_n) - np.log(pts.n[test][0])))]
            out.append(Split("size", f"without {label}", ~test, test, np.log10(pts.n[test] / near)))
    return out


def heldout_predictions(pts: Points, forms=None, draws: int = HELDOUT_DRAWS,
                        level: float = DEFAULT_LEVEL, seed: int = 0) -> pd.DataFrame:
    """One row per (form, split, held-out run); a split a form cannot fit gets one row with a note."""
    rows = []
    for name in forms or list(FORMS):
        for sp in splits(pts, name):
            train, test = pts.subset(sp.train), pts.subset(sp.test)
            base = {"form": name, "scheme": sp.scheme, "split": sp.name}
            try:
                check_fittable(FORMS[name], train)
                fit = fit_form(name, train)
            except UserError as err:
                rows.append({**base, "note": str(err)})
                continue
            pred = fit.predict_log(test)
            lo = hi = np.full(len(test), np.nan)
            if draws > 0:
                boot = bootstrap(fit, train, draws=draws, seed=seed)
                if len(boot.thetas):
                    lo, hi = interval(predictive_draws(fit, boot, test, seed=seed), level)
            ppl, pred_ppl = np.exp(test.loss), np.exp(np.exp(pred))  # pred is ln L, PPL = e^L
            for i in range(len(test)):
                rows.append({**base, "size": test.size[i], "n": test.n[i], "tokens": test.d[i],
                             "sparsity": test.s[i], "loss": test.loss[i], "pred_loss": pred[i],
                             "ppl": ppl[i], "pred_ppl": pred_ppl[i], "lo_ppl": np.exp(np.exp(lo[i])),
                             "hi_ppl": np.exp(np.exp(hi[i])), "distance": sp.distance[i],
                             "rel_err": pred_ppl[i] / ppl[i] - 1, "note": ""})
    cols = ["form", "scheme", "split", "size", "n", "tokens", "sparsity", "loss", "pred_loss",
            "ppl", "pred_ppl", "lo_ppl", "hi_ppl", "distance", "rel_err", "note"]
    df = pd.DataFrame(rows, columns=cols)
    num = cols[4:15]
    df[num] = df[num].astype(float)
    df["are"] = df["rel_err"].abs()
    inside = (df["ppl"] >= df["lo_ppl"]) & (df["ppl"] <= df["hi_ppl"])
    df["covered"] = inside.astype(float).where(df["lo_ppl"].notna())
    return df


def summarize(pred: pd.DataFrame, forms) -> pd.DataFrame:
    """Per form: held-out mean ARE / bias / coverage and counts for each scheme."""
    rows = []
    for name in forms:
        row: dict = {"form": name}
        notes = []
        for scheme in ("tokens", "size"):
            sub = pred[(pred["form"] == name) & (pred["scheme"] == scheme)]
            scored = sub[sub["rel_err"].notna()]
            row[f"{scheme}_splits"] = int(sub["split"].nunique())
            row[f"{scheme}_points"] = len(scored)
            row[f"{scheme}_are"] = float(scored["are"].mean()) if len(scored) else np.nan
            row[f"{scheme}_are_max"] = float(scored["are"].max()) if len(scored) else np.nan
            row[f"{scheme}_bias"] = float(scored["rel_err"].mean()) if len(scored) else np.nan
            cov = scored["covered"].dropna().astype(float)
            row[f"{scheme}_coverage"] = float(cov.mean()) if len(cov) else np.nan
            skipped = sub[sub["rel_err"].isna()]
            if len(skipped):
                notes.append(f"{len(skipped)} {scheme} split(s) not fitted: {skipped['note'].iloc[0]}")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


def choose_form(table: pd.DataFrame) -> str:
    """The form with the lowest mean held-out ARE over tokens among those scored on every point."""
    scored = table[table["tokens_points"] > 0]
    if scored.empty:
        raise UserError("no form could be validated: need at least 3 distinct token budgets")
    full = scored[scored["tokens_points"] == scored["tokens_points"].max()]
    return str(full.sort_values(["tokens_are", "size_are"], na_position="last")["form"].iloc[0])


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


def heldout_table(data: pd.DataFrame | Points, forms=None, method: str = "cast",
                  columns: ColumnMap | None = None, draws: int = HELDOUT_DRAWS,
                  level: float = DEFAULT_LEVEL, seed: int = 0) -> pd.DataFrame:
    """Held-out table (one row per form, ``chosen`` marks the default) for a frame of runs.

    ``data`` is a store-schema frame (rows of ``method``), a table mapped by ``columns``, or
    Points. Forms the data cannot identify are listed with a note and no scores.
    """
    pts = data if isinstance(data, Points) else points_from_frame(data, method, columns)
    usable, excluded = candidate_forms(pts, forms)
    table = summarize(heldout_predictions(pts, usable, draws, level, seed), usable)
    if excluded:
        table = pd.concat([table, pd.DataFrame([{"form": k, "note": v} for k, v in excluded.items()])],
                          ignore_index=True)
    table["chosen"] = False
    if usable:
        table.loc[table["form"] == choose_form(table), "chosen"] = True
    return table
