"""Figures checked at their saved size (issue 24): nothing drawn off the canvas, the legend off the
axes' labels, baselines not hidden under CAST, sizes coloured in size order without yellow, and
residual plots that label only the splits that ran on a sane axis.

Each test draws through castlab's own figure functions and inspects the figure matplotlib laid
out for the file (``save`` is wrapped to keep the figure open)."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
from test_report_cmd import BUDGETS5, synthetic_rows

from castlab import plotting
from castlab.cli import main
from castlab.law import plots as law_plots
from castlab.law.synthetic import synthetic_case
from castlab.report import figures
from castlab.report.study import run_study


@pytest.fixture
def kept(monkeypatch):
    """Figures saved through castlab's ``save`` during the test, laid out at their saved size."""
    saved = []

    def keep(fig, path, rect=(0, 0, 1, 1)):
        if fig.get_layout_engine() is None:
            fig.tight_layout(rect=rect)
        fig.savefig(path)
        saved.append(fig)
        return path

    for module in (figures, law_plots, plotting):
        monkeypatch.setattr(module, "save", keep)
    return saved


def _box(artist, fig):
    return artist.get_window_extent(fig.canvas.get_renderer())


def _inside(box, fig, tol=1.0) -> bool:
    w, h = fig.canvas.get_width_height()
    return box.x0 >= -tol and box.y0 >= -tol and box.x1 <= w + tol and box.y1 <= h + tol


def _one_size_rows() -> pd.DataFrame:
    """One size (a smoke study's shape), with AST and SR-STE at CAST's top-budget PPL."""
    rows = synthetic_rows()
    rows = rows[rows["model"] == "s1m"]
    top = rows[(rows["method"] == "cast") & (rows["tokens"] == rows["tokens"].max())]
    ast = top.assign(method="ast", ppl=top["ppl"] * 1.0005)
    return pd.concat([rows, ast], ignore_index=True).assign(seq_len=64)


def test_one_size_ppl_figure_keeps_title_legend_and_labels_on_canvas(kept, tmp_path):
    rows = _one_size_rows()
    study = run_study(rows, draws=20, heldout_draws=5)
    assert study.law is not None  # the long suptitle names the law
    figures.ppl_vs_tokens(rows, study, tmp_path / "p.png")
    fig = kept[-1]
    fig.canvas.draw()
    legend = fig.legends[0] if fig.legends else next(a.get_legend() for a in fig.axes
                                                     if a.get_legend())
    assert _inside(_box(fig._suptitle, fig), fig), "suptitle cut at the canvas edge"
    assert _inside(_box(legend, fig), fig), "legend cut at the canvas edge"
    ax = fig.axes[0]
    for label in (ax.title, ax.xaxis.label, ax.yaxis.label):
        assert _inside(_box(label, fig), fig)
        assert not _box(label, fig).overlaps(_box(legend, fig)), label.get_text()
    assert not _box(fig._suptitle, fig).overlaps(_box(legend, fig))
    assert not ax.get_tightbbox(fig.canvas.get_renderer()).overlaps(_box(legend, fig))


def test_baselines_are_not_hidden_under_cast(kept, tmp_path):
    """At the top budget AST, SR-STE and CAST sit within 0.05% PPL: their markers must not
    cover each other (own offset, open markers, AST drawn above)."""
    rows = _one_size_rows()
    figures.ppl_vs_tokens(rows, figures.Study(level=0.9), tmp_path / "p.png")
    fig = kept[-1]
    fig.canvas.draw()
    ax = fig.axes[0]
    top = rows["tokens"].max()
    centres, lines = {}, {}
    for container in ax.containers:
        line = container.lines[0]
        label = container.get_label()
        x, y = line.get_data()
        i = int(np.argmin(np.abs(np.log(np.asarray(x, float) / top))))
        centres[label] = ax.transData.transform((x[i], y[i]))
        lines[label] = line
    diameter = lines["cast"].get_markersize() * fig.dpi / 72
    for a, b in (("cast", "ast"), ("cast", "sr-ste"), ("ast", "sr-ste")):
        assert np.linalg.norm(centres[a] - centres[b]) > diameter, (a, b)
    assert lines["ast"].get_marker() != lines["cast"].get_marker()
    assert lines["ast"].get_zorder() > lines["cast"].get_zorder()
    for name in ("cast", "ast", "sr-ste"):  # open markers: what lies below shows through
        assert lines[name].get_markerfacecolor() in ("white", "none", (1.0, 1.0, 1.0, 1.0))


