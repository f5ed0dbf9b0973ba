"""Pure table builders for REPORT.md: result rows (+ the stored law study) in, text frames out.

Every function returns a DataFrame of already formatted strings, so the markdown written to the
report and the markdown rebuilt by tests/test_report.py are equal character for character.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.lawstudy import SCHEMES, predictions_frame
from castlab.report.tables import (  # noqa: F401 - shared with `castlab report`; re-exported
    DASH,
    METHOD_ORDER,
    TEACHER,
    f_int,
    f_pct,
    f_ppl,
    markdown,
    method_rank,
    methods,
    ok_rows,
    sizes,
)
from castlab.sweep.commands import TEACHER_CONVERGENCE_TOLERANCE

ONESHOT = ("magnitude", "wanda", "sparsegpt")
TRAINED_BASELINES = ("sr-ste", "ast")
SCHEME_LABEL = {"D/2": "D/2 -> D", "D/4": "D/4 -> D", "size": "leave one size out"}
SWEEP_LIMIT_SECONDS = 20 * 60
ARE_TARGET = 0.015
COVERAGE_TARGET = 0.80


# ---- formatting -------------------------------------------------------------------------------

def f_num(x, fmt: str = ".4g") -> str:
    """A float in ``fmt``, or a dash."""
    return DASH if x is None or not np.isfinite(x) else format(float(x), fmt)


# ---- row helpers --------------------------------------------------------------------------------

def teacher_ppl(rows: pd.DataFrame) -> dict[str, float]:
    """Per model: the dense teacher's PPL (every run of a model starts from the same teacher)."""
    ok = ok_rows(rows).sort_values("run_id")
    out = {}
    for model in sizes(rows):
        vals = ok.loc[(ok["model"] == model), "teacher_ppl"].dropna()
        out[model] = float(vals.iloc[0]) if len(vals) else float("nan")
    return out


def cells(rows: pd.DataFrame) -> pd.DataFrame:
    """One numeric row per (model, method, tokens): seeds, PPL mean and sd over seeds, settings."""
    ok = ok_rows(rows)
    out = []
    for (model, method, tokens), g in ok.groupby(["model", "method", "tokens"]):
        ppl = g["ppl"].to_numpy(float)
        out.append({"model": model, "method": method, "tokens": int(tokens),
                    "n": int(g["params_non_embedding"].iloc[0]),
                    "seeds": ",".join(str(int(s)) for s in sorted(g["seed"])),
                    "n_seeds": len(g), "ppl": float(ppl.mean()),
                    "ppl_sd": float(ppl.std(ddof=1)) if len(ppl) > 1 else float("nan"),
                    "seq_len": "/".join(str(int(v)) for v in sorted(set(g["seq_len"]))),
                    "eval_tokens": "/".join(f"{int(v):,}" for v in sorted(set(g["eval_tokens"]))),
                    "dtype": "/".join(sorted(set(g["dtype"].astype(str))))})
    df = pd.DataFrame(out)
    if df.empty:
        return df
    order = {m: i for i, m in enumerate(sizes(rows))}
    key = df["model"].map(order) * 1000 + df["method"].map(lambda m: method_rank(m)[0])
    return df.assign(_k=key).sort_values(["_k", "method", "tokens"]).drop(columns="_k")


# ---- tables -------------------------------------------------------------------------------------

def headline_table(rows: pd.DataFrame) -> pd.DataFrame:
    """PPL per size x method (rows) x training tokens (columns); ± is the sd over seeds."""
    c = cells(rows)
    budgets = sorted(b for b in set(c["tokens"]) if b > 0)
    cols = ["size", "method", "0 tokens (from teacher)"] + [f"{b:,}" for b in budgets]
    teach = teacher_ppl(rows)
    out = []
    for model in sizes(rows):
        out.append([model, TEACHER, f_ppl(teach[model])] + [""] * len(budgets))
        for method in methods(rows):
            sub = c[(c["model"] == model) & (c["method"] == method)]
            if sub.empty:
                continue
            vals = {int(r.tokens): _ppl_cell(r) for r in sub.itertuples()}
            out.append([model, method, vals.get(0, "")] + [vals.get(b, "") for b in budgets])
    return pd.DataFrame(out, columns=cols)


def _ppl_cell(r) -> str:
    return f_ppl(r.ppl) + (f" ± {r.ppl_sd:.2f}" if r.n_seeds > 1 else "")


