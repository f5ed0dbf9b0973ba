"""The recipe study's table (analysis/RECIPE_STUDY.md) from its rows.

Each candidate is one sweep file (sweeps/recipe/recipe_<name>.yaml) whose rows share
results/recipe_study; a row's ``sweep`` column names its candidate (a twin shared by two
candidates, same run id, is counted for both: the rows say which settings it ran). Per candidate,
size and method: mean ± sd PPL over seeds and the change against the teacher's PPL.

    python -m analysis.recipe_study [results/reference/recipe_study]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml

from castlab import store

CANDIDATES = ("today", "lr03", "lr03_md3", "lr03_md12", "lr03_md24", "lr03_md48", "lr01_md10", "wsd")
SWEEPS = Path(__file__).resolve().parents[1] / "sweeps" / "recipe"


def candidate_rows(results: Path) -> pd.DataFrame:
    """Every finished row, once per candidate whose sweep file plans its run id."""
    from castlab.sweep.plan import build_plan
    from castlab.sweep.spec import load_sweep

    rows = store.load(results)
    rows = rows[rows["status"] == "ok"]
    frames = []
    for name in CANDIDATES:
        path = SWEEPS / f"recipe_{name}.yaml"
        if not path.is_file():
            continue
        spec = load_sweep(path, results=str(results))
        ids = {r.run_id for r in build_plan(spec) if r.kind == "run"}
        frames.append(rows[rows["run_id"].isin(ids)].assign(candidate=name))
    return pd.concat(frames, ignore_index=True) if frames else rows.iloc[:0]


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per candidate x model x method: seeds, mean ± sd PPL, mean change vs the teacher."""
    out = []
    for (cand, model, method), g in rows.groupby(["candidate", "model", "method"], sort=False):
        change = (g["ppl"] / g["teacher_ppl"] - 1) * 100
        out.append({"candidate": cand, "model": model, "method": method, "seeds": len(g),
                    "teacher PPL": g["teacher_ppl"].mean(),
                    "PPL": f"{g['ppl'].mean():.2f} ± {g['ppl'].std(ddof=1):.2f}",
                    "vs teacher": f"{change.mean():+.2f}% ± {change.std(ddof=1):.2f}",
                    "decay warning": int(g.get("decay_budget_warning", pd.Series(dtype=str))
                                         .fillna("").astype(str).str.len().gt(0).sum())})
    return pd.DataFrame(out)


def wide(rows: pd.DataFrame) -> str:
    """Markdown: one line per candidate and size, twin and CAST side by side."""
    lines = ["| candidate | settings | size | teacher | dense-kd twin | vs teacher | CAST | "
             "vs teacher | CAST decay warnings |", "|---|---|---|---|---|---|---|---|---|"]
    for cand in [c for c in CANDIDATES if c in set(rows["candidate"])]:
        spec = yaml.safe_load((SWEEPS / f"recipe_{cand}.yaml").read_text())
        cast = next(m for m in spec["methods"] if m["name"] == "cast")["settings"]
        settings = ", ".join(f"{k}={v}" for k, v in cast.items()) or "defaults"
        for model in sorted(set(rows["model"]), key=lambda m: float(m.split("-")[1][:-1])):
            cells = []
            g_all = rows[(rows["candidate"] == cand) & (rows["model"] == model)]
            if g_all.empty:
                continue
            for method in ("dense-kd", "cast"):
                g = g_all[g_all["method"] == method]
                if g.empty:
                    cells += ["-", "-"]
                    continue
                change = (g["ppl"] / g["teacher_ppl"] - 1) * 100
                sd = g["ppl"].std(ddof=1) if len(g) > 1 else float("nan")
                cells += [f"{g['ppl'].mean():.2f} ± {sd:.2f} (n={len(g)})",
                          f"{change.mean():+.2f}%"]
            warn = g_all[g_all["method"] == "cast"].get("decay_budget_warning")
            warned = 0 if warn is None else int(warn.fillna("").astype(str).str.len().gt(0).sum())
            lines.append(f"| {cand} | {settings} | {model} | {g_all['teacher_ppl'].mean():.2f} | "
                         + " | ".join(cells) + f" | {warned} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the study's table as markdown."""
    argv = sys.argv[1:] if argv is None else argv
    results = Path(argv[0] if argv else "results/reference/recipe_study")
    print(wide(candidate_rows(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