def test_law_sizes_are_coloured_in_size_order_without_yellow(kept, tmp_path):
    """Sizes listed out of order in the table still get legend and colours in order of N."""
    sizes = {"s3m": 3e6, "s100k": 1e5, "s1m": 1e6}
    pts = synthetic_case("power_d", seeds=1, budgets=BUDGETS5, sizes=sizes)
    order = np.argsort([list(sizes).index(s) for s in pts.size], kind="stable")
    table = pd.DataFrame({"n": pts.n[order], "d": pts.d[order], "loss": pts.loss[order],
                          "size": pts.size[order]})
    assert list(dict.fromkeys(table["size"])) == ["s3m", "s100k", "s1m"]
    table.to_csv(tmp_path / "t.csv", index=False)
    code = main(["fit-law", str(tmp_path / "t.csv"), "--n-col", "n", "--d-col", "d",
                 "--loss-col", "loss", "--size-col", "size", "--form", "power_d",
                 "--draws", "100", "--heldout-draws", "0", "--out", str(tmp_path / "law")])
    assert code == 0
    fig = next(f for f in kept if f.axes[0].get_xlabel() == "training tokens D")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["s100k", "s1m", "s3m"]
    colors = [np.asarray(h.get_facecolor()).reshape(-1, 4)[0][:3] for h in legend.legend_handles]
    assert np.allclose(colors, [c[:3] for c in plotting.size_colors(3)])
    luminance = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in colors]
    assert luminance == sorted(luminance)  # dark (small) to light (large)
    for r, g, b in colors:
        assert not (r > 0.75 and g > 0.75 and b < 0.45), "yellow on white"


def _heldout(schemes: dict[str, int], distance: float = np.log10(2)) -> pd.DataFrame:
    rows = []
    for scheme, count in schemes.items():
        for i in range(count):
            rows.append({"form": "power_d", "scheme": scheme, "distance": distance,
                         "rel_err": 0.004 * (i - 1), "ppl": 100.0, "pred_ppl": 100.4,
                         "lo_ppl": 99.0, "hi_ppl": 102.0, "tokens": 131072})
    return pd.DataFrame(rows)


def test_law_residuals_label_only_splits_that_ran_on_a_sane_axis(kept, tmp_path):
    law_plots.residuals_vs_extrapolation(_heldout({"D/2": 3}), "power_d", tmp_path / "r.png")
    ax = kept[-1].axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("D/4" in t for t in texts), texts  # no D/4 split ran
    assert any("D/2" in t for t in texts)
    lo, hi = ax.get_xlim()
    # every point at log10(2) = 0.301: the axis still starts at 0 (no extrapolation) and
    # leaves room past the points, instead of zooming to 0.285-0.317
    assert lo <= 0 and hi >= 0.35


def test_report_residuals_label_only_splits_that_ran_on_a_sane_axis(kept, tmp_path):
    study = types.SimpleNamespace(heldout=_heldout({"D/2": 3, "size": 2}), chosen="power_d")
    figures.residuals(study, tmp_path / "r.png", noise=0.005)
    ax = kept[-1].axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "D/2 -> D (3 runs)" in texts and "leave one size out (2 runs)" in texts
    assert not any("D/4" in t for t in texts)
    lo, hi = ax.get_xlim()
    assert lo <= 1.0 and hi >= 2.5  # from 1x (no extrapolation) past the 2x points


def test_fit_law_and_report_figures_have_distinct_names():
    assert not set(law_plots.FIGURES) & set(figures.FIGURES.values())

