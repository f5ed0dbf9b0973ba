"""Report tables from result rows: PPL per size x method x budget, teachers, the held-out law.

Every builder returns a DataFrame of formatted strings (``markdown`` turns one into a GitHub
table), so what the report shows is exactly what a test can rebuild. Numbers that other code
needs (``cells``, ``teachers``) come as numeric frames first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from castlab.sweep.status import TEACHER_CONVERGENCE_TOLERANCE

METHOD_ORDER = ("dense-kd", "cast", "sr-ste", "ast", "magnitude", "wanda", "sparsegpt")
ONESHOT = ("magnitude", "wanda", "sparsegpt")  # pruners applied to the teacher: 0 tokens
TEACHER = "dense teacher"
DASH = "—"


def f_ppl(x) -> str:
    """A perplexity with two decimals, or a dash."""
    return DASH if x is None or not np.isfinite(x) else f"{x:.2f}"


def f_pct(x, signed: bool = False, digits: int = 2) -> str:
    """A fraction as a percentage, or a dash."""
    if x is None or not np.isfinite(x):
        return DASH
    return f"{100 * x:+.{digits}f}%" if signed else f"{100 * x:.{digits}f}%"


def f_int(x) -> str:
    """An integer with thousands separators, or a dash."""
    return DASH if x is None or not np.isfinite(x) else f"{int(round(x)):,}"


def f_num(x, fmt: str = ".4g") -> str:
    """A float in ``fmt``, or a dash."""
    return DASH if x is None or not np.isfinite(x) else format(float(x), fmt)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table of a frame of strings (no tabulate dependency, stable padding)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "|" + "|".join(" --- " for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The runs that finished."""
    return rows[rows["status"] == "ok"]


def sizes(rows: pd.DataFrame) -> list[str]:
    """Model names ordered by non-embedding parameters."""
    order = ok_rows(rows).groupby("model")["params_non_embedding"].first().sort_values(
        kind="stable")
    return [str(m) for m in order.index]


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the report's method order, unknown methods last by name."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def methods(rows: pd.DataFrame) -> list[str]:
    """Methods present, in report order."""
    return sorted(set(ok_rows(rows)["method"].astype(str)), key=method_rank)


