"""Report figures (PNG): PPL vs tokens per size with the law, predicted vs actual, residuals.

Drawn for a reader taking them in at a glance: plain tick labels (100, 110; 16k, 1M), never
powers of ten; the dense teacher and the dense-KD twin drawn as reference lines on every size,
so a law band that dips below the teacher is visibly wrong; one panel per size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from castlab.plotting import METHOD_COLORS, plain_axis, pyplot, save, tokens_label, wrapped
from castlab.report.runs import seed_noise
from castlab.report.study import KIND_LABELS, Study, quarter_points
from castlab.report.tables import cells, ok_rows, sizes, teachers

FIGURES = {"ppl_vs_tokens": "ppl_vs_tokens.png", "pred_vs_actual": "pred_vs_actual.png",
           "residuals": "residuals_vs_extrapolation.png"}
# Trained methods get markers; one-shot pruners (0 training tokens) have no place on a token
# axis and are in the headline table instead. Sparse methods often land within a PPL of each
# other at the same budget: each has its own open marker, a small sideways offset (octaves of
# the token axis) and a z-order, so none hides another.
MARKERS = {"cast": "o", "dense-kd": "s", "sr-ste": "^", "ast": "D"}
STYLE = {m: (marker, METHOD_COLORS[m]) for m, marker in MARKERS.items()}
OFFSET = {"cast": 0.0, "sr-ste": -0.1, "ast": 0.1, "dense-kd": 0.0}  # in octaves
ZORDER = {"dense-kd": 3, "cast": 4, "sr-ste": 5, "ast": 6}


def ppl_label(rows: pd.DataFrame) -> str:
    """The PPL axis label with its unit: validation PPL at the eval sequence length of the rows."""
    lens = sorted({int(v) for v in rows["seq_len"].dropna()}) if "seq_len" in rows else []
    return "validation PPL" + (f" at seq_len {'/'.join(map(str, lens))}" if lens else "")


def _plain_axes(ax, log_x: bool = True) -> None:
    from matplotlib.ticker import NullFormatter

    if log_x:  # token budgets double: a base-2 locator puts a labelled tick on each budget
        ax.set_xscale("log")
        plain_axis(ax.xaxis, tokens_label, log_base=2)
        ax.xaxis.set_minor_formatter(NullFormatter())
    plain_axis(ax.yaxis)


def ppl_vs_tokens(rows: pd.DataFrame, study: Study, path: Path) -> Path:
    """One panel per size: PPL (mean ± sd over seeds) of every trained method vs tokens, the
    law's CAST curve with its band, and the teacher and the dense-KD twin as reference lines."""
    plt = pyplot()
    models = sizes(rows)
    ncol = min(2, len(models))
    nrow = -(-len(models) // ncol)
    spare = ncol * nrow > len(models)
    # a grid without a spare panel gets its legend on the right: widen the canvas for it
    width = 6.2 * ncol + (0 if spare else 2.6)
    fig, axes = plt.subplots(nrow, ncol, figsize=(width, 4.2 * nrow + 0.4), squeeze=False)
    c = cells(rows)
    c = c[c["tokens"] > 0]
    teach = teachers(rows).set_index("model")
    law = study.law
    for ax, model in zip(axes.flat, models, strict=False):
        sub = c[c["model"] == model]
        d_max = float(sub["tokens"].max()) if len(sub) else 1.0
        for method, g in sub.groupby("method"):
            marker, color = STYLE.get(str(method), ("x", "tab:gray"))
            sd = np.nan_to_num(g["ppl_sd"].to_numpy(float))
            # the dense twin is a reference line (what the same budget gives unpruned)
            twin = method == "dense-kd"
            x = g["tokens"].to_numpy(float) * 2 ** OFFSET.get(str(method), 0.0)
            ax.errorbar(x, g["ppl"], yerr=sd, fmt=marker + (":" if twin else ""),
                        color=color, mfc="white", mew=1.4, ms=6, capsize=2, lw=1.2,
                        zorder=ZORDER.get(str(method), 3),
                        label="dense-kd twin (reference)" if twin else str(method))
        t = teach.loc[model]
        if np.isfinite(t["ppl"]):
            ax.axhline(t["ppl"], color="black", ls="--", lw=1, label="dense teacher (reference)")
        if law is not None and study.points is not None:
            _law_band(ax, study, model, float(sub["tokens"].min()), d_max)
        ax.axvline(d_max, color="grey", ls=":", lw=0.8)
        _plain_axes(ax)
        n = f"N = {int(sub['n'].iloc[0]):,}, " if len(sub) else ""
        ax.set(title=f"{model} ({n}teacher PPL {t['ppl']:.2f})",
               xlabel="training tokens after the teacher", ylabel=ppl_label(rows))
        ax.grid(alpha=0.25, which="major")
    _shared_legend(fig, axes, len(models))
    title = "validation PPL vs training tokens"
    if law is not None:
        title += f"; law {law.fit.form} fitted to CAST with its {law.level:.0%} band"
    fig.suptitle(wrapped(title, width, 11))
    return save(fig, path)


def _shared_legend(fig, axes, used: int) -> bool:
    """One legend for all panels (per-panel legends hide the points): in a spare panel if the
    grid has one, else on the right of the panels (constrained layout keeps it on the canvas)."""
    handles: dict[str, object] = {}
    for ax in list(axes.flat)[:used]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    order = sorted(handles, key=lambda k: ("reference" in k, k.startswith("law") or "band" in k, k))
    spare = list(axes.flat)[used:]
    for ax in spare:
        ax.axis("off")
    if spare:
        spare[0].legend([handles[k] for k in order], order, loc="center", fontsize=10)
        return False
    fig.legend([handles[k] for k in order], order, loc="outside right center", fontsize=9)
    return True


def _law_band(ax, study: Study, model: str, d_min: float, d_max: float) -> None:
    pts, law = study.points, study.law
    idx = np.flatnonzero(pts.size == model)
    if not len(idx):
        return
    grid = np.geomspace(d_min / 1.2, d_max * 2, 50)
    q = pts.subset(np.full(len(grid), idx[0]))
    q.d = grid
    try:
        pred = law.predict(q)
    except Exception:  # noqa: BLE001 - a per-size law may not reach this size: draw no band
        return
    ppl = np.array([p["ppl"] for p in pred])
    lo, hi = np.array([p["ppl_lo"] for p in pred]), np.array([p["ppl_hi"] for p in pred])
    ax.plot(grid, ppl, color="tab:red", lw=1.3, alpha=0.8, label=f"law ({law.fit.form})")
    ax.fill_between(grid, lo, hi, color="tab:red", alpha=0.12, label=f"{law.level:.0%} band")


def pred_vs_actual(study: Study, path: Path) -> Path:
    """Held-out predictions of the chosen form vs the actual PPL, with intervals and y = x."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ho = study.heldout
    ho = ho[(ho["form"] == study.chosen) & ho["rel_err"].notna()]
    quarter = quarter_points(ho)
    others = ho[(ho["scheme"] != "size") & ~ho.index.isin(quarter.index)]
    # the splits by name where validation names them (D/2 -> D), else as one group
    named = ", ".join(KIND_LABELS.get(str(k), str(k)) for k in dict.fromkeys(others["scheme"]))
    groups = {named or "other token splits": (others, "o", "tab:orange"),
              "leave one size out": (ho[ho["scheme"] == "size"], "s", "tab:purple"),
              "D/4 -> D": (quarter, "D", "tab:red")}
    values = []
    for label, (g, marker, color) in groups.items():
        if g.empty:
            continue
        err = np.vstack([g["pred_ppl"] - g["lo_ppl"], g["hi_ppl"] - g["pred_ppl"]])
        err = np.clip(np.nan_to_num(err), 0, None)  # an interval need not hold its point
        ax.errorbar(g["ppl"], g["pred_ppl"], yerr=err, fmt=marker, color=color, ms=5,
                    alpha=0.8, elinewidth=0.8, label=f"{label} ({study.level:.0%} interval)")
        values += [g["ppl"].to_numpy(), g["pred_ppl"].to_numpy()]
    if values:
        allv = np.concatenate(values)
        lim = np.array([allv.min() * 0.97, allv.max() * 1.03])
        ax.plot(lim, lim, "k--", lw=1, label="y = x")
        ax.set(xlim=lim, ylim=lim)
    _plain_axes(ax, log_x=False)
    plain_axis(ax.xaxis)
    ax.set(xlabel="actual validation PPL", ylabel="predicted PPL",
           title=f"law {study.chosen}: held-out predicted vs actual")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    return save(fig, path)


def cast_seed_noise(rows: pd.DataFrame) -> float:
    """CAST's PPL sd over seeds relative to its mean, at each size's largest repeated budget,
    averaged over sizes: what re-running a cell moves its PPL by (NaN without repeated cells)."""
    noise = seed_noise(rows)
    cast = noise[noise["method"] == "cast"].sort_values("tokens")
    top = cast.groupby("model")["rel_sd"].last()
    return float(top.mean()) if len(top) else float("nan")


def residuals(study: Study, path: Path, noise: float = float("nan")) -> Path:
    """Held-out relative PPL error vs extrapolation distance (x beyond the training data); the
    band is CAST's seed noise (``cast_seed_noise``) where known."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ho = study.heldout
    ho = ho[(ho["form"] == study.chosen) & ho["rel_err"].notna()]
    # one style per kind of split the validation ran: only those with points get a legend entry
    markers = {"D/2": ("o", "tab:orange"), "D/4": ("D", "tab:red"), "tokens": ("o", "tab:orange"),
               "size": ("s", "tab:purple")}
    for scheme, sub in ho.groupby("scheme", sort=False):
        marker, color = markers.get(str(scheme), ("x", "tab:gray"))
        # distance is log10 of the ratio; a reader thinks in "4x the largest fitted budget"
        ax.scatter(10 ** sub["distance"], 100 * sub["rel_err"], marker=marker, color=color,
                   s=24, alpha=0.8, zorder=3,
                   label=f"{KIND_LABELS.get(str(scheme), str(scheme))} ({len(sub)} runs)")
    ax.axhline(0, color="k", lw=1)
    if np.isfinite(noise):
        ax.axhspan(-100 * noise, 100 * noise, color="grey", alpha=0.15,
                   label=f"±{100 * noise:.2f}%: CAST's PPL sd over seeds")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log")
    # Ratios of a sweep span less than a decade or two: a log locator would leave no labelled
    # tick, so label the round ratios inside the data's range.
    ratios = 10 ** ho["distance"].to_numpy(float) if len(ho) else np.array([1.0, 2.0])
    nice = [1, 1.25, 1.5, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256, 512, 1024]
    ticks = [v for v in nice if min(1.0, ratios.min()) / 1.15 <= v <= ratios.max() * 1.15] or [1, 2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    # from 1x (no extrapolation) to past the farthest point: never a zoom onto one column
    ax.set_xlim(min(1.0, ratios.min()) / 1.1, max(2.0, ratios.max()) * 1.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}%"))
    what = " or N" if (ho["scheme"] == "size").any() else ""
    ax.set(xlabel=f"extrapolation: held-out / largest fitted value (tokens{what})",
           ylabel="held-out PPL error", title=f"law {study.chosen}: held-out residuals")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return save(fig, path)


def draw_all(rows: pd.DataFrame, study: Study, out_dir: Path) -> dict[str, Path]:
    """Every figure that the data allows, key -> path (law figures only with a chosen form)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {"ppl_vs_tokens": ppl_vs_tokens(ok_rows(rows), study,
                                          out_dir / FIGURES["ppl_vs_tokens"])}
    if study.chosen is not None and len(study.heldout):
        out["pred_vs_actual"] = pred_vs_actual(study, out_dir / FIGURES["pred_vs_actual"])
        out["residuals"] = residuals(study, out_dir / FIGURES["residuals"],
                                     cast_seed_noise(ok_rows(rows)))
    return out
