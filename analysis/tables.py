"""The law tables of REPORT.md, built from the stored law study (JSON), and the prune shock per
budget that explains its D/4 -> D errors. The tables of the rows themselves (headline, cells,
convergence, runs, seed noise, paired tests) are castlab.report's.

Every function returns a DataFrame of already formatted strings, so the markdown written to the
report and the markdown rebuilt by tests/test_report.py are equal character for character.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.lawstudy import SCHEMES, predictions_frame
from castlab.report.tables import DASH, f_int, f_num, f_pct, f_ppl, ok_rows

SCHEME_LABEL = {"D/2": "D/2 -> D", "D/4": "D/4 -> D", "size": "leave one size out"}


# ---- law tables (rows of the stored study) ------------------------------------------------------

def heldout_summary(study: dict) -> pd.DataFrame:
    """Numeric summary per (target, form, scheme): points, mean/max ARE, bias, coverage, note."""
    p = predictions_frame(study.get("heldout", []))
    out = []
    for target in ("total", "gap"):
        for form in study.get("forms", []):
            for scheme in SCHEMES:
                sub = p[(p["target"] == target) & (p["form"] == form) & (p["scheme"] == scheme)]
                if sub.empty:
                    continue
                sc = sub[sub["rel_err"].notna()]
                covered = ((sc["actual"] >= sc["lo"]) & (sc["actual"] <= sc["hi"]))[sc["lo"].notna()]
                notes = sorted(set(sub.loc[sub["note"] != "", "note"]))
                out.append({"target": target, "form": form, "scheme": scheme, "points": len(sc),
                            "are": sc["rel_err"].abs().mean() if len(sc) else np.nan,
                            "are_max": sc["rel_err"].abs().max() if len(sc) else np.nan,
                            "bias": sc["rel_err"].mean() if len(sc) else np.nan,
                            "coverage": covered.mean() if len(covered) else np.nan,
                            "excess": sc["excess_err"].abs().mean() if len(sc) else np.nan,
                            "note": "; ".join(notes)})
    return pd.DataFrame(out, columns=["target", "form", "scheme", "points", "are", "are_max",
                                      "bias", "coverage", "excess", "note"])


def heldout_table(study: dict, target: str) -> pd.DataFrame:
    """Held-out errors of every form for ``target`` ('total' PPL or 'gap' ratio to dense-kd)."""
    s = heldout_summary(study)
    s = s[s["target"] == target]
    chosen = study.get("chosen")
    level = f"{study.get('level', 0.9):.0%}"
    what = "PPL" if target == "total" else "L_cast/L_dense-kd"
    table = pd.DataFrame({
        "form": [f"**{f}** (chosen)" if f == chosen else f for f in s["form"]],
        "split": s["scheme"].map(SCHEME_LABEL), "points": s["points"].astype(str),
        f"mean ARE ({what})": s["are"].map(f_pct), "max ARE": s["are_max"].map(f_pct),
        "bias": s["bias"].map(lambda v: f_pct(v, signed=True)),
        f"{level} coverage": s["coverage"].map(lambda v: f_pct(v, digits=0))})
    if target == "gap":
        table["mean rel. error of the excess"] = s["excess"].map(f_pct).to_numpy()
    table["note"] = s["note"].to_numpy()
    excluded = study.get("excluded", {})
    extra = pd.DataFrame([{**{c: DASH for c in table.columns}, "form": k, "split": "all",
                           "points": "0", "note": v} for k, v in excluded.items()],
                         columns=table.columns)
    return pd.concat([table, extra], ignore_index=True) if len(extra) else table


def chosen_points_table(study: dict) -> pd.DataFrame:
    """The chosen form's held-out predictions of total PPL, one row per held-out run."""
    p = predictions_frame(study.get("heldout", []))
    p = p[(p["form"] == study.get("chosen")) & (p["target"] == "total") & p["rel_err"].notna()]
    return pd.DataFrame({
        "split": p["split"], "size": p["size"], "tokens": p["tokens"].map(f_int),
        "seed": p["seed"].map(f_int), "actual PPL": p["actual"].map(f_ppl),
        "predicted PPL": p["pred"].map(f_ppl),
        "interval": [f"[{f_ppl(lo)}, {f_ppl(hi)}]" for lo, hi in zip(p["lo"], p["hi"], strict=True)],
        "error": p["rel_err"].map(lambda v: f_pct(v, signed=True))})


def params_table(study: dict) -> pd.DataFrame:
    """The chosen form's parameters with bootstrap intervals."""
    params = study.get("params") or {}
    level = f"{study.get('level', 0.9):.0%}"
    return pd.DataFrame({"parameter": list(params),
                         "value": [f_num(v["value"]) for v in params.values()],
                         f"{level} interval": [f"[{f_num(v['lo'])}, {f_num(v['hi'])}]"
                                               for v in params.values()],
                         "bootstrap sd": [f_num(v["sd"]) for v in params.values()]})


def shock_by_budget_table(rows: pd.DataFrame) -> pd.DataFrame:
    """CAST per token budget (all sizes and seeds): optimizer steps, prune shock, masked/kept, and
    which held-out splits fit on it (the budgets a D/4 law learns from vs the D it predicts)."""
    cast = ok_rows(rows)
    cast = cast[cast["method"] == "cast"]
    largest = cast["tokens"].max()
    out = []
    for tokens, g in cast.groupby("tokens"):
        fitted_by = [name for name, cut in (("D/2", largest / 2), ("D/4", largest / 4))
                     if tokens <= cut]
        steps = g["steps"].median() if "steps" in g else float("nan")
        out.append({"tokens": f_int(tokens), "steps": f_int(steps),
                    "runs": f_int(len(g)),
                    "prune shock (nats), mean": f_num(g["prune_shock"].mean(), "+.4f"),
                    "max": f_num(g["prune_shock"].max(), "+.4f"),
                    "masked/kept, mean": f_num(g["masked_kept_ratio"].mean(), ".4f"),
                    "role in held-out splits": ("predicted (D)" if tokens == largest
                                                else "fit by " + ", ".join(fitted_by) if fitted_by
                                                else "neither")})
    return pd.DataFrame(out)
