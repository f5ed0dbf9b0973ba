"""castlab.law.batchfit: many fits at once reach what one L-BFGS-B run per fit reaches, inside
the bounds, and say when they did not settle; the vectorised bootstrap resampling keeps every
stratum's count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from castlab.law import batchfit
from castlab.law.bootstrap import bootstrap, draw_weights, resample_plan
from castlab.law.fit import HUBER_DELTA, FitOptions, _objective, fit_form, refit_many
from castlab.law.forms import FORMS
from castlab.law.points import Points
from castlab.law.synthetic import synthetic_case

TIGHT = {"ftol": 1e-10, "gtol": 1e-7}  # the bootstrap's stopping rule (BOOT_OPTIONS)


def _problem(form_name: str, draws: int, seed: int = 0):
    pts = synthetic_case(form_name, noise=0.01, rng_seed=seed, seeds=1)
    fit = fit_form(form_name, pts)
    rng = np.random.default_rng(seed)
    w = draw_weights(resample_plan(pts, FORMS[form_name].per_size), rng, draws)
    return pts, fit, w, rng


def _lbfgsb(form, x, y, w, start, lo, hi):
    res = minimize(_objective(form, x, y, w, HUBER_DELTA), start, jac=True, method="L-BFGS-B",
                   bounds=list(zip(lo, hi, strict=True)),
                   options={"maxiter": 5000, **TIGHT})
    return res.fun


def test_batch_reaches_the_lbfgsb_optimum_of_every_draw_from_the_fitted_start():
    pts, fit, w, _ = _problem("chinchilla", 40)
    form = FORMS["chinchilla"]
    x, y = pts.inputs(fit.scales), np.log(pts.loss)
    lo, hi = np.array(form.bounds(pts.loss, x)).T
    start = np.repeat(fit.theta, len(w), 0)
    got = batchfit.solve(form, x, y, w, start, lo, hi, HUBER_DELTA, **TIGHT)
    assert got.converged.mean() >= 0.9
    want = np.array([_lbfgsb(form, x, y, w[b], start[b], lo, hi) for b in range(len(w))])
    ok = got.converged
    # never worse than one L-BFGS-B run per draw (to rounding); the objective is its own
    assert (got.objective[ok] <= want[ok] * (1 + 1e-5) + 1e-15).all()
    direct = [float(np.dot(w[b], _huber_terms(form, got.theta[b], x, y))) for b in range(len(w))]
    np.testing.assert_allclose(got.objective, direct, rtol=1e-12)


def _huber_terms(form, theta, x, y):
    from scipy.special import huber

    return huber(HUBER_DELTA, form.log_loss(theta, x) - y)


def test_batch_stays_inside_the_bounds_and_holds_a_blocked_parameter_there():
    pts, fit, w, rng = _problem("power_d", 20, seed=4)
    form = FORMS["power_d"]
    m = pts.size == fit.groups[0]
    x, y = pts.subset(m).inputs(fit.scales), np.log(pts.loss[m])
    lo, hi = np.array(form.bounds(pts.loss[m], x)).T
    wild = fit.theta[0] + rng.normal(0, 3.0, (len(w), 3))  # many starts outside the box
    got = batchfit.solve(form, x, y, w[:, m], wild, lo, hi, HUBER_DELTA, **TIGHT)
    assert ((got.theta >= lo) & (got.theta <= hi)).all()
    floor = lo.copy()
    floor[2] = 1.5 * fit.theta[0, 2]  # beta's optimum lies below this bound: it stops on it
    start = np.clip(fit.theta[0] + rng.normal(0, 0.1, (len(w), 3)), floor, hi)
    ones = np.ones((len(w), int(m.sum())))  # the full data: the constrained optimum is known
    held = batchfit.solve(form, x, y, ones, start, floor, hi, HUBER_DELTA, **TIGHT)
    ok = held.converged
    assert ok.mean() >= 0.75
    assert np.allclose(held.theta[ok, 2], floor[2])
    want = np.array([_lbfgsb(form, x, y, ones[b], start[b], floor, hi) for b in range(len(w))])
    assert (held.objective[ok] <= want[ok] * (1 + 1e-5) + 1e-15).all()


def test_a_start_the_form_cannot_evaluate_is_left_unconverged():
    pts, fit, w, _ = _problem("loglinear", 3, seed=2)
    form = FORMS["loglinear"]
    m = pts.size == fit.groups[0]
    x, y = pts.subset(m).inputs(fit.scales), np.log(pts.loss[m])
    lo, hi = np.array([-np.inf, -np.inf]), np.array([np.inf, np.inf])
    start = np.repeat(fit.theta[0][None], 3, 0)
    start[1] = [np.nan, 0.0]
    got = batchfit.solve(form, x, y, w[:, m], start, lo, hi, HUBER_DELTA, **TIGHT)
    assert got.converged.tolist() == [True, False, True]


def test_refit_many_polishes_what_the_batch_leaves_and_matches_per_draw_fits(monkeypatch):
    # two batch iterations settle almost nothing: L-BFGS-B finishes from where the batch stopped
    pts, fit, w, _ = _problem("power_d", 12, seed=1)
    monkeypatch.setattr(batchfit, "MAX_ITER", 2)
    opt = FitOptions()  # the fitter's tight stopping rule: both ends sit on the same optimum
    starts = np.repeat(fit.theta[None], len(w), 0)
    got = refit_many(fit, pts, w, starts, opt)
    unpolished = refit_many(fit, pts, w, starts, opt, polish=False)
    assert got.converged.all() and not unpolished.converged.all()
    for b in range(len(w)):
        one = fit_form("power_d", pts, weights=w[b], warm=fit, options=opt)
        assert got.objective[b] <= one.objective * (1 + 1e-5) + 1e-15


def test_vectorised_draws_keep_each_strata_count_and_runs_whole():
    pts = synthetic_case("chinchilla", seeds=2)
    pts = Points(**{**pts.__dict__, "run": np.array([f"{s}-{d}" for s, d in
                                                     zip(pts.size, pts.seed, strict=True)])})
    plan = resample_plan(pts, per_size=False)
    w = draw_weights(plan, np.random.default_rng(3), 500)
    for label in set(pts.size):
        m = pts.size == label
        assert (w[:, m].sum(axis=1) == m.sum()).all()  # as many runs as the size has
    for run in set(pts.run):  # the points of one run always move together
        m = pts.run == run
        assert (w[:, m] == w[:, m][:, :1]).all()
    # each run is drawn with probability 1/k per slot: mean multiplicity 1
    assert abs(w.mean() - 1.0) < 0.03


def test_batched_bootstrap_gives_the_intervals_of_per_draw_lbfgsb_refits():
    # the same draws and starts (one seed), refitted by the batch or by L-BFGS-B one at a time:
    # the parameter quantiles and the predicted-loss intervals agree
    pts, fit, _, _ = _problem("chinchilla", 1, seed=7)
    batched = bootstrap(fit, pts, draws=200, seed=11)
    single = bootstrap(fit, pts, draws=200, seed=11, batched=False)
    assert batched.failed == single.failed == 0 and batched.thetas.shape == (200, 1, 5)
    q = [0.25, 0.5, 0.75]  # parameter tails move with a few draws in flat directions;
    for j in range(5):  # the predictions' 5-95% band is compared below
        a, b = batched.thetas[:, 0, j], single.thetas[:, 0, j]
        np.testing.assert_allclose(np.quantile(a, q), np.quantile(b, q), atol=0.1 * b.std())
    far = pts.subset(pts.d == pts.d.max())
    far.d = far.d * 4  # a budget beyond the data
    lo_b, hi_b = np.quantile(fit.predict_log(far, batched.thetas), [0.05, 0.95], axis=0)
    lo_s, hi_s = np.quantile(fit.predict_log(far, single.thetas), [0.05, 0.95], axis=0)
    np.testing.assert_allclose(np.exp(lo_b), np.exp(lo_s), rtol=2e-3)
    np.testing.assert_allclose(np.exp(hi_b), np.exp(hi_s), rtol=2e-3)


@pytest.mark.parametrize("name", list(FORMS))
def test_batched_start_grid_reaches_the_per_start_lbfgsb_optimum(name):
    # the cold fit's refinements run together and L-BFGS-B finishes the best ends (fit.py): on
    # every synthetic study the objective is the one of an L-BFGS-B run from each start, or lower
    pts = synthetic_case(name, noise=0.01, rng_seed=5)
    batched = fit_form(name, pts)
    single = fit_form(name, pts, options=FitOptions(batch_starts=False))
    assert batched.converged and batched.objective <= single.objective * (1 + 1e-6) + 1e-15
    y, y_single = batched.predict_log(pts), single.predict_log(pts)
    assert np.abs(np.exp(y) / np.exp(y_single) - 1).max() < 1e-4  # the same law, in loss


def test_a_batch_larger_than_the_memory_bound_is_solved_in_pieces_with_the_same_result(
        monkeypatch):
    pts, fit, w, _ = _problem("chinchilla", 30, seed=3)
    form = FORMS["chinchilla"]
    x, y = pts.inputs(fit.scales), np.log(pts.loss)
    lo, hi = np.array(form.bounds(pts.loss, x)).T
    start = np.repeat(fit.theta, len(w), 0)
    whole = batchfit.solve(form, x, y, w, start, lo, hi, HUBER_DELTA, **TIGHT)
    monkeypatch.setattr(batchfit, "MAX_BATCH_ELEMENTS", 7 * len(pts) * 5)  # 7 rows a piece
    pieces = batchfit.solve(form, x, y, w, start, lo, hi, HUBER_DELTA, **TIGHT)
    np.testing.assert_array_equal(pieces.converged, whole.converged)
    np.testing.assert_allclose(pieces.theta, whole.theta, rtol=1e-12, atol=1e-12)