def teachers(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model: the distinct dense teachers behind its runs (mean and sd of their PPL).

    A sweep with several teacher seeds per size starts its runs from different teachers; each
    distinct ``teacher_ppl`` is one teacher, so the sd is the teacher-to-teacher spread.
    """
    ok = ok_rows(rows)
    out = []
    for model in sizes(rows):
        vals = np.unique(ok.loc[ok["model"] == model, "teacher_ppl"].dropna().to_numpy(float))
        out.append({"model": model, "teachers": len(vals),
                    "ppl": float(vals.mean()) if len(vals) else float("nan"),
                    "ppl_sd": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")})
    return pd.DataFrame(out, columns=["model", "teachers", "ppl", "ppl_sd"])


def _joined(g: pd.DataFrame, col: str, fmt=str) -> str:
    """The distinct values of a setting in a cell, '/'-joined ('' where rows lack it)."""
    if col not in g:
        return ""
    return "/".join(fmt(v) for v in sorted(set(g[col].dropna())))


CELL_COLUMNS = ["model", "method", "tokens", "n", "n_seeds", "seeds", "ppl", "ppl_sd", "seq_len",
                "eval_tokens", "dtype"]


def cells(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method, tokens): seeds, PPL mean and sd over seeds (numbers), and the
    settings the cell ran with (text: seq_len, eval tokens, dtype)."""
    out = []
    for (model, method, tokens), g in ok_rows(rows).groupby(["model", "method", "tokens"]):
        ppl = g["ppl"].to_numpy(float)
        out.append({"model": str(model), "method": str(method), "tokens": int(tokens),
                    "n": int(g["params_non_embedding"].iloc[0]), "n_seeds": len(g),
                    "seeds": ",".join(str(int(v)) for v in sorted(g["seed"])) if "seed" in g
                    else "",
                    "ppl": float(ppl.mean()),
                    "ppl_sd": float(ppl.std(ddof=1)) if len(ppl) > 1 else float("nan"),
                    "seq_len": _joined(g, "seq_len", lambda v: str(int(v))),
                    "eval_tokens": _joined(g, "eval_tokens", lambda v: f"{int(v):,}"),
                    "dtype": _joined(g, "dtype")})
    df = pd.DataFrame(out, columns=CELL_COLUMNS)
    if df.empty:
        return df
    order = {m: i for i, m in enumerate(sizes(rows))}
    key = df["model"].map(order) * 1000 + df["method"].map(lambda m: method_rank(m)[0])
    return df.assign(_k=key).sort_values(["_k", "method", "tokens"]).drop(columns="_k")


def _mean_sd(ppl: float, sd: float, n: int) -> str:
    return f_ppl(ppl) + (f" ± {sd:.2f}" if n > 1 and np.isfinite(sd) else "")


def headline_table(rows: pd.DataFrame) -> pd.DataFrame:
    """PPL per size x method (rows) x training tokens (columns); ± is the sd over seeds.

    The ``0 tokens`` column holds the dense teacher (± over teacher seeds where a size has
    several) and the one-shot pruners applied to it.
    """
    c = cells(rows)
    budgets = sorted(b for b in set(c["tokens"]) if b > 0)
    cols = ["size", "method", "0 tokens (from teacher)"] + [f"{b:,}" for b in budgets]
    teach = teachers(rows).set_index("model")
    out = []
    for model in sizes(rows):
        t = teach.loc[model]
        out.append([model, TEACHER, _mean_sd(t["ppl"], t["ppl_sd"], int(t["teachers"]))]
                   + [""] * len(budgets))
        for method in methods(rows):
            sub = c[(c["model"] == model) & (c["method"] == method)]
            if sub.empty:
                continue
            vals = {int(r.tokens): _mean_sd(r.ppl, r.ppl_sd, r.n_seeds) for r in sub.itertuples()}
            out.append([model, method, vals.get(0, "")] + [vals.get(b, "") for b in budgets])
    return pd.DataFrame(out, columns=cols)


def convergence_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Teacher convergence per size: how much dense-KD at its largest budget improves the teacher.

    More than the tolerance (2%) means the teacher was not trained to convergence and the sparse
    curves would partly measure leftover pretraining.
    """
    ok = ok_rows(rows)
    kd = ok[ok["method"] == "dense-kd"]
    teach = teachers(rows).set_index("model")
    out = []
    for model in sizes(rows):
        g = kd[kd["model"] == model]
        t = teach.loc[model]
        row = {"size": model, "teachers": str(int(t["teachers"])),
               "teacher PPL": _mean_sd(t["ppl"], t["ppl_sd"], int(t["teachers"]))}
        if g.empty:
            out.append({**row, "dense-kd tokens": DASH, "dense-kd PPL": DASH,
                        "improvement": DASH, "check": "no dense-kd runs"})
            continue
        top = g[g["tokens"] == g["tokens"].max()]
        gain = float(((top["teacher_ppl"] - top["ppl"]) / top["teacher_ppl"]).mean())
        ok_gain = gain <= TEACHER_CONVERGENCE_TOLERANCE
        out.append({**row, "dense-kd tokens": f_int(top["tokens"].iloc[0]),
                    "dense-kd PPL": _mean_sd(float(top["ppl"].mean()),
                                             float(top["ppl"].std(ddof=1)) if len(top) > 1
                                             else float("nan"), len(top)),
                    "improvement": f_pct(gain, signed=True),
                    "check": f"pass (<= {TEACHER_CONVERGENCE_TOLERANCE:.0%})" if ok_gain
                    else f"FAIL: improves by more than {TEACHER_CONVERGENCE_TOLERANCE:.0%}"})
    return pd.DataFrame(out)


def heldout_table(summary: pd.DataFrame, chosen: str | None, level: float,
                  excluded: dict[str, str] | None = None) -> pd.DataFrame:
    """Held-out law errors per form and split kind (rows of ``study.summarize_heldout``); the
    forms ``excluded`` before validation (form -> why) follow as rows of their own."""
    table = pd.DataFrame({
        "form": [f"**{f}** (chosen)" if f == chosen else f for f in summary["form"]],
        "held out": summary["split"], "points": summary["points"].map(str),
        "mean ARE (PPL)": summary["are"].map(f_pct), "max ARE": summary["are_max"].map(f_pct),
        "bias": summary["bias"].map(lambda v: f_pct(v, signed=True)),
        f"{level:.0%} coverage": summary["coverage"].map(lambda v: f_pct(v, digits=0)),
        "note": summary["note"]})
    extra = pd.DataFrame([{**{c: DASH for c in table.columns}, "form": form, "held out": "all",
                           "points": "0", "note": why} for form, why in (excluded or {}).items()],
                         columns=table.columns)
    return pd.concat([table, extra], ignore_index=True) if len(extra) else table


def points_table(points: pd.DataFrame) -> pd.DataFrame:
    """The chosen form's held-out predictions of the largest budget, one row per run."""
    return pd.DataFrame({
        "held out": points["kind"], "size": points["size"], "tokens": points["tokens"].map(f_int),
        "actual PPL": points["ppl"].map(f_ppl), "predicted PPL": points["pred_ppl"].map(f_ppl),
        "interval": [f"[{f_ppl(lo)}, {f_ppl(hi)}]"
                     for lo, hi in zip(points["lo_ppl"], points["hi_ppl"], strict=True)],
        "error": points["rel_err"].map(lambda v: f_pct(v, signed=True)),
        "inside": points["covered"].map(lambda v: DASH if not np.isfinite(v)
                                        else ("yes" if v else "no"))})


def params_table(params: dict[str, dict], level: float) -> pd.DataFrame:
    """The chosen form's parameters with bootstrap intervals."""
    def num(v) -> str:
        return DASH if v is None or not np.isfinite(v) else f"{v:.4g}"

    return pd.DataFrame({"parameter": list(params),
                         "value": [num(v["value"]) for v in params.values()],
                         f"{level:.0%} interval": [f"[{num(v['lo'])}, {num(v['hi'])}]"
                                                   for v in params.values()]})
