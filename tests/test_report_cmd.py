"""`castlab report`: tables against hand-computed cells, the shipped study's headline numbers,
figures written, one-line errors."""

import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from castlab import store
from castlab.cli import main
from castlab.law.synthetic import TEACHER, synthetic_case
from castlab.plotting import plain_axis, plain_label, pyplot, tokens_label
from castlab.report.commands import write_report
from castlab.report.figures import ppl_label
from castlab.report.study import run_study
from castlab.report.tables import headline_table, heldout_table

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "opt_family"
REFERENCE_REPORT = Path(__file__).resolve().parents[1] / "analysis" / "REPORT.md"
SIZES3 = {"s100k": 1e5, "s1m": 1e6, "s3m": 3e6}
BUDGETS5 = tuple(1e6 * 2.0**k for k in range(5))
TEACHER_SPREAD = 0.01  # teacher seed 1 is 1% worse in PPL than teacher seed 0


def synthetic_rows() -> pd.DataFrame:
    """cast + dense-kd twins (3 seeds), an sr-ste cell and a magnitude run per size; seed s
    starts from teacher s % 2, the two teachers 1% apart in PPL."""
    pts = synthetic_case("kd_gap", seeds=3, budgets=BUDGETS5, sizes=SIZES3)
    teacher_ppl = np.exp([TEACHER[s] for s in pts.size]) * (1 + TEACHER_SPREAD * (pts.seed % 2))
    common = {"model": pts.size, "params_non_embedding": pts.n, "tokens": pts.d.astype(int),
              "seed": pts.seed, "status": "ok", "teacher_ppl": teacher_ppl,
              "teacher_eval_loss": np.log(teacher_ppl), "sweep": "synthetic"}
    cast = pd.DataFrame({**common, "method": "cast", "eval_loss": pts.loss, "sparsity": 0.5})
    kd = pd.DataFrame({**common, "method": "dense-kd", "eval_loss": pts.lkd, "sparsity": 0.0})
    top = cast[cast["tokens"] == cast["tokens"].max()]
    srste = top.assign(method="sr-ste", eval_loss=top["eval_loss"] + 0.01)
    first = cast[(cast["tokens"] == cast["tokens"].min()) & (cast["seed"] == 0)]
    mag = first.assign(method="magnitude", tokens=0, eval_loss=first["eval_loss"] + 0.3)
    rows = pd.concat([cast, kd, srste, mag], ignore_index=True)
    return rows.assign(ppl=np.exp(rows["eval_loss"]))


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rows = synthetic_rows()
    for i, row in enumerate(rows.to_dict("records")):
        store.write_row(root / "runs" / f"{row['method']}-{i:04d}",
                        {**row, "run_id": f"{row['method']}-{i:04d}"})
    path = write_report(root / "runs", root / "out", draws=30, heldout_draws=10)
    return rows, path


def test_headline_cells_are_mean_and_sd_over_seeds(synthetic_report):
    rows, path = synthetic_report
    text = path.read_text()
    cell = rows[(rows["model"] == "s1m") & (rows["method"] == "cast")
                & (rows["tokens"] == int(BUDGETS5[-1]))]["ppl"]
    assert len(cell) == 3
    expected = f"{cell.mean():.2f} ± {cell.std(ddof=1):.2f}"
    line = next(ln for ln in text.splitlines() if ln.startswith("| s1m | cast |"))
    assert line.split(" | ")[-1].rstrip(" |") == expected
    # the teacher row: two teachers (seed 0 and 1), mean ± sd of their PPL
    t0 = np.exp(TEACHER["s1m"])
    teachers = np.array([t0, t0 * (1 + TEACHER_SPREAD)])
    teacher_line = next(ln for ln in text.splitlines() if ln.startswith("| s1m | dense teacher |"))
    assert f"{teachers.mean():.2f} ± {teachers.std(ddof=1):.2f}" in teacher_line
    # one-shot pruners sit in the 0-token column
    mag = rows[(rows["model"] == "s1m") & (rows["method"] == "magnitude")]["ppl"].iloc[0]
    assert f"| s1m | magnitude | {mag:.2f} |" in text


def test_report_has_law_tables_and_figures(synthetic_report):
    _, path = synthetic_report
    text = path.read_text()
    assert "Chosen form: **" in text
    assert "| 90% coverage |" in text and "| D/4 -> D |" in text
    assert "issue" not in text.lower()  # the report speaks of the study
    for name in ("ppl_vs_tokens.png", "pred_vs_actual.png", "residuals_vs_extrapolation.png"):
        assert f"]({name})" in text
        image = matplotlib.image.imread(path.parent / name)
        assert image.shape[0] > 300 and image.shape[1] > 300


def test_teacher_convergence_table(synthetic_report):
    rows, path = synthetic_report
    kd = rows[(rows["model"] == "s100k") & (rows["method"] == "dense-kd")]
    top = kd[kd["tokens"] == kd["tokens"].max()]
    gain = ((top["teacher_ppl"] - top["ppl"]) / top["teacher_ppl"]).mean()
    line = next(ln for ln in path.read_text().splitlines()
                if ln.startswith("| s100k | 2 |"))
    assert f"{100 * gain:+.2f}%" in line
    assert ("pass" in line) == (gain <= 0.02)


