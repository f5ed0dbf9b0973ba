"""REPORT.md as a pure function of the result rows and the stored law study (JSON).

Every data-bearing block sits between ``<!-- begin:NAME -->`` / ``<!-- end:NAME -->`` markers so
tests/test_report.py can rebuild each block and compare it with the shipped report exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from analysis import noise as N
from analysis import tables as T
from analysis.findings import law_side_by_side, summary_table
from castlab.law.forms import FORMS
from castlab.report import paired as P
from castlab.report import runs as R
from castlab.report.figures import FIGURES
from castlab.report.render import MASK_LIFE_TEXT, PAIRED_TEXT
from castlab.report.tables import convergence_table, headline_table, markdown
from castlab.sweep.status import TEACHER_CONVERGENCE_TOLERANCE

MARKER = re.compile(r"<!-- begin:(?P<name>[\w-]+) -->\n(?P<body>.*?)\n<!-- end:(?P=name) -->",
                    re.S)


def blocks(rows: pd.DataFrame, study: dict, previous: tuple[pd.DataFrame, dict] | None = None,
           companion: tuple[pd.DataFrame, dict] | None = None) -> dict[str, str]:
    """Every marked block of the report, name -> markdown text.

    ``previous`` (rows, law study) of the earlier reference study adds its summary, so the report
    shows both studies' answers side by side. ``companion`` (rows, law study) of the long-budget
    companion sweep adds its PPL, held-out and shock tables.
    """
    out = {"summary": markdown(summary_table(rows, study)),
           "headline": markdown(headline_table(rows)),
           "cells": markdown(R.ppl_table(rows, study.get("teachers"))),
           "convergence": markdown(convergence_table(rows)),
           "law-chosen": law_sentence(study),
           "law-params": markdown(T.params_table(study)),
           "heldout-total": markdown(T.heldout_table(study, "total")),
           "heldout-gap": markdown(T.heldout_table(study, "gap")),
           "heldout-points": markdown(T.chosen_points_table(study)),
           "seed-noise": markdown(R.seed_noise_table(rows)),
           "noise-vs-error": markdown(N.noise_table(rows, study)),
           "noise-sentence": N.noise_sentence(rows, study),
           "runs": markdown(R.runs_table(rows)),
           "shock-by-budget": markdown(T.shock_by_budget_table(rows)),
           "best-sparse": markdown(P.best_sparse_table(rows)),
           "paired": markdown(P.paired_table(rows)),
           "mask-life": markdown(P.mask_life_table(rows))}
    if previous is not None:
        out["previous-summary"] = markdown(summary_table(*previous))
    if companion is not None:
        c_rows, c_study = companion
        out |= {"companion-summary": markdown(law_side_by_side(
                    study, c_study, "long-budget companion")),
                "companion-headline": markdown(headline_table(c_rows)),
                "companion-law-chosen": law_sentence(c_study),
                "companion-heldout-total": markdown(T.heldout_table(c_study, "total")),
                "companion-points": markdown(T.chosen_points_table(c_study)),
                "companion-noise": markdown(N.noise_table(c_rows, c_study)),
                "companion-shock": markdown(T.shock_by_budget_table(c_rows))}
    failed = R.failed_table(rows)
    out["failed"] = markdown(failed) if len(failed) else "No run failed."
    return out


def law_sentence(study: dict) -> str:
    """Which form was chosen, how, and on how much data (or why there is no law)."""
    if study.get("error"):
        return f"No law was fitted: {study['error']}."
    chosen = study.get("chosen")
    if chosen is None:
        return "No law form could be validated on these runs (too few budgets or sizes)."
    b = study.get("bootstrap", {})
    return (f"Chosen form: **{chosen}** ({FORMS[chosen].description}), by {study['chosen_by']}. "
            f"Fitted to {study['cast_runs']} cast runs; intervals from {b.get('draws')} bootstrap "
            f"draws ({b.get('failed')} unconverged), run noise sd(ln L) = "
            f"{b.get('sigma', float('nan')):.4g} from {b.get('noise_source')}; held-out intervals "
            f"from {study['heldout_draws']} draws per split.")


def _block(name: str, body: str) -> str:
    return f"<!-- begin:{name} -->\n{body}\n<!-- end:{name} -->"


def _figure(key: str, alt: str, figures: str, drawn: bool = True) -> str:
    """A figure drawn by castlab.report.figures into ``figures`` (relative to the report)."""
    return f"![{alt}]({figures}/{FIGURES[key]})" if drawn else f"({alt}: no chosen law form)"


def law_figures_drawn(study: dict) -> bool:
    """Whether castlab.report.figures.draw_all draws the held-out figures of this study: a chosen
    form with scored held-out predictions."""
    return study.get("chosen") is not None and any(
        r.get("form") == study["chosen"] and r.get("target") == "total"
        and r.get("rel_err") is not None and r["rel_err"] == r["rel_err"]
        for r in study.get("heldout", []))


# What changed since each earlier study (keyed by its folder name), shown with its summary
PREVIOUS_NOTES = {
    "opt_family_v1": "lambda auto factor 3 (now 300), budgets 16k-262k tokens spanning 16x (now "
                     "16k-131k, 8x, to keep the sweep near 20 minutes), teachers on 4M tokens (now "
                     "3M), repeated seeds only at the largest budget (now at the smallest too), "
                     "sr-ste / ast at 65k tokens (now at the largest budget), one exec'd process "
                     "per run (now forked from a warm server).",
    "opt_family_v2": "one teacher per size (now two teacher seeds, run seed s from teacher s mod "
                     "2), budgets 16k-131k spanning 8x (now 16k-262k, 16x), and the continued-"
                     "training recipe of CAST and its twin: peak lr 0.1 x the teacher's with a 5% "
                     "re-warm-up and spec-literal AdamS moments (now 0.03 x, no re-warm-up, "
                     "bias-corrected moments, and CAST's masked decay decoupled from the kept "
                     "weights' step, masked_decay_ratio 48: analysis/RECIPE_STUDY.md); runs one "
                     "at a time with 2 threads (now two at once with one thread each).",
}


def render(rows: pd.DataFrame, study: dict, previous: tuple[pd.DataFrame, dict] | None = None,
           previous_source: str = "", companion: tuple[pd.DataFrame, dict] | None = None,
           companion_source: str = "", figures: str = "figures") -> str:
    """The whole of REPORT.md (``previous``, ``companion``: see ``blocks``; ``*_source`` their
    folders; ``figures`` the figure folder relative to the report)."""
    b = {k: _block(k, v) for k, v in blocks(rows, study, previous, companion).items()}
    src = study.get("results", "results/reference/opt_family")
    law_json = study.get("law_json", f"{src}/report_law.json")
    level = f"{study.get('level', 0.9):.0%}"
    parts = [
        "<!-- generated by analysis/make_report.py: do not edit by hand -->",
        "# Reference study: the opt_family sweep on this machine",
        "",
        f"Generated by `analysis/make_report.py` from the result rows under `{src}` and the law "
        f"study stored in `{law_json}`. Regenerate with `python -m analysis.make_report` "
        "(refits the law study) or `python -m analysis.make_report --reuse-law` "
        "(from the stored law study; the figures are redrawn either way); the tables and figures "
        "of the rows are `castlab report`'s (castlab/report/). `tests/test_report.py` fails when "
        "a block "
        "below no longer matches the data. PPL is exp of the validation cross-entropy (nats per "
        "token) on the validation split, 2:4 sparsity for every sparse method.",
        "",
        "## Summary", "", b["summary"], "",
        "## PPL per size, method and training tokens", "",
        "Budget columns are tokens of (sparsity-aware) training after the dense teacher; the "
        "`0 tokens` column holds the teacher itself and the one-shot pruners applied to it. "
        "`±` is the sd over seeds where a cell was repeated.", "", b["headline"], "",
        _figure("ppl_vs_tokens", "validation PPL vs training tokens per size and method, the law "
                "fitted to CAST with its band, the dense teacher and dense-kd twin as references",
                figures),
        "", "Every cell with its settings:", "", b["cells"], "",
        "## CAST against each sparse baseline, paired by seed", "",
        "Every sparse method at each size's largest budget (one-shot pruners at 0 tokens), mean "
        "± sd PPL over seeds, and the method with the lowest mean:", "", b["best-sparse"], "",
        PAIRED_TEXT, "", b["paired"], "",
        "## The life of the masks", "", MASK_LIFE_TEXT, "", b["mask-life"], "",
        "## Teacher convergence", "",
        f"Dense-KD at the largest budget may improve its teacher's PPL by at most "
        f"{TEACHER_CONVERGENCE_TOLERANCE:.0%}; more means the sparse curve would partly measure "
        "leftover pretraining.", "", b["convergence"], "",
        "## Scaling law fitted to the CAST runs", "", b["law-chosen"], "", b["law-params"], "",
        "### Held-out error: total sparse PPL", "",
        "Each form is refitted on the training runs of a split only. `D/2 -> D` and `D/4 -> D` "
        "fit budgets up to half / a quarter of the largest budget D and predict every run at D; "
        "`leave one size out` fits the other sizes and predicts every run of the left-out size "
        "(forms fitted per size cannot). ARE is |predicted/actual - 1| of PPL, bias its signed "
        f"mean, coverage the share of held-out runs inside the {level} prediction interval.", "",
        b["heldout-total"], "",
        "### Held-out error: gap to the dense-kd twin", "",
        "The gap is the loss ratio L_cast / L_dense-kd at the same size, budget and seed. kd_gap "
        "predicts it directly; every other form predicts it as the form fitted to the cast runs "
        "divided by the same form fitted to the dense-kd runs of the same split. The last error "
        "column is relative to the excess (ratio - 1), the part sparsity costs.", "",
        b["heldout-gap"], "",
        "### The chosen form's held-out predictions", "", b["heldout-points"], "",
        _figure("pred_vs_actual", "held-out predicted vs actual PPL", figures,
                law_figures_drawn(study)), "",
        _figure("residuals", "held-out error vs extrapolation distance", figures,
                law_figures_drawn(study)), "",
        "## Seed noise next to the prediction errors", "",
        "PPL sd over seeds (ddof 1) at the repeated cells:", "", b["seed-noise"], "",
        "The chosen form's mean held-out PPL ARE per size, beside the noise floor (the seed sd "
        "at the largest repeated budget, where the held-out runs are):", "",
        b["noise-vs-error"], "", b["noise-sentence"], "",
        "## Runs: prune shock, masked/kept ratio, wall time", "",
        "Prune shock is the eval loss after the final hard prune minus the loss just before it; "
        "masked/kept is mean |masked| / mean |kept| weight at the end. Wall seconds cover one "
        "run each; teacher pretraining (cached, shared by every sweep) is not included.", "",
        b["runs"], "", b["failed"], "",
        "## The prune shock per budget", "",
        "CAST per budget, over sizes and seeds. A run too short for AdamS to pull the masked "
        "weights to zero pays a shock at its final hard prune; the largest budget D has none. A "
        "law fitted on budgets <= D/4 learns from such runs and then predicts D: where it follows "
        "the steep descent of the shock regime it predicts too low a PPL (a negative bias in the "
        "D/4 rows above). The table shows which budgets of this study still pay the shock.",
        "", b["shock-by-budget"], "",
    ]
    if companion is not None:
        parts += [
            "## Long-budget companion: the same law once the decay completes", "",
            f"`sweeps/opt_family_long.yaml`, results in `{companion_source}`: cast and dense-kd "
            "on opt-100k (the same cached teacher), budgets 8x longer than the main study "
            "(512 to 4,096 optimizer steps of 4 x 64 tokens), so even the smallest budget ends "
            "with the masked weights near zero. Everything else is as in the main study. It tests "
            "the shock explanation above: if a D/4 miss comes from fitting shock-regime runs, "
            "the same forms should predict D from D/4 here. The law study is stored in "
            f"`{companion_source}/report_law.json`.", "",
            b["companion-summary"], "",
            b["companion-headline"], "", b["companion-shock"], "", b["companion-law-chosen"], "",
            b["companion-heldout-total"], "", b["companion-points"], "", b["companion-noise"], ""]
    if "previous-summary" in b:
        note = PREVIOUS_NOTES.get(Path(previous_source).name, "")
        parts += [
            "## The earlier study", "",
            f"The same summary of the earlier reference study (`{previous_source}`)"
            + (f": {note}" if note else "."), "",
            b["previous-summary"], ""]
    return "\n".join(parts)


def parse_blocks(text: str) -> dict[str, str]:
    """The marked blocks of a report text, name -> body."""
    return {m["name"]: m["body"] for m in MARKER.finditer(text)}