def ppl_table(rows: pd.DataFrame, teachers: dict[str, dict] | None = None) -> pd.DataFrame:
    """Every (size, method, tokens) cell with its settings: the long form of the headline table."""
    c = cells(rows)
    teach = teacher_ppl(rows)
    teachers = teachers or {}
    ok = ok_rows(rows)
    out = []
    for model in sizes(rows):
        mrows = ok[ok["model"] == model]
        info = teachers.get(model, {})
        out.append({"size": model, "N (non-emb.)": f_int(mrows["params_non_embedding"].iloc[0]),
                    "method": TEACHER,
                    "tokens": f"{info['tokens']:,} (pretraining)" if info.get("tokens") else
                    "pretraining (unknown)",
                    "tokens/N": f_num(info["tokens"] / mrows["params_non_embedding"].iloc[0], ".3g")
                    if info.get("tokens") else DASH,
                    "seq_len": str(info.get("seq_len", DASH)), "seeds": str(info.get("seed", DASH)),
                    "PPL": f_ppl(teach[model]), "PPL sd (seeds)": DASH,
                    "eval tokens": "/".join(f"{int(v):,}" for v in sorted(set(mrows["eval_tokens"]))),
                    "dtype": "/".join(sorted(set(mrows["dtype"].astype(str))))})
        for r in c[c["model"] == model].itertuples():
            out.append({"size": model, "N (non-emb.)": f_int(r.n), "method": r.method,
                        "tokens": f_int(r.tokens), "tokens/N": f_num(r.tokens / r.n, ".3g"),
                        "seq_len": r.seq_len, "seeds": r.seeds, "PPL": f_ppl(r.ppl),
                        "PPL sd (seeds)": f_ppl(r.ppl_sd), "eval tokens": r.eval_tokens,
                        "dtype": r.dtype})
    return pd.DataFrame(out)


def convergence(rows: pd.DataFrame) -> pd.DataFrame:
    """Numeric teacher check per size: dense-kd at its largest budget vs the teacher's PPL.

    The improvement is the mean over seeds of (teacher - dense-kd) / teacher, as `castlab status`.
    """
    ok = ok_rows(rows)
    kd = ok[ok["method"] == "dense-kd"]
    out = []
    for model in sizes(rows):
        g = kd[kd["model"] == model]
        if g.empty:
            continue
        top = g[g["tokens"] == g["tokens"].max()]
        gain = float(((top["teacher_ppl"] - top["ppl"]) / top["teacher_ppl"]).mean())
        out.append({"model": model, "tokens": int(top["tokens"].iloc[0]), "seeds": len(top),
                    "teacher_ppl": float(top["teacher_ppl"].iloc[0]),
                    "kd_ppl": float(top["ppl"].mean()), "gain": gain,
                    "ok": gain <= TEACHER_CONVERGENCE_TOLERANCE})
    return pd.DataFrame(out, columns=["model", "tokens", "seeds", "teacher_ppl", "kd_ppl", "gain",
                                      "ok"])


def convergence_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The teacher-convergence check as text: pass if dense-kd improves the teacher by <= 2%."""
    c = convergence(rows)
    return pd.DataFrame({
        "size": c["model"], "dense-kd tokens": c["tokens"].map(f_int),
        "seeds": c["seeds"].astype(str), "teacher PPL": c["teacher_ppl"].map(f_ppl),
        "dense-kd PPL (mean)": c["kd_ppl"].map(f_ppl),
        "improvement": c["gain"].map(lambda g: f_pct(g, signed=True)),
        "limit": f_pct(TEACHER_CONVERGENCE_TOLERANCE, digits=0),
        "check": c["ok"].map(lambda v: "pass" if v else "FAIL: teacher not converged")})


def runs_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Every finished run: lambda, prune shock, masked/kept ratio, wall time, tokens/s; plus a sum."""
    ok = ok_rows(rows).copy()
    order = {m: i for i, m in enumerate(sizes(rows))}
    ok["_k"] = ok["model"].map(order) * 1000 + ok["method"].map(lambda m: method_rank(m)[0])
    ok = ok.sort_values(["_k", "tokens", "seed", "run_id"])
    sparse = ok["sparsity"] > 0
    out = pd.DataFrame({
        "run_id": ok["run_id"], "size": ok["model"], "method": ok["method"],
        "tokens": ok["tokens"].map(f_int), "seed": ok["seed"].map(f_int),
        "lambda": ok["lambda_"].map(lambda v: f_num(v, ".3g")),
        "prune shock (nats)": [f_num(v, "+.4f") if s else DASH
                               for v, s in zip(ok["prune_shock"], sparse, strict=True)],
        "masked/kept": [f_num(v, ".4f") if s else DASH
                        for v, s in zip(ok["masked_kept_ratio"], sparse, strict=True)],
        "exact N:M": [("yes" if v else "NO") if s else DASH
                      for v, s in zip(ok["exact_nm"], sparse, strict=True)],
        "wall s": ok["wall_seconds"].map(lambda v: f_num(v, ".1f")),
        "train s": ok["train_seconds"].map(lambda v: f_num(v, ".1f")),
        "tokens/s": ok["tokens_per_second"].map(lambda v: f_int(v))})
    total = ["all runs", f"{len(ok)} runs", "", "", "", "", "", "", "",
             f_num(ok["wall_seconds"].sum(), ".1f"), f_num(ok["train_seconds"].sum(), ".1f"), ""]
    return pd.concat([out, pd.DataFrame([total], columns=out.columns)], ignore_index=True)


def failed_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Runs that failed, with their reason (empty frame when none did)."""
    bad = rows[rows["status"] != "ok"].sort_values("run_id")
    return pd.DataFrame({"run_id": bad["run_id"], "size": bad["model"].astype(str),
                         "method": bad["method"].astype(str), "tokens": bad["tokens"].map(f_int),
                         "reason": bad["reason"].fillna("").astype(str)})


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
