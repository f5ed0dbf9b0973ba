"""The study's summary: what the rows and the stored law study answer (pure: frames in, text out).

Each line is a question a reader of the study asks (how long did the sweep take, how well does
the law predict the largest budget, does CAST beat the baselines, does its gap to the teacher
close) with what the study measured; yes/no answers lead where the question has one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.lawstudy import predictions_frame
from castlab.report.tables import ONESHOT, cells, f_pct, f_ppl, sizes, teachers

TRAINED_BASELINES = ("sr-ste", "ast")
UNKNOWN = "not measured"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _answer(items: list[tuple[bool, str]], none: str) -> str:
    """'yes: ...' when every item holds, 'no: ...' otherwise; ``none`` when there is no item."""
    if not items:
        return f"{UNKNOWN}: {none}"
    return f"{'yes' if all(ok for ok, _ in items) else 'no'}: " + "; ".join(t for _, t in items)


def sweep_time(timing: dict | None) -> str:
    """The sweep's wall time, teachers cached and from a cold cache where known."""
    parts = []
    if timing and timing.get("wall_seconds") is not None:
        parts.append(f"{_minutes(float(timing['wall_seconds']))} with teachers cached")
    if timing and timing.get("cold_cache_wall_seconds") is not None:
        parts.append(f"{_minutes(float(timing['cold_cache_wall_seconds']))} from a cold cache "
                     "(teachers trained)")
    return "; ".join(parts) or f"{UNKNOWN} (pass --sweep-seconds or write sweep_timing.json)"


def _chosen_total(study: dict) -> pd.DataFrame:
    p = predictions_frame(study.get("heldout", []))
    return p[(p["form"] == study.get("chosen")) & (p["target"] == "total") & p["rel_err"].notna()]


def quarter_error(study: dict) -> str:
    """Mean and max held-out PPL ARE of the chosen form predicting D from budgets <= D/4."""
    p = _chosen_total(study)
    p = p[p["scheme"] == "D/4"]
    if p.empty:
        return f"{UNKNOWN}: no D/4 -> D prediction of the chosen form (too few budgets)"
    are = p["rel_err"].abs()
    return f"{f_pct(are.mean())} mean, {f_pct(are.max())} max over {len(p)} runs ({study['chosen']})"


def coverage(study: dict) -> str:
    """Share of the chosen form's held-out PPL points inside their interval (every split)."""
    p = _chosen_total(study)
    p = p[p["lo"].notna()]
    if p.empty:
        return f"{UNKNOWN}: no held-out interval (no chosen form or no bootstrap draws)"
    cov = float(((p["actual"] >= p["lo"]) & (p["actual"] <= p["hi"])).mean())
    return (f"{f_pct(cov, digits=0)} of {len(p)} held-out runs "
            f"({', '.join(sorted(set(p['scheme'])))}; {study['chosen']})")


def versus_oneshot(rows: pd.DataFrame) -> str:
    """Does CAST at every budget beat every one-shot pruner, at every size?

    One-shot pruning trains on no tokens, so no CAST budget is "equal": the strict reading (even
    the smallest budget must win) is answered, and the text names the budget from which CAST wins.
    """
    c = cells(rows)
    items = []
    for model in sizes(rows):
        cast = c[(c["model"] == model) & (c["method"] == "cast")].sort_values("tokens")
        one = c[(c["model"] == model) & c["method"].isin(ONESHOT)]
        if cast.empty or one.empty:
            continue
        best = one.loc[one["ppl"].idxmin()]
        wins = (cast["ppl"] < best["ppl"]).to_numpy()
        # the smallest budget from which every larger budget wins too
        tail = np.flatnonzero(~wins)
        start = None if wins[-1] == 0 else int(cast["tokens"].iloc[tail[-1] + 1 if len(tail) else 0])
        when = ("at every budget" if wins.all()
                else "not even at the largest budget" if start is None
                else f"from {start:,} tokens on")
        items.append((bool(wins.all()),
                      f"{model}: best one-shot {best['method']} {f_ppl(best['ppl'])}; cast "
                      f"{f_ppl(cast['ppl'].iloc[0])} at {int(cast['tokens'].iloc[0]):,} tokens, "
                      f"{f_ppl(cast['ppl'].iloc[-1])} at {int(cast['tokens'].iloc[-1]):,}; "
                      f"cast wins {when}"))
    return _answer(items, "no size with both cast and one-shot runs")


def versus_trained(rows: pd.DataFrame) -> str:
    """Does CAST beat sr-ste and ast at their (equal) budget, at every size (mean over seeds)?"""
    c = cells(rows)
    items = []
    for model in sizes(rows):
        for method in TRAINED_BASELINES:
            for r in c[(c["model"] == model) & (c["method"] == method)].itertuples():
                cast = c[(c["model"] == model) & (c["method"] == "cast") & (c["tokens"] == r.tokens)]
                if len(cast):
                    items.append((bool(cast["ppl"].iloc[0] < r.ppl),
                                  f"{model} {r.tokens:,}: cast {f_ppl(cast['ppl'].iloc[0])} vs "
                                  f"{method} {f_ppl(r.ppl)}"))
    return _answer(items, "no sr-ste / ast run with a cast run at the same budget")


def teacher_gap(rows: pd.DataFrame) -> str:
    """Does CAST's PPL gap to the dense teacher shrink at every step up in budget, at every size?"""
    c = cells(rows)
    teach = teachers(rows).set_index("model")["ppl"]
    items = []
    for model in sizes(rows):
        cast = c[(c["model"] == model) & (c["method"] == "cast")].sort_values("tokens")
        if len(cast) >= 2:
            gaps = (cast["ppl"] / teach[model] - 1).to_numpy()
            items.append((bool(np.all(np.diff(gaps) < 0)), f"{model}: " + " -> ".join(
                f_pct(g, signed=True, digits=1) for g in gaps)))
    return _answer(items, "no size with cast runs at two budgets")


def _law_lines(study: dict) -> list[tuple[str, str]]:
    return [("held-out PPL error predicting D from budgets <= D/4", quarter_error(study)),
            (f"share of held-out runs inside the {study.get('level', 0.9):.0%} interval",
             coverage(study))]


def law_side_by_side(study: dict, other: dict, other_name: str) -> pd.DataFrame:
    """The law lines of ``study`` (the main study) next to those of ``other``."""
    return pd.DataFrame([{"question": q, "main study": m, other_name: o}
                         for (q, m), (_, o) in zip(_law_lines(study), _law_lines(other),
                                                   strict=True)])


def summary_table(rows: pd.DataFrame, study: dict) -> pd.DataFrame:
    """The study's summary: each question with what was measured."""
    lines = [
        ("sweep wall time", sweep_time(study.get("sweep_timing"))),
        *_law_lines(study),
        ("does CAST beat one-shot magnitude / Wanda / SparseGPT at every budget and size?",
         versus_oneshot(rows)),
        ("does CAST beat sr-ste and ast at their budget (mean over seeds)?", versus_trained(rows)),
        ("does CAST's PPL gap to the dense teacher shrink as D grows (gap per budget)?",
         teacher_gap(rows)),
    ]
    return pd.DataFrame([{"question": q, "measured": m} for q, m in lines])
