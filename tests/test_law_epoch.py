"""The external check: Epoch AI's refit of the Chinchilla data (tests/data/README.md)."""

import time

import numpy as np
from scipy.special import huber

from castlab.law.epoch import EPOCH_INTERVALS, EPOCH_PARAMS, epoch_points
from castlab.law.fit import fit_form, huber_objective


def test_epoch_points_follow_their_procedure():
    pts = epoch_points()
    assert len(pts) == 240  # 245 digitised points minus the 5 highest losses
    np.testing.assert_allclose(pts.d * 6 * pts.n, epoch_points().d * 6 * pts.n)
    assert pts.loss.max() < 5.0  # the dropped outliers were the ~5.0 losses


def test_objective_at_epoch_params_matches_direct_formula():
    pts = epoch_points()
    p = EPOCH_PARAMS
    pred = np.log(p["E"] + p["A"] / pts.n ** p["alpha"] + p["B"] / pts.d ** p["beta"])
    want = huber(1e-3, pred - np.log(pts.loss)).sum()
    assert huber_objective("chinchilla", pts, EPOCH_PARAMS) == pytest_approx(want)


def pytest_approx(v):
    import pytest

    return pytest.approx(v, rel=1e-10)


def test_chinchilla_fit_lands_in_epoch_intervals_faster_and_no_worse():
    pts = epoch_points()
    t0 = time.perf_counter()
    fit = fit_form("chinchilla", pts)
    seconds = time.perf_counter() - t0
    params = fit.params()
    for k, (lo, hi) in EPOCH_INTERVALS.items():
        assert lo <= params[k] <= hi, f"{k} = {params[k]} outside Epoch's [{lo}, {hi}]"
    assert fit.converged
    assert fit.objective <= huber_objective("chinchilla", pts, EPOCH_PARAMS)
    assert seconds <= 2.8, f"Epoch fit took {seconds:.2f} s"
