"""Report figures: the law's own plots (castlab.law.plots) and PPL vs tokens for every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.lawstudy import Study, predictions_frame
from analysis.tables import ONESHOT, cells, sizes, teacher_ppl
from castlab.law import plots
from castlab.law.validate import ppl_of_log_loss

FIGURES = {"ppl_vs_tokens": "ppl_vs_tokens.png", "pred_vs_actual": "pred_vs_actual.png",
           "law_ppl_vs_tokens": "law_ppl_vs_tokens.png",
           "residuals": "residuals_vs_extrapolation.png"}
STYLE = {"dense-kd": ("tab:gray", "s", "-"), "cast": ("tab:blue", "o", "-"),
         "sr-ste": ("tab:orange", "^", ""), "ast": ("tab:green", "v", ""),
         "magnitude": ("tab:red", None, "--"), "wanda": ("tab:purple", None, "-."),
         "sparsegpt": ("tab:brown", None, ":")}


def _heldout_for_plots(study: Study) -> pd.DataFrame:
    """The chosen form's held-out total-PPL rows in castlab.law.validate's column names."""
    p = predictions_frame(study.data.get("heldout", []))
    p = p[(p["form"] == study.data.get("chosen")) & (p["target"] == "total")]
    p = p[p["rel_err"].notna()]
    return pd.DataFrame({"scheme": p["scheme"].map(lambda s: "size" if s == "size" else "tokens"),
                         "ppl": p["actual"], "pred_ppl": p["pred"], "lo_ppl": p["lo"],
                         "hi_ppl": p["hi"], "rel_err": p["rel_err"], "distance": p["distance"]})


def law_figures(study: Study, out_dir: Path) -> list[Path]:
    """Predicted vs actual, the law's PPL vs tokens, residuals vs extrapolation (chosen form)."""
    if study.law is None:
        return []
    ho = _heldout_for_plots(study)
    return [pred_vs_actual(study, ho, out_dir / FIGURES["pred_vs_actual"]),
            plots.ppl_vs_tokens(study.law, study.cast, out_dir / FIGURES["law_ppl_vs_tokens"]),
            plots.residuals_vs_extrapolation(ho, study.law.fit.form,
                                             out_dir / FIGURES["residuals"])]


def pred_vs_actual(study: Study, ho: pd.DataFrame, path: Path) -> Path:
    """Predicted vs actual PPL: in-sample fit, held-out predictions with their intervals, y = x.

    Drawn here rather than with castlab.law.plots.pred_vs_actual: that one passes the interval
    as symmetric-style error bars and raises when a bootstrap interval does not contain the point
    prediction (a skewed bootstrap), which happens on real held-out splits.
    """
    plt = _pyplot()
    law, pts = study.law, study.cast
    fig, ax = plt.subplots(figsize=(6.2, 5.8))
    actual, fitted = np.exp(pts.loss), ppl_of_log_loss(law.fit.predict_log(pts))  # bounded
    ax.scatter(actual, fitted, s=22, c="tab:blue", alpha=0.7, label="in-sample (fit on all runs)")
    styles = {"tokens": ("x", "tab:red", "held out: D from budgets <= D/2 or <= D/4"),
              "size": ("+", "tab:purple", "held out: leave one size out")}
    for scheme, (marker, color, label) in styles.items():
        sub = ho[ho["scheme"] == scheme]
        if sub.empty:
            continue
        ax.vlines(sub["ppl"], sub["lo_ppl"], sub["hi_ppl"], color=color, lw=0.8, alpha=0.6)
        ax.scatter(sub["ppl"], sub["pred_ppl"], marker=marker, color=color, s=40,
                   label=f"{label} ({law.level:.0%} interval)")
    vals = np.concatenate([actual, fitted, ho["pred_ppl"].to_numpy()])
    vals = vals[np.isfinite(vals)]
    lim = np.array([vals.min() / 1.05, vals.max() * 1.05])
    ax.plot(lim, lim, "k--", lw=1, label="y = x")
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="actual validation PPL",
           ylabel="predicted validation PPL", title=f"law {law.fit.form}: predicted vs actual")
    _plain_log_labels(ax, "both")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _plain_log_labels(ax, axis: str) -> None:
    """Plain, evenly spread numbers on log axes (call after the limits are final).

    Log-axis defaults label only decades (and 2x, 3x ...): a PPL range of 90-140 would show just
    "100"; MaxNLocator picks 5-7 round values inside the limits instead.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    pairs = [(ax.xaxis, ax.get_xlim), (ax.yaxis, ax.get_ylim)] if axis == "both" else \
        [(ax.yaxis, ax.get_ylim)]
    for a, limits in pairs:
        lo, hi = limits()
        ticks = [t for t in MaxNLocator(nbins=6).tick_values(lo, hi) if lo <= t <= hi and t > 0]
        a.set_ticks(ticks)
        a.set_major_formatter(fmt)
        a.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def methods_figure(rows: pd.DataFrame, path: Path) -> Path:
    """One panel per size: validation PPL vs training tokens for every method, teacher as a line."""
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    models = sizes(rows)
    c = cells(rows)
    teach = teacher_ppl(rows)
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(4.6 * max(1, len(models)), 4.6),
                             sharey=True, squeeze=False)
    budgets = sorted(b for b in set(c["tokens"]) if b > 0) if len(c) else [1]
    span = (budgets[0] / 1.4, budgets[-1] * 1.4)
    for ax, model in zip(axes[0], models, strict=False):
        ax.axhline(teach[model], color="black", lw=1.2, label="dense teacher")
        for method, (color, marker, ls) in STYLE.items():
            sub = c[(c["model"] == model) & (c["method"] == method)].sort_values("tokens")
            if sub.empty:
                continue
            if method in ONESHOT:  # no training tokens: a level to beat, drawn across the axis
                ax.hlines(sub["ppl"].iloc[0], *span, color=color, ls=ls, lw=1.2,
                          label=f"{method} (one-shot)")
                continue
            err = np.nan_to_num(sub["ppl_sd"].to_numpy())
            ax.errorbar(sub["tokens"], sub["ppl"], yerr=err, color=color, marker=marker,
                        ls=ls or "none", ms=5, capsize=2, label=method)
        ax.set(xscale="log", yscale="log", xlim=span, title=model,
               xlabel="training tokens D (log scale)")
        # Budgets as tick labels: log-axis defaults (2x10^4, 3x10^4, ...) overlap.
        ax.set_xticks(budgets, [f"{b / 1000:.0f}k" for b in budgets])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.25)
    _plain_log_labels(axes[0][0], "y")  # shared y axis: once, after every panel set its data
    axes[0][0].set_ylabel("validation PPL (log scale)")
    legend = {}  # every method once, whichever panel drew it
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    axes[0][-1].legend(legend.values(), legend.keys(), fontsize=8, loc="upper right")
    fig.suptitle("Validation PPL vs training tokens (error bars: sd over seeds)", fontsize=12)
    return _save(fig, path)
