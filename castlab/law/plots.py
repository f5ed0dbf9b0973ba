"""Law figures (PNG): predicted vs actual, PPL vs tokens per size, residuals vs extrapolation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from castlab.law.bootstrap import interval, predictive_draws
from castlab.law.forms import FORMS
from castlab.law.points import Points
from castlab.law.predict import Law
from castlab.law.validate import ppl_of_log_loss
from castlab.plotting import plain_axis, pyplot, save, size_colors, tokens_label

# law_ prefix: `castlab report` writes other figures under the plain names
FIGURES = ("law_pred_vs_actual.png", "law_ppl_vs_tokens.png", "law_residuals.png")
MAX_CURVES = 12


def plot_all(law: Law, pts: Points, heldout: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the three figures into ``out_dir``; ``heldout`` rows are the chosen form's."""
    out_dir = Path(out_dir)
    return [pred_vs_actual(law, pts, heldout, out_dir / FIGURES[0]),
            ppl_vs_tokens(law, pts, out_dir / FIGURES[1]),
            residuals_vs_extrapolation(heldout, law.fit.form + _mark(law), out_dir / FIGURES[2])]


def _mark(law: Law) -> str:
    """' (NOT VALIDATED)' for a law no held-out split could score, else ''."""
    return " (NOT VALIDATED)" if law.meta.get("validated") is False else ""


def pred_vs_actual(law: Law, pts: Points, heldout: pd.DataFrame, path: Path) -> Path:
    """Log-log predicted vs actual PPL: in-sample fit, held-out predictions with intervals, y = x."""
    plt = pyplot(11)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    actual, fitted = np.exp(pts.loss), ppl_of_log_loss(law.fit.predict_log(pts))
    ax.scatter(actual, fitted, s=22, c="tab:blue", alpha=0.7, label="in-sample (fit on all runs)")
    ho = heldout[heldout["scheme"] != "size"].dropna(subset=["pred_ppl"])  # D/2, D/4 (tokens)
    if len(ho):
        err = np.vstack([ho["pred_ppl"] - ho["lo_ppl"], ho["hi_ppl"] - ho["pred_ppl"]])
        # a bootstrap interval need not contain the point prediction: clip the bars at 0
        err = np.clip(np.where(np.isfinite(err), err, 0), 0, None)
        ax.errorbar(ho["ppl"], ho["pred_ppl"], yerr=err, fmt="x",
                    color="tab:red", ms=6, alpha=0.8, elinewidth=0.8,
                    label=f"held out (larger budgets), {law.level:.0%} interval")
    allv = np.concatenate([actual, fitted, ho["pred_ppl"].to_numpy()])
    allv = allv[np.isfinite(allv) & (allv > 0)]
    lim = np.array([allv.min() / 1.05, allv.max() * 1.05])
    ax.plot(lim, lim, "k--", lw=1, label="y = x")
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="actual validation PPL",
           ylabel="predicted PPL", title=f"law {law.fit.form}{_mark(law)}: predicted vs actual")
    plain_axis(ax.xaxis)
    plain_axis(ax.yaxis)
    ax.legend(fontsize=9, loc="upper left")
    return save(fig, path)


def ppl_vs_tokens(law: Law, pts: Points, path: Path) -> Path:
    """Observed PPL vs tokens per size with the fitted curve and its prediction band (a
    schedule-aware law: each run's fitted path through its checkpoints, no band)."""
    plt = pyplot(11)
    fig, ax = plt.subplots(figsize=(7, 5))
    d_grid = np.geomspace(pts.d.min() / 1.5, pts.d.max() * 4, 60)
    # sizes in order of N (then sparsity), coloured along one sequential colormap
    order = np.lexsort((pts.s, pts.n))
    keys = list(dict.fromkeys(zip(pts.size[order], pts.s[order], strict=True)))
    colors = size_colors(len(keys))
    # Many sizes (an external table): every run is drawn, curves and legend for at most
    # MAX_CURVES of them, evenly spread, so the figure stays readable and fast.
    curved = {int(v) for v in np.linspace(0, len(keys) - 1, min(len(keys), MAX_CURVES)).round()}
    for i, (label, s) in enumerate(keys):
        m = (pts.size == label) & (pts.s == s)
        c = colors[i]
        name = f"{label}" + (f", S={s:g}" if len(np.unique(pts.s)) > 1 else "")
        ax.scatter(pts.d[m], np.exp(pts.loss[m]), color=c, s=20, zorder=3,
                   label=name if i in curved else None)
        if i not in curved:
            continue
        if "areas" in FORMS[law.fit.form].needs:  # a schedule-aware law: each run's own path
            for run in dict.fromkeys(pts.runs()[m]):
                r = np.flatnonzero(m & (pts.runs() == run))
                r = r[np.argsort(pts.d[r])]
                ax.plot(pts.d[r], ppl_of_log_loss(law.fit.predict_log(pts.subset(r))), color=c,
                        lw=1.0)
            continue
        q = pts.subset(np.flatnonzero(m)[np.zeros(len(d_grid), int)])
        q.d = d_grid
        y = law.fit.predict_log(q)
        if not np.isfinite(y).all():
            continue
        ax.plot(d_grid, ppl_of_log_loss(y), color=c, lw=1.5)
        if not law.no_interval():
            lo, hi = interval(predictive_draws(law.fit, law.boot, q), law.level)
            ax.fill_between(d_grid, ppl_of_log_loss(lo), ppl_of_log_loss(hi), color=c, alpha=0.15)
    ax.axvline(pts.d.max(), color="grey", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="training tokens D", ylabel="validation PPL",
           title=f"law {law.fit.form}{_mark(law)}: PPL vs tokens ("
                 + ("lines: each run's fitted path" if "areas" in FORMS[law.fit.form].needs
                    else f"{law.level:.0%} band") + ", dotted: largest fitted D)")
    plain_axis(ax.xaxis, tokens_label)
    plain_axis(ax.yaxis)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    return save(fig, path)


def residuals_vs_extrapolation(heldout: pd.DataFrame, form: str, path: Path) -> Path:
    """Held-out relative PPL error vs how far beyond the training data the point lies."""
    plt = pyplot(11)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # one entry per kind of split that has points (no promise of splits that did not run)
    styles = {"D/2": ("o", "tab:red", "tokens: D from <= D/2"),
              "D/4": ("D", "tab:orange", "tokens: D from <= D/4"),
              "size": ("s", "tab:purple", "model size (left out)")}
    ho = heldout.dropna(subset=["rel_err"])
    for scheme, sub in ho.groupby("scheme", sort=False):
        marker, color, label = styles.get(str(scheme), ("x", "tab:gray", str(scheme)))
        ax.scatter(sub["distance"], 100 * sub["rel_err"], marker=marker, color=color, s=22,
                   alpha=0.75, label=f"{label} ({len(sub)})")
    # from 0 (no extrapolation) past the farthest point: never a zoom onto one column
    dist = ho["distance"].to_numpy(float)
    if len(dist):
        ax.set_xlim(min(0.0, dist.min()) - 0.02, max(0.1, dist.max()) * 1.25)
    ax.axhline(0, color="k", lw=1)
    ax.axhspan(-1, 1, color="grey", alpha=0.15, label="±1%")
    ax.set(xlabel="extrapolation distance (decades beyond the training data, log10 ratio)",
           ylabel="held-out PPL error (%)", title=f"law {form}: held-out residuals")
    ax.legend(fontsize=9)
    return save(fig, path)
