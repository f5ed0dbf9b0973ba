"""`castlab fit-law` and `castlab predict` end to end, and one-line errors for bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from castlab.cli import main
from castlab.law.choose import heldout_table
from castlab.law.predict import checksum
from castlab.law.synthetic import TEACHER, synthetic_case

SIZES3 = {"s100k": 1e5, "s1m": 1e6, "s3m": 3e6}
BUDGETS5 = tuple(1e6 * 4.0**k for k in range(5))


def store_frame() -> pd.DataFrame:
    """Store-schema rows: cast runs and their dense-kd twins (kd_gap synthetic study)."""
    pts = synthetic_case("kd_gap", seeds=2, budgets=BUDGETS5, sizes=SIZES3)
    common = {"model": pts.size, "params_non_embedding": pts.n, "tokens": pts.d,
              "seed": pts.seed, "status": "ok",
              "teacher_eval_loss": [TEACHER[s] for s in pts.size]}
    cast = pd.DataFrame({**common, "method": "cast", "eval_loss": pts.loss, "sparsity": 0.5})
    kd = pd.DataFrame({**common, "method": "dense-kd", "eval_loss": pts.lkd, "sparsity": 0.0})
    return pd.concat([cast, kd], ignore_index=True)


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("law")
    table = d / "runs.parquet"
    store_frame().to_parquet(table)
    # --form chinchilla and 200 draws keep this fixture fast (the default is 1000 draws; the
    # bench times those); the auto choice is tested through heldout_table below.
    code = main(["fit-law", str(table), "--out", str(d / "out"), "--form", "chinchilla",
                 "--heldout-draws", "20", "--draws", "200"])
    assert code == 0
    return d / "out"


def test_fit_law_writes_law_json_and_figures(fitted):
    law = json.loads((fitted / "law.json").read_text())
    assert law["form"] == "chinchilla" and law["chosen_by"] == "user"
    assert law["castlab_version"]
    assert len(law["data"]["hash"]) == 64 and law["data"]["runs"] == 30
    assert len(law["bootstrap"]["thetas"]) + law["bootstrap"]["failed"] == 200
    for s in law["params"].values():
        assert s["lo"] <= s["value"] <= s["hi"] or not np.isfinite(s["lo"])
    assert [r["form"] for r in law["heldout"]] == ["chinchilla"]
    # two fixed splits (D/2, D/4) predicting the 6 runs at the top budget; 3 sizes leave 2 to
    # train on without one, too few for leave-one-size-out
    assert law["heldout"][0]["tokens_points"] == 12 and law["heldout"][0]["size_points"] == 0
    assert law["heldout"][0]["tokens_splits"] == 2
    assert len(law["checksum"]) == 64
    # law_ names: `castlab report` writes different figures under the plain names (issue 24)
    for name in ("law_pred_vs_actual.png", "law_ppl_vs_tokens.png", "law_residuals.png"):
        assert (fitted / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (fitted / "ppl_vs_tokens.png").exists()


def test_predict_round_trip_tokens_ppl_tokens(fitted, capsys):
    code, out, _ = run(["predict", "--law", str(fitted / "law.json"), "--model", "s1m",
                        "--tokens", "5M,20M", "--json"], capsys)
    assert code == 0
    preds = json.loads(out)["predictions"]
    assert [p["tokens"] for p in preds] == [5e6, 2e7]
    assert preds[0]["ppl"] > preds[1]["ppl"]
    for p in preds:
        assert p["ppl_lo"] < p["ppl"] < p["ppl_hi"]
        code, out, _ = run(["predict", "--law", str(fitted / "law.json"), "--model", "s1m",
                            "--target-ppl", repr(p["ppl"]), "--json"], capsys)
        t = json.loads(out)["target"]
        assert abs(t["tokens"] / p["tokens"] - 1) < 1e-6
        assert t["tokens_lo"] <= t["tokens"] <= t["tokens_hi"]


def test_heldout_table_scores_forms_and_chooses_by_heldout_error():
    table = heldout_table(store_frame(), forms=["kd_gap", "loglinear", "frantar"], draws=0)
    rows = table.set_index("form")
    assert rows.loc["kd_gap", "tokens_points"] == 12 and rows.loc["kd_gap", "size_points"] == 0
    assert rows.loc["loglinear", "size_points"] == 0  # per-size: no leave-one-size-out
    assert "3 sparsity levels" in rows.loc["frantar", "note"]
    # both forms scored on both splits: chosen by the lower held-out loss error
    best = table.dropna(subset=["tokens_are"]).sort_values("tokens_loss_are")["form"].iloc[0]
    assert table.loc[table["chosen"], "form"].tolist() == [best]
    # the data come from a kd_gap law: it must beat the no-floor per-size form
    assert rows.loc["kd_gap", "tokens_loss_are"] < rows.loc["loglinear", "tokens_loss_are"]


def test_predict_target_below_asymptote_says_so(fitted, capsys):
    code, out, _ = run(["predict", "--law", str(fitted / "law.json"), "--model", "s1m",
                        "--target-ppl", "1.5"], capsys)
    assert code == 0
    assert "asymptote" in out and "no budget reaches it" in out


def test_predict_unknown_model_is_one_line_error(fitted, capsys):
    code, _, err = run(["predict", "--law", str(fitted / "law.json"), "--model", "opt-big",
                        "--tokens", "5M"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--model" in err and "s1m" in err


def external(tmp_path, rows) -> str:
    path = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


MAP = ["--n-col", "N", "--d-col", "D", "--loss-col", "L"]


@pytest.mark.parametrize("rows, form, needle", [
    ({"N": [1e6, 2e6, 3e6], "D": [1e6, 2e6, 4e6], "L": [4.0, 3.8, 3.7]}, "chinchilla",
     "5 parameters need at least 7 points, got 3"),
    ({"N": [1e6, 2e6, 3e6, 4e6] * 2, "D": [1e7] * 8, "L": [4, 3.9, 3.8, 3.7] * 2}, "chinchilla",
     "distinct token budgets"),
    ({"N": [1e6] * 4, "D": [1e6, 2e6, 4e6, 8e6], "L": [4.0, np.nan, 3.8, 3.7]}, "loglinear",
     "L: 1 of 4 rows are NaN, zero or negative"),
    ({"N": [1e6] * 4, "D": [1e6, 2e6, 4e6, 8e6], "L": [4.0, -1.0, 3.8, 3.7]}, "loglinear",
     "NaN, zero or negative"),
    ({"N": [1e6] * 4, "D": [1e6, 2e6, 4e6, 8e6], "L": [4.0, 0.0, 3.8, 3.7]}, "loglinear",
     "NaN, zero or negative"),
])
def test_degenerate_tables_exit_2_with_one_line(tmp_path, capsys, rows, form, needle):
    code, _, err = run(["fit-law", external(tmp_path, rows), *MAP, "--form", form], capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


def test_missing_columns_named(tmp_path, capsys):
    path = external(tmp_path, {"N": [1e6], "D": [1e6], "loss": [4.0]})
    code, _, err = run(["fit-law", path, *MAP], capsys)
    assert code == 2 and "missing column(s) L" in err and err.count("\n") == 1
    code, _, err = run(["fit-law", path], capsys)  # store schema expected without a mapping
    assert code == 2 and "missing column(s) method" in err


def test_too_few_draws_refused(tmp_path, capsys):
    path = external(tmp_path, {"N": [1e6] * 4, "D": [1e6, 2e6, 4e6, 8e6], "L": [4, 3.9, 3.8, 3.7]})
    code, _, err = run(["fit-law", path, *MAP, "--draws", "10"], capsys)
    assert code == 2 and "--draws: got 10" in err


def test_empty_store_is_one_line_error(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    code, _, err = run(["fit-law", str(tmp_path / "results")], capsys)
    assert code == 2 and err.count("\n") == 1 and "results" in err


def test_law_json_edited_or_relabelled_is_refused(fitted, tmp_path, capsys):
    law = json.loads((fitted / "law.json").read_text())
    relabelled = {**law, "form": "power_d", "fit": {**law["fit"], "form": "power_d"}}
    (tmp_path / "r.json").write_text(json.dumps(relabelled))
    code, _, err = run(["predict", "--law", str(tmp_path / "r.json"), "--model", "s1m",
                        "--tokens", "5M"], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not match its checksum" in err
    del relabelled["checksum"]  # no checksum: refused (law.json integrity is mandatory)
    (tmp_path / "r.json").write_text(json.dumps(relabelled))
    code, _, err = run(["predict", "--law", str(tmp_path / "r.json"), "--model", "s1m",
                        "--tokens", "5M"], capsys)
    assert code == 2 and err.count("\n") == 1 and "has no checksum" in err
    assert "refit with `castlab fit-law" in err
    relabelled["checksum"] = checksum(relabelled)  # a valid checksum: the schema still holds
    (tmp_path / "r.json").write_text(json.dumps(relabelled))
    code, _, err = run(["predict", "--law", str(tmp_path / "r.json"), "--model", "s1m",
                        "--tokens", "5M"], capsys)
    assert code == 2 and err.count("\n") == 1 and "fit.theta" in err
    unknown = {**relabelled, "fit": {**law["fit"], "form": "cubic"}}
    unknown["checksum"] = checksum(unknown)
    (tmp_path / "r.json").write_text(json.dumps(unknown))
    code, _, err = run(["predict", "--law", str(tmp_path / "r.json"), "--model", "s1m",
                        "--tokens", "5M"], capsys)
    assert code == 2 and "fit.form: got 'cubic', allowed one of power_d" in err


@pytest.mark.parametrize("extra, needle", [
    (["--law", "DIR", "--model", "s1m", "--tokens", "5M"], "is a directory"),
    (["--law", "LAW", "--n", "nan", "--tokens", "5M"], "--n: got nan"),
    (["--law", "LAW", "--n", "inf", "--tokens", "5M"], "--n: got inf"),
    (["--law", "LAW", "--model", "s1m", "--tokens", "1e400"], "--tokens"),
])
def test_predict_bad_arguments_are_one_line_errors(fitted, capsys, extra, needle):
    argv = [{"DIR": str(fitted), "LAW": str(fitted / "law.json")}.get(a, a) for a in extra]
    code, _, err = run(["predict", *argv], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_predict_huge_budget_and_tiny_size_stay_finite(fitted, capsys):
    code, out, _ = run(["predict", "--law", str(fitted / "law.json"), "--n", "1e-3",
                        "--tokens", "1e15", "--json"], capsys)
    assert code == 0
    p = json.loads(out)["predictions"][0]
    assert all(np.isfinite(p[k]) for k in ("ppl", "ppl_lo", "ppl_hi", "loss"))


def test_fit_law_bad_inputs_refused_before_fitting(tmp_path, capsys):
    good = external(tmp_path, {"N": [1e6] * 6, "D": [1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7],
                               "L": [4, 3.9, 3.8, 3.7, 3.65, 3.6]})
    (tmp_path / "afile").write_text("x")
    cases = [
        ([good, *MAP, "--out", str(tmp_path / "afile")], "--out: "),
        ([good, *MAP, "--out", str(tmp_path / "afile" / "sub")], "is a file"),
        ([good, *MAP, "--heldout-draws", "-5"], "--heldout-draws: got -5"),
    ]
    (tmp_path / "empty.csv").write_text("")
    cases.append(([str(tmp_path / "empty.csv"), *MAP], "the table is empty"))
    (tmp_path / "garbage.parquet").write_bytes(b"not a parquet file at all")
    cases.append(([str(tmp_path / "garbage.parquet"), *MAP], "not a readable parquet table"))
    blank = tmp_path / "blank.csv"
    pd.DataFrame({"N": [1e6, 2e6], "D": [1e6, 2e6], "L": [4.0, 3.9],
                  "size": ["a", None]}).to_csv(blank, index=False)
    cases.append(([str(blank), *MAP, "--size-col", "size"], "size: 1 of 2 rows are blank"))
    ppl = external(tmp_path, {"N": [1e6] * 4, "D": [1e6, 2e6, 4e6, 8e6], "L": [90, 80, 75, 72]})
    cases.append(([ppl, *MAP], "pass --loss-is-ppl"))
    for argv, needle in cases:
        code, out, err = run(["fit-law", *argv], capsys)
        assert code == 2 and err.count("\n") == 1 and needle in err, (argv, err)
        assert "Traceback" not in err and "chosen form" not in out


def test_few_points_law_says_plainly_there_is_no_interval(tmp_path, capsys):
    # fit-law refuses fits without 2 residual degrees of freedom, so the law a fit with none
    # would store (sigma NaN) is made from a fitted one; predict must say why there is no band.
    rows = {"N": [1e6] * 5, "D": [1e6, 2e6, 4e6, 8e6, 1.6e7], "L": [4.0, 3.9, 3.82, 3.75, 3.7]}
    path = external(tmp_path, rows)
    code, _, err = run(["fit-law", path, *MAP, "--form", "loglinear", "--out",
                        str(tmp_path / "law"), "--no-plots", "--heldout-draws", "0",
                        "--draws", "100"], capsys)
    assert code == 0, err
    law = json.loads((tmp_path / "law" / "law.json").read_text())
    law["bootstrap"]["sigma"] = float("nan")  # what a fit with no residual dof stores
    law["checksum"] = checksum(law)
    (tmp_path / "nan.json").write_text(json.dumps(law))
    code, out, _ = run(["predict", "--law", str(tmp_path / "nan.json"), "--model",
                        law["fit"]["groups"][0], "--tokens", "64M", "--target-ppl", "40"], capsys)
    assert code == 0
    assert "nan" not in out and "no interval:" in out and "run noise cannot be estimated" in out
    assert "asymptote PPL 1" not in out and "this form has no floor" in out
