"""CAST against each sparse baseline, paired by (size, seed), and the life of the sparse masks.

Pairs are formed at each size's largest CAST budget: a trained baseline at that same budget with
the same seed, a one-shot baseline (0 tokens) with the same seed (its calibration sample's seed).
The paired difference is d = ln PPL_cast - ln PPL_baseline (the eval-loss difference, nats per
token); negative means CAST wins. Over all pairs of a baseline: the paired t test of mean d = 0
(scipy.stats.ttest_1samp on d, the same as ttest_rel) and the two-sided sign test of CAST winning
half the pairs (scipy.stats.binomtest).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from castlab.report.tables import DASH, METHOD_ORDER, ONESHOT, f_num, f_pct, ok_rows, sizes

BASELINES = ("sr-ste", "ast", "magnitude", "wanda", "sparsegpt")


def _largest_budget_per_size(runs: pd.DataFrame, rows: pd.DataFrame):
    """(model, the runs at that model's largest budget) per size of ``rows`` that has runs."""
    for model in sizes(rows):
        mine = runs[runs["model"] == model]
        if len(mine):
            yield model, mine[mine["tokens"] == mine["tokens"].max()]


def pairs(rows: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Columns model, seed, cast_loss, base_loss, d (cast - baseline) of every matched pair."""
    ok = ok_rows(rows)
    cast = ok[ok["method"] == "cast"]
    out = []
    for model, top in _largest_budget_per_size(cast, rows):
        tokens = 0 if baseline in ONESHOT else int(top["tokens"].iloc[0])
        base = ok[(ok["method"] == baseline) & (ok["model"] == model) & (ok["tokens"] == tokens)]
        merged = top.merge(base, on="seed", suffixes=("_cast", "_base"))
        for r in merged.itertuples(index=False):
            out.append({"model": model, "seed": int(r.seed), "cast_loss": r.eval_loss_cast,
                        "base_loss": r.eval_loss_base, "d": r.eval_loss_cast - r.eval_loss_base})
    return pd.DataFrame(out, columns=["model", "seed", "cast_loss", "base_loss", "d"])


def paired_tests(rows: pd.DataFrame) -> pd.DataFrame:
    """Per baseline: pairs, CAST wins, mean d, mean PPL change, t, p (t test), p (sign test)."""
    out = []
    for baseline in BASELINES:
        p = pairs(rows, baseline)
        n = len(p)
        if n == 0:
            continue
        d = p["d"].to_numpy()
        wins = int((d < 0).sum())
        t = p_t = math.nan
        if n >= 2 and np.std(d, ddof=1) > 0:
            res = stats.ttest_1samp(d, 0.0)
            t, p_t = float(res.statistic), float(res.pvalue)
        p_sign = float(stats.binomtest(wins, n, 0.5).pvalue)
        out.append({"baseline": baseline, "pairs": n, "cast_wins": wins, "mean_d": float(d.mean()),
                    "ppl_change": math.exp(float(d.mean())) - 1, "t": t, "p_t": p_t,
                    "p_sign": p_sign, "sizes": p["model"].nunique()})
    return pd.DataFrame(out)


def paired_table(rows: pd.DataFrame) -> pd.DataFrame:
    """``paired_tests`` formatted for the report."""
    tests = paired_tests(rows)
    if not len(tests):
        return pd.DataFrame({"baseline": [DASH]})
    return pd.DataFrame({
        "baseline": tests["baseline"],
        "pairs (sizes x seeds)": [f"{n} ({s} sizes)" for n, s in zip(tests["pairs"], tests["sizes"],
                                                                    strict=True)],
        "CAST wins": [f"{w}/{n}" for w, n in zip(tests["cast_wins"], tests["pairs"], strict=True)],
        "mean PPL change (CAST vs it)": [f_pct(x, signed=True) for x in tests["ppl_change"]],
        "paired t": [f_num(x, ".3g") for x in tests["t"]],
        "p (t)": [f_num(x, ".2g") for x in tests["p_t"]],
        "p (sign test)": [f_num(x, ".2g") for x in tests["p_sign"]],
    })


def best_sparse_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per size: mean +- sd PPL over seeds of every sparse method at the largest CAST budget
    (one-shot methods at 0 tokens), and which method has the lowest mean."""
    ok = ok_rows(rows)
    out = []
    for model in sizes(rows):
        cast = ok[(ok["method"] == "cast") & (ok["model"] == model)]
        if not len(cast):
            continue
        top = int(cast["tokens"].max())
        line, means = {"size": model, "tokens": f"{top:,}"}, {}
        for method in METHOD_ORDER:
            tokens = 0 if method in ONESHOT else top
            sel = ok[(ok["method"] == method) & (ok["model"] == model) & (ok["tokens"] == tokens)]
            if not len(sel):
                continue
            ppl = sel["ppl"].to_numpy()
            sd = f" ± {np.std(ppl, ddof=1):.2f}" if len(ppl) > 1 else ""
            line[method] = f"{ppl.mean():.2f}{sd} (n={len(ppl)})"
            if method != "dense-kd":
                means[method] = ppl.mean()
        line["best sparse"] = min(means, key=means.get) if means else DASH
        out.append(line)
    return pd.DataFrame(out).fillna(DASH)


MASK_LIFE = ("mask_drift_half", "mask_drift", "mask_flip_rate", "masked_step_lr", "prune_shock",
             "masked_kept_ratio")


def mask_life_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Trained sparse methods at each size's largest budget: mean mask life over seeds."""
    ok = ok_rows(rows)
    ok = ok[ok["method"].isin(["cast", "sr-ste", "ast"])]
    if not len(ok) or "mask_drift" not in ok:
        return pd.DataFrame({"size": [DASH]})
    out = []
    for model, top in _largest_budget_per_size(ok, rows):
        for method, group in top.groupby("method", sort=False):
            out.append({"size": model, "method": method, "tokens": f"{int(group['tokens'].iloc[0]):,}",
                        "runs": str(len(group)),
                        "drift at T/2": f_pct(group["mask_drift_half"].mean()),
                        "drift at end": f_pct(group["mask_drift"].mean()),
                        "flip rate / refresh": f_num(group["mask_flip_rate"].mean(), ".2e"),
                        "masked step / lr": f_num(group["masked_step_lr"].mean(), ".3g"),
                        "prune shock (nats)": f_num(group["prune_shock"].mean(), ".4f"),
                        "masked/kept": f_num(group["masked_kept_ratio"].mean(), ".3g")})
    return pd.DataFrame(out)
