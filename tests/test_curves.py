"""`castlab curves`: stored curves drawn per size and method, the numbers on the figure checked
against the curve files, and one-line errors (issue 24)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from castlab import plotting, store
from castlab.cli import main
from castlab.curves import SMOOTH_POINTS

ROOT = Path(__file__).resolve().parents[1]


def _run(root: Path, run_id: str, method: str, model: str, n: int, steps: int, shift: float):
    run_dir = root / run_id
    rng = np.random.default_rng(len(run_id))
    records = []
    for step in range(1, steps + 1):
        rec = {"step": step, "tokens": step * 256, "lr": 1e-3,
               "train_loss": 3.0 + shift - 0.001 * step + 0.05 * rng.standard_normal()}
        if step % 25 == 0:
            rec["eval_loss"] = 3.2 + shift - 0.001 * step
        records.append(rec)
    store.write_curve(run_dir, records)
    store.write_row(run_dir, {"run_id": run_id, "status": "ok", "method": method, "model": model,
                              "tokens": steps * 256, "eval_loss": 3.0, "ppl": math.exp(3.0),
                              "params_non_embedding": n})
    return run_dir


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    # the larger model first on disk: columns must still follow parameter counts
    _run(root, "cast-big", "cast", "opt-big", 600_000, 100, 0.0)
    _run(root, "cast-small", "cast", "opt-small", 100_000, 100, 0.2)
    _run(root, "ast-small", "ast", "opt-small", 100_000, 50, 0.3)
    return root


@pytest.fixture
def kept(monkeypatch):
    figs = []

    def keep(fig, path, rect=(0, 0, 1, 1)):
        fig.savefig(path)
        figs.append(fig)
        return path

    monkeypatch.setattr(plotting, "save", keep)
    return figs


def test_curves_figure_holds_the_stored_numbers(results, tmp_path, kept, capsys):
    out = tmp_path / "fig" / "c.png"
    assert main(["curves", str(results), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = kept[-1]
    top_small, top_big = fig.axes[0], fig.axes[1]
    assert [top_small.get_title(), top_big.get_title()] == ["opt-small", "opt-big"]
    bottom_small = fig.axes[2]
    curve = store.read_curve(results / "cast-small")
    window = len(curve) // SMOOTH_POINTS
    expected = [curve["train_loss"].iloc[i - window + 1:i + 1].mean()
                for i in range(window - 1, len(curve))]
    red = [ln for ln in top_small.get_lines() if ln.get_color() == "tab:red"]
    assert len(red) == 1
    assert red[0].get_ydata() == pytest.approx(expected)
    assert red[0].get_xdata() == pytest.approx(curve["tokens"].iloc[window - 1:].to_numpy())
    ev = curve.dropna(subset=["eval_loss"])
    ppl = [ln for ln in bottom_small.get_lines() if ln.get_color() == "tab:red"][0]
    assert ppl.get_ydata() == pytest.approx(np.exp(ev["eval_loss"]).to_numpy())
    assert len(top_small.get_lines()) == 2  # cast and ast of opt-small
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["ast", "cast"]


def test_filters_and_a_single_run_folder(results, tmp_path, kept):
    assert main(["curves", str(results / "ast-small"), str(results), "--method", "ast",
                 "--out", str(tmp_path / "a.png")]) == 0
    fig = kept[-1]
    assert [ax.get_title() for ax in fig.axes[:1]] == ["opt-small"]
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == 1  # the run counted once


@pytest.mark.parametrize(("argv", "message"), [
    (["missing"], "missing: no such run or results folder"),
    (["empty"], "empty: no curve.parquet found"),
    (["results", "--model", "opt-none"], "no curves left"),
    (["results", "--out", "x.txt"], "--out: x.txt is not a .png file name"),
])
def test_user_errors_are_one_line(results, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["curves", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_command_module_imports_no_heavy_library():
    code = ("import sys, castlab.curves, castlab.tracking; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "[]"