def test_paired_baselines_and_seed_noise_sections(synthetic_report):
    _, path = synthetic_report
    text = path.read_text()
    # sr-ste is every top-budget cast run + 0.01 nats: 3 sizes x 3 seeds, CAST wins every pair,
    # mean PPL change exp(-0.01) - 1; d is constant, so no t statistic (sd 0); sign test 2 / 2^9
    line = next(ln for ln in text.splitlines() if ln.startswith("| sr-ste | 9 (3 sizes) |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:] == ["9/9", f"{100 * (math.exp(-0.01) - 1):+.2f}%", "—", "—",
                         f"{2 / 2**9:.2g}"]
    assert "## Seed noise" in text and "| s1m | cast |" in text.split("## Seed noise")[1]


def test_ppl_axis_names_its_unit():
    assert ppl_label(pd.DataFrame({"seq_len": [64, 64, None]})) == "validation PPL at seq_len 64"
    assert ppl_label(pd.DataFrame({"ppl": [1.0]})) == "validation PPL"


def test_tick_labels_are_plain():
    assert [tokens_label(v) for v in (16384, 131072, 1048576, 2500)] == ["16k", "131k", "1.05M",
                                                                        "2.5k"]
    assert [plain_label(v) for v in (100.0, 110.0, 2.5)] == ["100", "110", "2.5"]


def _drawn_labels(axis) -> list[str]:
    labels = [t.get_text() for t in axis.get_ticklabels(which="both")]
    return [t for t in labels if t]


def test_log_ppl_axis_under_a_decade_gets_plain_labels_of_its_minor_ticks():
    # matplotlib alone labels a 90-130 log axis only with minor ticks in 1.1x10^2 style
    plt = pyplot()
    fig, (ax, bare) = plt.subplots(1, 2)
    for a in (ax, bare):
        a.plot([90, 130], [90, 130])
        a.set(yscale="log", ylim=(90, 130))
    plain_axis(ax.yaxis)
    fig.canvas.draw()
    assert any("times" in t for t in _drawn_labels(bare.yaxis))  # the default this replaces
    labels = _drawn_labels(ax.yaxis)
    assert "100" in labels and all(re.fullmatch(r"\d+", t) for t in labels), labels
    plt.close(fig)


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", cell)]


@pytest.mark.skipif(not REFERENCE.is_dir() or not REFERENCE_REPORT.exists(),
                    reason="no shipped reference study")
def test_reference_headline_matches_the_shipped_report():
    """The headline of the shipped study, rebuilt from its rows, has the numbers the shipped
    REPORT.md shows (read from the report, so a re-shipped study moves both together)."""
    shipped = REFERENCE_REPORT.read_text()
    block = re.search(r"<!-- begin:headline -->\n(.*?)\n<!-- end:headline -->", shipped, re.S)
    assert block, "analysis/REPORT.md has no headline block"
    lines = block.group(1).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    theirs = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for col, cell in zip(header[2:], cells[2:], strict=True):
            theirs[(cells[0], cells[1], col)] = _numbers(cell)
    mine_df = headline_table(store.load(REFERENCE))
    mine = {(r[0], r[1], col): _numbers(v) for r in mine_df.itertuples(index=False)
            for col, v in zip(mine_df.columns[2:], r[2:], strict=True)}
    assert set(mine) == set(theirs)
    assert sum(1 for v in theirs.values() if v) >= 20  # a real table, not an empty one
    assert mine == theirs


@pytest.mark.skipif(not REFERENCE.is_dir() or not REFERENCE_REPORT.exists(),
                    reason="no shipped reference study")
def test_reference_heldout_errors_match_the_shipped_report():
    """castlab report's law study on the shipped rows gives the held-out errors (points, mean and
    max ARE, bias per form and split) and the chosen form that the shipped REPORT.md states from
    its own stored law study. No bootstrap draws: the point predictions are what is compared."""
    shipped = REFERENCE_REPORT.read_text()
    block = re.search(r"<!-- begin:heldout-total -->\n(.*?)\n<!-- end:heldout-total -->", shipped,
                      re.S)
    assert block, "analysis/REPORT.md has no heldout-total block"
    lines = [[c.strip() for c in ln.strip("|").split("|")] for ln in block.group(1).splitlines()]
    theirs = {(r[0], r[1]): r[2:6] for r in lines[2:] if r[1] != "all"}
    study = run_study(store.load(REFERENCE), draws=0, heldout_draws=0)
    t = heldout_table(study.summary, study.chosen, study.level)
    mine = {(r[0], r[1]): list(r[2:6]) for r in t.itertuples(index=False)}
    assert len(theirs) >= 10 and mine == theirs


def test_missing_results_is_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


def test_heldout_text_describes_only_the_splits_its_table_lists(synthetic_report):
    """A one-size study has no leave-one-size-out split: the paragraph above the table must not
    describe one (the smoke report mentioned 'every token split' and 'leave one size out' with
    neither in its table)."""
    from castlab.report.render import heldout_text

    text = heldout_text(["D/4 -> D", "D/2 -> D"], 0.9)
    assert "`D/4 -> D`: the largest budget D from budgets at most D/4" in text
    assert "`D/2 -> D`" in text and "90% prediction interval" in text
    assert "every token split" not in text and "leave one size out" not in text
    # the rendered report: its paragraph names exactly the splits of its held-out table
    report = synthetic_report[1].read_text()
    section = report[report.index("### Held-out error"):]
    paragraph, table = section.split("\n\n")[1], section.split("\n\n")[2]
    splits = {row.split(" | ")[1] for row in table.splitlines()[2:]}
    for label in ("D/4 -> D", "D/2 -> D", "every token split", "leave one size out"):
        assert (f"`{label}`" in paragraph) == (label in splits), label
