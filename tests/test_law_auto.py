"""fit-law's auto mode on tables castlab did not make (issue 22): it answers, says why, fits what is
asked; trajectories (run ids); predict's warnings and query-independent intervals (issue 24 item 7)."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from castlab.cli import main
from castlab.config import parse_count
from castlab.errors import UserError
from castlab.law.bootstrap import interval_flag, resample_weights
from castlab.law.choose import choose_form
from castlab.law.forms import FORMS
from castlab.law.points import ColumnMap, check_fittable, points_from_frame, size_label
from castlab.law.predict import Law
from castlab.law.synthetic import sparse_table, trajectory_table
from castlab.law.validate import holdouts

QUICK = ["--draws", "100", "--heldout-draws", "20", "--no-plots"]


def chinchilla_table(budgets) -> pd.DataFrame:
    """Noisy Chinchilla-law losses (Epoch's parameters) on 3 sizes x ``budgets``."""
    rng = np.random.default_rng(0)
    rows = [{"n": n, "d": d, "loss": (1.82 + 482 / n**0.348 + 2085 / d**0.366)
             * np.exp(0.005 * rng.standard_normal())}
            for n in (1e7, 1e8, 1e9) for d in budgets]
    return pd.DataFrame(rows)


def fit_law(tmp_path, df, *extra):
    table = tmp_path / "t.csv"
    df.to_csv(table, index=False)
    out = tmp_path / "out"
    code = main(["fit-law", str(table), "--out", str(out), *extra, *QUICK])
    return code, out / "law.json"


def test_auto_falls_back_when_no_split_can_be_scored(tmp_path, capsys):
    # 3 budgets x2 apart: budgets <= D/2 leave 2 (chinchilla needs 3), <= D/4 leave 1, and the
    # per-size forms need p + 2 points per size (3 here): no held-out split can be scored.
    # Before: refused ("no form could be validated").
    df = chinchilla_table((1e9, 2e9, 4e9))
    code, law = fit_law(tmp_path, df, "--n-col", "n", "--d-col", "d", "--loss-col", "loss")
    out = capsys.readouterr().out
    assert code == 0
    d = json.loads(law.read_text())
    assert d["validated"] is False and d["chosen_by"] == "fallback"
    assert d["form"] == "chinchilla"  # first fittable form of FALLBACK_ORDER here
    assert "NOT VALIDATED" in out and "fell back to chinchilla" in out
    assert "chinchilla on split D<=2,000,000,000 -> 4,000,000,000: form chinchilla: 5 " \
        "parameters need at least 7 points, got 6" in d["why"]
    assert "extrapolation sd not calibrated" in out
    # predict says so too
    code = main(["predict", "--law", str(law), "--n", "1e8", "--tokens", "4G"])
    assert code == 0
    assert "not validated" in capsys.readouterr().err


def _pred(form, covered, err, split="D<=1 -> 2"):
    return [{"form": form, "scheme": "D/2", "split": split, "rel_err": err, "are": err,
             "loss_rel_err": err / 3, "covered": float(c), "note": ""} for c in covered]


def test_choice_weighs_held_out_coverage():
    # a: lower error but 1 of 12 held-out points covered at 90% (binomial p ~ 1e-10); b: a bit
    # worse, 11 of 12 covered. Before: a (error alone).
    pred = pd.DataFrame(_pred("a", [1] + [0] * 11, 0.01) + _pred("b", [1] * 11 + [0], 0.012))
    assert choose_form(pred, ["a", "b"])[0] == "b"
    # 6 of 9 covered is not far enough below 90% to lose (the reference study's chinchilla)
    pred = pd.DataFrame(_pred("a", [1] * 6 + [0] * 3, 0.01) + _pred("b", [1] * 9, 0.012))
    assert choose_form(pred, ["a", "b"])[0] == "a"


def test_refusal_names_the_form_split_and_cause():
    pred = pd.DataFrame([{"form": "power_d", "scheme": "D/4", "split": "D<=4 -> 16",
                          "rel_err": np.nan, "note": "form power_d: 3 parameters need at least 5 "
                                                     "points for size s1, got 4"}])
    with pytest.raises(UserError, match="power_d on split D<=4 -> 16: .*size s1, got 4"):
        choose_form(pred, ["power_d"])


def test_forms_ignoring_sparsity_are_refused_on_several_levels():
    df = sparse_table()
    pts = points_from_frame(df, columns=ColumnMap("n", "tokens", "loss", s_col="sparsity"))
    with pytest.raises(UserError, match="loglinear: ignores sparsity.*4 sparsity levels.*frantar"):
        check_fittable(FORMS["loglinear"], pts)
    check_fittable(FORMS["frantar"], pts)  # the form that models it fits


def test_size_labels_print_plain_numbers():
    assert size_label(7812500.0) == "N=7.8125e+06"
    assert size_label(np.float64(123456789.0)) == "N=123456789.0"  # exact N kept


def test_predict_for_sizes_excludes_per_size_forms_and_predict_names_them(tmp_path, capsys):
    df = chinchilla_table(tuple(1e9 * 2.0**k for k in range(6)))
    table = tmp_path / "t.csv"
    df.to_csv(table, index=False)
    cols = ["--n-col", "n", "--d-col", "d", "--loss-col", "loss"]
    main(["fit-law", str(table), "--out", str(tmp_path / "pd"), *cols, *QUICK,
          "--form", "power_d"])
    capsys.readouterr()
    # a per-size law asked for a new size: the error says which forms would answer
    assert main(["predict", "--law", str(tmp_path / "pd" / "law.json"), "--n", "3e9",
                 "--tokens", "1G"]) == 2
    assert re.search(r"fitted per size and cannot predict a new size \(N=3e\+09\).*forms that "
                     r"can: .*chinchilla.*--predict-for sizes", capsys.readouterr().err)
    assert main(["fit-law", str(table), "--out", str(tmp_path / "x"), *cols, *QUICK,
                 "--form", "power_d", "--predict-for", "sizes"]) == 2
    assert "--form power_d: cannot predict new sizes" in capsys.readouterr().err
    code = main(["fit-law", str(table), "--out", str(tmp_path / "auto"), *cols, *QUICK,
                 "--predict-for", "sizes"])
    d = json.loads((tmp_path / "auto" / "law.json").read_text())
    assert code == 0 and not FORMS[d["form"]].per_size and d["predict_for"] == ["sizes"]
    assert "cannot predict new sizes" in capsys.readouterr().out  # power_d's line says why
    assert main(["fit-law", str(table), "--out", str(tmp_path / "y"), *cols, "--predict-for",
                 "tokens"]) == 2
    assert "--predict-for: got 'tokens', allowed 'all' or" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chinchilla_law(tmp_path_factory):
    d = tmp_path_factory.mktemp("ch")
    table = d / "t.csv"
    chinchilla_table(tuple(1e9 * 2.0**k for k in range(6))).to_csv(table, index=False)
    assert main(["fit-law", str(table), "--out", str(d / "out"), "--n-col", "n", "--d-col", "d",
                 "--loss-col", "loss", "--form", "chinchilla", *QUICK]) == 0
    return Law.load(d / "out" / "law.json")


def test_one_budgets_interval_does_not_depend_on_the_others(chinchilla_law):
    law = chinchilla_law
    alone = law.predict(law.query("", 1e8, [8e9]), seed=3)[0]
    listed = law.predict(law.query("", 1e8, [2e9, 8e9, 3e10]), seed=3)[1]
    assert (alone["ppl_lo"], alone["ppl_hi"]) == (listed["ppl_lo"], listed["ppl_hi"])


def test_predict_warns_far_outside_the_fitted_range(chinchilla_law):
    law = chinchilla_law
    q = law.query("", 1e8, [3e10, 1e12])
    warn = law.warnings(q, law.fit.predict_log(q))
    assert len(warn) == 1 and "1e+12 tokens is 1.5 decades beyond the largest fitted budget" \
        in warn[0]
    q = law.query("", 1e12, [1e9])
    assert any("3.0 decades outside the fitted sizes" in w
               for w in law.warnings(q, law.fit.predict_log(q)))
    q = law.query("", 1e8, [1e9])
    q.ldense[:] = 10.0  # a teacher worse than the prediction
    assert "below the dense teacher" in law.warnings(q, law.fit.predict_log(q))[0]


def test_counts_accept_t_suffix():
    assert parse_count("1T", "--tokens") == parse_count("1000G", "--tokens") == 10**12


def test_parameter_intervals_spanning_decades_are_flagged():
    assert "2.1 decades" in interval_flag(5.4, 6068 / 10)
    assert interval_flag(285.0, 744.0) == ""
    assert "crosses zero" in interval_flag(-0.1, 0.2)


def test_run_ids_resample_runs_whole_and_split_per_run():
    df = trajectory_table(sizes=(1e7, 1e8, 1e9), checkpoints=8)
    df = pd.concat([df, df.assign(run=df["run"] + "-b")], ignore_index=True)  # 2 runs per size
    pts = points_from_frame(df, columns=ColumnMap("n", "tokens", "loss", run_col="run"))
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = resample_weights(pts, rng)
        for r in np.unique(pts.run):  # every point of a run has the run's multiplicity
            assert len(np.unique(w[pts.run == r])) == 1
        for n in np.unique(pts.n):  # within a size: its 2 runs drawn twice
            assert w[pts.n == n].sum() == 2 * 8
    h = holdouts(pts, "chinchilla")[1]  # each run's D/4 -> its last checkpoint
    test = h.test(pts)
    assert h.per_run and test.sum() == 6  # one final checkpoint per run
    top = pts.subset(test).d
    train = pts.subset(h.train(pts))
    for r in np.unique(pts.run):  # trained on that run's checkpoints <= a quarter of its end
        assert train.d[train.run == r].max() <= top[pts.subset(test).run == r][0] / 4 * 1.01


def test_run_column_must_name_one_size_per_run():
    df = pd.DataFrame({"n": [1e7, 1e8], "d": [1e9, 1e9], "loss": [3.0, 2.9], "r": ["a", "a"]})
    with pytest.raises(UserError, match="r: run 'a' has rows of different sizes"):
        points_from_frame(df, columns=ColumnMap("n", "d", "loss", run_col="r"))


def test_law_commands_import_no_torch(tmp_path):
    # fit-law and predict through their command module in a fresh interpreter: neither torch nor
    # transformers may be imported (they cost seconds of start-up; issue 22 / 24 item 1).
    table = tmp_path / "t.csv"
    chinchilla_table(tuple(1e9 * 2.0**k for k in range(5))).to_csv(table, index=False)
    code = f"""
import argparse, sys
from castlab.law import commands
p = argparse.ArgumentParser(); sub = p.add_subparsers(); commands.register(sub)
for argv in (["fit-law", {str(table)!r}, "--out", {str(tmp_path / 'o')!r}, "--n-col", "n",
              "--d-col", "d", "--loss-col", "loss", "--form", "chinchilla", "--draws", "100",
              "--heldout-draws", "0"],
             ["predict", "--law", {str(tmp_path / 'o' / 'law.json')!r}, "--n", "1e8",
              "--tokens", "1T"]):
    a = p.parse_args(argv); assert a.func(a) == 0
print("heavy:", sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "heavy: []" in res.stdout


def test_curves_fit_every_checkpoint_of_castlabs_own_runs(tmp_path, capsys):
    # the shipped opt600k_long study: 3 CAST runs of one size at one budget, 16 evaluations on
    # each curve. Its final rows alone fit no form (refused before); with --curves each run's
    # checkpoints are points of that run, validated on its last one.
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "results" / "reference" / "opt600k_long"
    store = tmp_path / "store"
    shutil.copytree(src, store, ignore=shutil.ignore_patterns("*.png", "*.md"))
    assert main(["fit-law", str(store), "--out", str(tmp_path / "a"), *QUICK]) == 2
    assert "no law form fits these runs" in capsys.readouterr().err
    assert main(["fit-law", str(store), "--out", str(tmp_path / "b"), "--curves", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "48 points (method cast), 1 sizes, 3 runs, 16 budgets" in out
    assert "each run's D/2 -> its last D" in out
    d = json.loads((tmp_path / "b" / "law.json").read_text())
    assert d["validated"] is True and d["data"]["runs"] == 48
    assert main(["fit-law", str(store), "--out", str(tmp_path / "c"), "--curves", "--n-col",
                 "n", "--d-col", "d", "--loss-col", "l"]) == 2
    assert "--curves: reads a castlab results directory" in capsys.readouterr().err


def test_choice_sets_aside_a_form_scored_on_few_points():
    # b predicted 1 held-out point (its other sizes had too few budgets), a predicted 20 on two
    # splits. Before: compared on the one split both scored, b won on its single point.
    pred = pd.DataFrame(_pred("a", [1] * 10, 0.02, "s1") + _pred("a", [1] * 10, 0.02, "s2")
                        + _pred("b", [1], 0.001, "s2"))
    assert choose_form(pred, ["a", "b"]) == ("a", ["s1", "s2"])


def test_extrapolation_distance_counts_from_each_sizes_own_budgets():
    # a trajectory table's small size ends at 1e9 tokens while the largest ends at 1e11: 4e9 at
    # the small size is 0.6 decades beyond its data (before: 0, inside the table's range)
    from castlab.law.bootstrap import Bootstrap
    from castlab.law.points import Points

    boot = Bootstrap(np.zeros((1, 1, 5)), None, 1, 0, 0, 0.0, 0.01, "residuals", tau=0.1,
                     d_seen=1e11, n_seen=(1e7, 1e9), d_seen_n=(1e9, 1e11))
    q = Points(n=np.array([1e7, 1e9, 1e8]), d=np.array([4e9, 4e9, 1e12]), loss=np.ones(3),
               s=np.zeros(3), ldense=np.ones(3), lkd=np.ones(3), size=np.array(["a", "b", ""]),
               seed=np.zeros(3))
    np.testing.assert_allclose(boot.distance(q), [np.log10(4), 0.0, 1.0 + 1.0])
