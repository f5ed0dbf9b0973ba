"""The schedule-aware form (castlab.law.annealing, issue 22): learning-rate areas by hand, the areas
castlab's curves give each checkpoint, and what fit-law and predict do with the form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from castlab.cli import main
from castlab.errors import UserError
from castlab.law.annealing import ANNEAL_DECAY, areas_at, lr_areas
from castlab.law.curves import with_curves
from castlab.law.points import points_from_frame, read_table
from castlab.law.predict import Law

LONG = Path(__file__).resolve().parents[1] / "results" / "reference" / "opt600k_long"
QUICK = ["--draws", "100", "--heldout-draws", "20", "--no-plots"]


def test_lr_areas_by_hand():
    # warm-up 0.5 -> peak 1 (no annealing while climbing), hold, then drops of 0.5 and 0.25
    s1, s2 = lr_areas([0.5, 1.0, 1.0, 0.5, 0.25])
    np.testing.assert_allclose(s1, [0.5, 1.5, 2.5, 3.0, 3.25])
    m3, m4 = 0.5, ANNEAL_DECAY * 0.5 + 0.25  # momentum of the drops, decaying per step
    np.testing.assert_allclose(s2, [0.0, 0.0, 0.0, m3, m3 + m4])


def test_areas_at_interpolates_steps_the_log_skipped():
    # warm-up to the peak at step 11, linear decay to step 101: both kinks on logged steps
    full = np.concatenate([np.linspace(0.1, 1.0, 11), np.linspace(1.0, 0.1, 91)[1:]])
    steps = np.arange(1, len(full) + 1)
    every_other = steps[::2]  # linear pieces: interpolation restores the skipped steps exactly
    s1, s2 = areas_at(every_other, full[::2], np.array([5, 50, 101]))
    w1, w2 = lr_areas(full)
    np.testing.assert_allclose(s1, w1[[4, 49, 100]], rtol=1e-12)
    np.testing.assert_allclose(s2, w2[[4, 49, 100]], rtol=1e-12)


@pytest.fixture()
def long_store(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(LONG, store, ignore=shutil.ignore_patterns("*.png", "*.md"))
    return store


def test_every_row_of_a_curve_carries_the_areas_of_its_own_schedule(long_store):
    rows = with_curves(long_store, read_table(long_store), "cast")
    cast = rows[rows["method"] == "cast"]
    assert cast["lr_area"].notna().all() and cast["lr_anneal_area"].notna().all()
    for run_id, group in cast.groupby("run_id"):
        curve = pd.read_parquet(long_store / run_id / "curve.parquet")
        s1, s2 = lr_areas(curve.sort_values("step")["lr"].to_numpy())
        steps = curve.set_index("tokens")["step"]
        for _, row in group.iterrows():
            k = int(steps[row["tokens"]]) - 1 if row["tokens"] in steps.index else len(s1) - 1
            assert row["lr_area"] == pytest.approx(s1[k], rel=1e-12)
            assert row["lr_anneal_area"] == pytest.approx(s2[k], rel=1e-12, abs=1e-15)
    pts = points_from_frame(rows, "cast")
    assert pts.s1 is not None and (np.diff(pts.s1[np.argsort(pts.d)]) >= 0).all()


def test_fit_law_fits_the_schedule_form_for_checkpoints_only(long_store, tmp_path, capsys):
    assert main(["fit-law", str(long_store), "--curves", "--predict-for", "checkpoints",
                 "--out", str(tmp_path / "law"), *QUICK]) == 0
    out = capsys.readouterr().out
    assert "predicting new checkpoints" in out and "chosen form: lr_anneal" in out
    assert "power_d     | not chosen: cannot predict new checkpoints" in out
    law = json.loads((tmp_path / "law" / "law.json").read_text())
    assert law["form"] == "lr_anneal" and law["predict_for"] == ["checkpoints"]
    assert {"L0@opt-600k", "A@opt-600k", "alpha@opt-600k", "C@opt-600k"} <= set(law["params"])
    # the lr-area scale a0 travels with the law: A and C read back as they were fitted
    loaded = Law.load(tmp_path / "law" / "law.json")
    assert loaded.fit.scales.a0 != 1.0
    for name, value in loaded.fit.params().items():
        assert value == pytest.approx(law["params"][name]["value"], rel=1e-12), name
    # a budget alone has no lr areas: predict refuses and names the forms that can
    assert main(["predict", "--law", str(tmp_path / "law" / "law.json"), "--model", "opt-600k",
                 "--tokens", "1M"]) == 2
    err = capsys.readouterr().err
    assert "form lr_anneal predicts checkpoints along a run's learning-rate schedule" in err
    assert "forms that can: power_d" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--curves", "--form", "lr_anneal"], "--form lr_anneal: predicts checkpoints along a run's "
                                           "known learning-rate schedule only"),
    (["--predict-for", "checkpoints"], "form lr_anneal: needs the learning-rate areas of every "
                                       "point: fit a castlab store with --curves"),
    (["--curves", "--predict-for", "checkpoints,budgets"], "checkpoints (along a run's known lr "
                                                          "schedule, form lr_anneal) cannot be "
                                                          "combined"),
])
def test_schedule_form_refusals_name_the_cause(long_store, tmp_path, capsys, argv, message):
    assert main(["fit-law", str(long_store), *argv, "--out", str(tmp_path / "x"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_curves_of_untrusted_rows_are_found_by_plain_run_id_and_read_bounded(long_store,
                                                                              monkeypatch):
    import castlab.law.curves as curves

    rows = read_table(long_store)
    cast = rows.index[rows["method"] == "cast"]
    # a run id that is a path, pointing at a real curve outside the store: not followed
    outside = long_store.parent / "outside"
    shutil.copytree(long_store / rows.loc[cast[0], "run_id"], outside)
    odd = rows.copy()
    odd.loc[cast[0], "run_id"] = "../outside"
    got = with_curves(long_store, odd, "cast")
    assert (got["run_id"] == "../outside").sum() == 1  # its row alone, no checkpoints
    assert np.isnan(got.loc[got["run_id"] == "../outside", "lr_area"]).all()
    # a curve over the size bound, and a damaged one: one line naming the file
    monkeypatch.setattr(curves, "MAX_CURVE_BYTES", 100)
    with pytest.raises(UserError, match=r"--curves: .*curve.parquet is [\d,]+ bytes, allowed at "
                                        r"most 100"):
        with_curves(long_store, rows, "cast")
    monkeypatch.setattr(curves, "MAX_CURVE_BYTES", 256 * 2**20)
    (long_store / rows.loc[cast[1], "run_id"] / "curve.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(UserError, match=r"--curves: .*curve.parquet: not a readable parquet"):
        with_curves(long_store, rows, "cast")
