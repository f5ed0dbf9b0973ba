"""Synthetic calibration of the prediction intervals (castlab.law.calibration, issue 14)."""

import pytest

from castlab.law.calibration import coverage


def test_intervals_cover_new_runs_small_harness():
    # 12 replicates x 2 splits x 4 held-out runs = 96 runs, 40 draws: fast, so the band is wide
    # (the 100-replicate version below holds the 88-92%).
    c = coverage(replicates=12, draws=40)
    assert c["all"]["runs"] == 96 and c["skipped"] == 0
    assert 0.8 <= c["all"]["coverage"] <= 0.98, c
    assert c["D/4"]["mean_abs_err"] < 0.03


@pytest.mark.slow
def test_intervals_cover_90pct_of_new_runs_over_100_replicates():
    c = coverage(replicates=100, draws=100)
    assert c["all"]["runs"] == 800
    assert 0.88 <= c["all"]["coverage"] <= 0.92, c
