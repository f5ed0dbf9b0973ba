"""Law forms and the fitter: gradients, parametrisation, synthetic recovery, held-out prediction."""

import numpy as np
import pytest

from castlab.law.fit import fit_form
from castlab.law.forms import FORMS, Inputs, Scales
from castlab.law.points import scales_for
from castlab.law.synthetic import BUDGETS, CASES, synthetic_case

RNG = np.random.default_rng(0)
X = Inputs(logn=RNG.normal(0, 1, 12), logd=RNG.normal(0, 1.5, 12), s=RNG.uniform(0, 0.9, 12),
           ldense=RNG.uniform(3, 4, 12), lkd=RNG.uniform(3, 4, 12),
           s1=RNG.uniform(0.2, 3, 12), s2=RNG.uniform(0, 0.5, 12))
LOSS = np.full(12, 3.5)


def _inside(form):
    lo, hi = np.array(form.bounds(LOSS, X)).T
    return np.clip(form.starts(LOSS, X)[len(form.starts(LOSS, X)) // 3], lo + 1e-3, hi - 1e-3)


@pytest.mark.parametrize("name", list(FORMS))
def test_analytic_jacobian_matches_finite_differences(name):
    form = FORMS[name]
    theta = _inside(form)
    _, jac = form.log_loss(theta, X, jac=True)
    num = np.empty_like(jac)
    for j in range(len(theta)):
        e = np.zeros_like(theta)
        e[j] = 1e-6
        num[:, j] = (form.log_loss(theta + e, X) - form.log_loss(theta - e, X)) / 2e-6
    np.testing.assert_allclose(jac, num, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", list(FORMS))
def test_stacked_thetas_match_single_evaluations(name):
    form = FORMS[name]
    grid = form.starts(LOSS, X)[:5]
    stacked = form.log_loss(grid, X)
    assert stacked.shape == (5, 12)
    for k in range(5):
        np.testing.assert_allclose(stacked[k], form.log_loss(grid[k], X), rtol=1e-12)


@pytest.mark.parametrize("name", list(FORMS))
def test_public_internal_round_trip(name):
    form, sc = FORMS[name], Scales(3.7e6, 2.2e8)
    theta = _inside(form)
    np.testing.assert_allclose(form.internal(form.public(theta, sc), sc), theta, rtol=1e-10,
                               atol=1e-10)


def test_chinchilla_and_frantar_match_their_formulas_by_hand():
    n, d, s = np.array([3e8]), np.array([6e9]), np.array([0.5])
    sc = Scales(1e8, 1e9)
    x = Inputs(np.log(n / sc.n0), np.log(d / sc.d0), s, n * np.nan, n * np.nan)
    ch = {"E": 1.8, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.28}
    want = 1.8 + 400 / 3e8**0.34 + 1500 / 6e9**0.28
    got = FORMS["chinchilla"].log_loss(FORMS["chinchilla"].internal(ch, sc), x)
    np.testing.assert_allclose(np.exp(got), want, rtol=1e-12)
    fr = {"a_S": 300.0, "b_S": 1.5, "c_S": 100.0, "b_N": 0.4, "a_D": 2e5, "b_D": 0.4, "c": 1.6}
    want = (300 * 0.5**1.5 + 100) * (1 / 3e8) ** 0.4 + (2e5 / 6e9) ** 0.4 + 1.6
    got = FORMS["frantar"].log_loss(FORMS["frantar"].internal(fr, sc), x)
    np.testing.assert_allclose(np.exp(got), want, rtol=1e-12)


# Recovery from 0.5% multiplicative noise, 4 sizes x 12 budgets (1e6..2e9) x 3 seeds.
# Tolerances: ("abs", t) absolute, ("rel", t) relative. They sit ~1.5-2x above the largest error
# seen over 6 noise seeds. Scale constants (A, B, C) are loose because they are the term's value
# at the data's centre times D0^beta (or N0^gamma): a 0.05 error in beta moves B by e^(0.05*18).
TOL = {
    "chinchilla": {"E": ("rel", 0.05), "A": ("rel", 0.2), "B": ("rel", 0.12),
                   "alpha": ("abs", 0.02), "beta": ("abs", 0.01)},
    "power_d": {"L_inf": ("rel", 0.015), "B": ("rel", 2.0), "beta": ("abs", 0.1)},
    "loglinear": {"a": ("rel", 0.02), "b": ("abs", 0.01)},
    "dense_gap": {"G_inf": ("abs", 0.02), "C": ("rel", 1.0), "gamma": ("abs", 0.03),
                  "beta": ("abs", 0.07)},
    "kd_gap": {"G_inf": ("abs", 0.005), "C": ("rel", 0.6), "gamma": ("abs", 0.03),
               "beta": ("abs", 0.03)},
    "frantar": {"a_S": ("rel", 0.12), "b_S": ("abs", 0.03), "c_S": ("rel", 0.07),
                "b_N": ("abs", 0.01), "a_D": ("rel", 0.13), "b_D": ("abs", 0.02), "c": ("rel", 0.01)},
    # the floor-anchored joint forms (issue 14): one shared (gamma, beta), no free floor
    "teacher_add": {"C": ("rel", 0.6), "gamma": ("abs", 0.03), "beta": ("abs", 0.03)},
    "teacher_mul": {"C": ("rel", 0.6), "gamma": ("abs", 0.03), "beta": ("abs", 0.03)},
    "kd_ratio": {"C": ("rel", 0.6), "gamma": ("abs", 0.03), "beta": ("abs", 0.03)},
    # the schedule-aware form: each run ends on a cosine schedule (largest errors over 6 seeds:
    # L0 7%, A 15%, alpha 0.014, C 45%; C is the annealing term, known only from the short runs)
    "lr_anneal": {"L0": ("rel", 0.15), "A": ("rel", 0.3), "alpha": ("abs", 0.03),
                  "C": ("rel", 0.9)},
}
WIDE = tuple(1e6 * 2.0**k for k in range(12))


@pytest.mark.parametrize("name", list(FORMS))
def test_synthetic_recovery_within_stated_tolerances(name):
    pts = synthetic_case(name, rng_seed=0, seeds=3, budgets=WIDE)
    fit = fit_form(name, pts)
    assert fit.converged
    got = fit.params()
    for key, true in CASES[name]["public"].items():
        kind, tol = TOL[name][key.split("@")[0]]
        err = abs(got[key] - true) if kind == "abs" else abs(got[key] / true - 1)
        assert err <= tol, f"{name} {key}: fitted {got[key]:.5g}, true {true:.5g}"


@pytest.mark.parametrize("name", list(FORMS))
def test_heldout_budgets_predicted_within_one_percent(name):
    # Fit on budgets 1M..512M (10 budgets x 4 sizes x 3 seeds, 0.5% noise), predict 1G and 2G
    # tokens (2x and 4x beyond): PPL against the noiseless law, mean error under 1% and no point
    # off by 2%. kd_gap also extrapolates its fitted dense-kd curve. Over 6 noise seeds the mean
    # error ranged 0.1-0.8% for the cross-size forms and 0.5-1.3% for the per-size ones.
    pts = synthetic_case(name, rng_seed=0, seeds=3, budgets=WIDE)
    truth = synthetic_case(name, noise=0.0, seeds=3, budgets=WIDE)
    train = pts.d <= WIDE[9]
    fit = fit_form(name, pts.subset(train))
    test = truth.subset(~train)
    pred_ppl, true_ppl = np.exp(np.exp(fit.predict_log(test))), np.exp(test.loss)
    are = np.abs(pred_ppl / true_ppl - 1)
    assert are.mean() < 0.01, f"{name}: mean held-out PPL error {are.mean():.4f}"
    assert are.max() < 0.02, f"{name}: max held-out PPL error {are.max():.4f}"


def test_anchored_forms_match_their_formulas_by_hand():
    sc = Scales(2.0e6, 5.0e7)
    x = Inputs(np.log(np.array([1e5, 3e6]) / sc.n0), np.log(np.array([2e6, 8e8]) / sc.d0),
               np.zeros(2), np.array([4.0, 3.2]), np.array([4.1, 3.3]))
    v = {"C": 500.0, "gamma": 0.25, "beta": 0.45}
    t = 500.0 * np.array([1e5, 3e6]) ** -0.25 * np.array([2e6, 8e8]) ** -0.45
    for name, want in (("teacher_add", x.ldense + t), ("teacher_mul", x.ldense * (1 + t)),
                       ("kd_ratio", x.lkd * (1 + t))):
        got = np.exp(FORMS[name].log_loss(FORMS[name].internal(v, sc), x))
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)


def test_rescaling_is_geometric_mean():
    pts = synthetic_case("chinchilla", seeds=1)
    sc = scales_for(pts)
    assert sc.n0 == pytest.approx(np.prod(np.unique(pts.n)) ** (1 / 4), rel=1e-12)
    assert sc.d0 == pytest.approx(np.prod(BUDGETS) ** (1 / 8), rel=1e-12)
