"""The stored law study's held-out errors against the seed noise of their size (pure).

The seed noise itself (PPL sd at the repeated cells) is castlab.report.runs.seed_noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.lawstudy import predictions_frame
from analysis.tables import SCHEME_LABEL
from castlab.report.runs import seed_noise
from castlab.report.tables import DASH, f_pct, ok_rows, sizes


def gap_noise(rows: pd.DataFrame) -> dict[str, float]:
    """Per model: sd over seeds (ddof 1) of L_cast / L_densekd relative to its mean, at the
    largest budget repeated with several seeds (the noise floor of the gap predictions)."""
    ok = ok_rows(rows)
    key = ["model", "tokens", "seed"]
    cast = ok[ok["method"] == "cast"].groupby(key)["eval_loss"].mean()
    kd = ok[ok["method"] == "dense-kd"].groupby(key)["eval_loss"].mean()
    ratio = (cast / kd).dropna()
    out: dict[str, float] = {}
    for (model, _tokens), g in ratio.groupby(level=[0, 1]):  # ascending tokens: largest wins
        if len(g) > 1:
            out[str(model)] = float(g.std(ddof=1) / g.mean())
    return out


def noise_vs_error(rows: pd.DataFrame, study: dict) -> pd.DataFrame:
    """Per (form, target, scheme, size): held-out mean ARE next to its seed-noise floor (cast PPL
    sd for the total, sd of the cast/dense-kd ratio for the gap)."""
    noise = seed_noise(rows)
    cast = noise[noise["method"] == "cast"] if len(noise) else noise
    floors = {"total": dict(zip(cast.get("model", []), cast.get("rel_sd", []), strict=True)),
              "gap": gap_noise(rows)}
    p = predictions_frame(study.get("heldout", []))
    p = p[p["rel_err"].notna()]
    out = []
    for (form, target, scheme, size), g in p.groupby(["form", "target", "scheme", "size"]):
        are = float(g["rel_err"].abs().mean())
        nf = floors[target].get(size, np.nan)
        out.append({"form": form, "target": target, "scheme": scheme, "size": size, "are": are,
                    "floor": nf, "below": bool(np.isfinite(nf) and are < nf)})
    return pd.DataFrame(out, columns=["form", "target", "scheme", "size", "are", "floor", "below"])


def noise_table(rows: pd.DataFrame, study: dict) -> pd.DataFrame:
    """The chosen form's per-size held-out errors next to the seed noise of cast, dense-kd, gap."""
    noise = seed_noise(rows)
    gap = gap_noise(rows)
    nv = noise_vs_error(rows, study)
    nv = nv[nv["form"] == study.get("chosen")]
    out = []
    for model in sizes(rows):
        row = {"size": model}
        for method in ("cast", "dense-kd"):  # at the largest repeated budget, as the floors
            m = noise[(noise["model"] == model) & (noise["method"] == method)] if len(noise) else noise
            row[f"{method} PPL seed sd"] = f_pct(float(m["rel_sd"].iloc[-1])) if len(m) else DASH
        row["gap seed sd"] = f_pct(gap.get(model, np.nan))
        for target, scheme in (("total", "D/4"), ("total", "D/2"), ("total", "size"), ("gap", "D/4"),
                               ("gap", "D/2")):
            m = nv[(nv["size"] == model) & (nv["target"] == target) & (nv["scheme"] == scheme)]
            name = f"{'PPL' if target == 'total' else 'gap'} ARE {SCHEME_LABEL[scheme]}"
            row[name] = (f_pct(m["are"].iloc[0]) + (" (below noise)" if m["below"].iloc[0] else "")
                         if len(m) else DASH)
        out.append(row)
    return pd.DataFrame(out)


def noise_sentence(rows: pd.DataFrame, study: dict) -> str:
    """A sentence naming the chosen form's held-out errors below their size's seed-noise floor
    (and counting those of the other forms)."""
    nv = noise_vs_error(rows, study)
    if nv["floor"].notna().sum() == 0:
        return ("No cell was run with several seeds, so no noise floor is known: no held-out "
                "error can be claimed as better than a re-run.")
    below = nv[nv["below"]]
    mine = below[below["form"] == study.get("chosen")]
    others = len(below) - len(mine)
    tail = (f" {others} mean error(s) of the other forms (per form, split and size) are below "
            "the floor as well." if others else "")
    if mine.empty:
        return (f"Every held-out mean error of the chosen form ({study.get('chosen')}) is above "
                "the seed-noise floor of its size." + tail)
    items = [f"{r.target} {SCHEME_LABEL[r.scheme]} at {r.size} ({f_pct(r.are)} < {f_pct(r.floor)})"
             for r in mine.itertuples()]
    return (f"Not claimable: these held-out errors of {study.get('chosen')} are below the seed "
            "noise of their size, i.e. no better than re-running the same cell with another "
            "seed: " + "; ".join(items) + "." + tail)
