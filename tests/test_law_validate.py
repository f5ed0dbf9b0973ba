"""Fixed held-out splits, identifiability rules, the unbiased form choice, noise and tau (issue 14)."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from castlab.errors import UserError
from castlab.law.bootstrap import seed_noise
from castlab.law.choose import choose_form
from castlab.law.fit import fit_form
from castlab.law.forms import FORMS
from castlab.law.points import ColumnMap, Points, check_fittable, points_from_frame
from castlab.law.synthetic import synthetic_case, synthetic_points
from castlab.law.validate import calibrate_tau, holdouts, ppl_of_log_loss


def _pts(n, d, loss=None, size=None):
    n, d = np.asarray(n, float), np.asarray(d, float)
    k = len(n)
    return Points(n=n, d=d, loss=np.full(k, 3.0) if loss is None else np.asarray(loss, float),
                  s=np.zeros(k), ldense=np.full(k, 2.5), lkd=np.full(k, 2.9),
                  size=np.array([f"N={v!r}" for v in n] if size is None else size, dtype=object),
                  seed=np.zeros(k, int))


def test_few_budgets_predict_the_top_budget_from_half_and_quarter():
    d = np.tile([1000.0, 2000.0, 4000.0, 8008.0], 4)  # top off by step rounding
    pts = _pts(np.repeat([1e3, 1e4, 1e5, 1e6], 4), d)
    hs = holdouts(pts, "chinchilla")
    assert [h.scheme for h in hs] == ["D/2", "D/4", "size", "size", "size", "size"]
    assert list(hs[0].train(pts)[:4]) == [True, True, True, False]
    assert list(hs[1].train(pts)[:4]) == [True, True, False, False]
    assert list(hs[1].test(pts)[:4]) == [False, False, False, True]
    assert list(hs[2].test(pts)) == [n == 1e3 for n in pts.n]
    assert [h.scheme for h in holdouts(pts, "power_d")] == ["D/2", "D/4"]  # per size
    three = pts.subset(pts.n < 1e6)  # leaving one of 3 sizes out trains on 2: no size split
    assert [h.scheme for h in holdouts(three, "chinchilla")] == ["D/2", "D/4"]


def test_many_budgets_hold_out_the_top_decile():
    d = np.geomspace(1e6, 1e9, 600)
    pts = _pts(np.repeat([1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9, 3e9], 60), np.tile(d, 1))
    hs = holdouts(pts, "chinchilla")
    q = np.quantile(pts.d, 0.9)
    assert len(hs) == 3 and [h.scheme for h in hs] == ["D/2", "D/4", "size"]
    assert hs[0].test(pts).sum() == (pts.d >= q / 1.01).sum()
    assert pts.d[hs[1].train(pts)].max() <= q / 4 * 1.01
    assert set(pts.n[hs[2].test(pts)]) == {3e9}  # 10 sizes: one split, the top decile of N


@pytest.mark.parametrize("form, n, d, needle", [
    ("chinchilla", [1e5, 1e6, 1e7] * 3, [1e6] * 3 + [2e6] * 3 + [2e6] * 3, "3 distinct token budgets"),
    ("chinchilla", [1e5, 1e6] * 6, np.repeat([1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7], 2), "3 model sizes"),
    ("teacher_add", [1e5, 1e6, 1e7] + [1e5], [1e6] * 3 + [2e6], "at least 5 points, got 4"),
    ("dense_gap", [1e5, 1e6, 1e7] * 2, [1e6] * 3 + [2e6] * 3, "3 distinct token budgets"),
])
def test_identifiability_rules(form, n, d, needle):
    with pytest.raises(UserError, match=needle):
        check_fittable(FORMS[form], _pts(n, d))


def test_anchored_forms_need_only_two_budgets():
    pts = _pts([1e5, 1e6, 1e7] * 2, [1e6] * 3 + [2e6] * 3)
    check_fittable(FORMS["teacher_mul"], pts)  # 6 points >= 3 + 2, 2 budgets, 3 sizes: no raise
    with pytest.raises(UserError, match="3 distinct token budgets"):  # a form with its own floor
        check_fittable(FORMS["dense_gap"], pts)


def test_parameter_on_bound_is_reported():
    # power_d on budgets where the loss keeps falling in a straight line in ln D: the floor runs
    # to its lower bound (no saturation in the data).
    d = 1e6 * 2.0 ** np.arange(6)
    pts = _pts([1e6] * 6, d, loss=5.0 - 0.2 * np.log(d / 1e6))
    fit = fit_form("power_d", pts)
    assert fit.on_bound and all("@" in k for k in fit.on_bound)
    good = fit_form("chinchilla", synthetic_case("chinchilla", seeds=1))
    assert good.on_bound == []


def test_calibrate_tau_hand_computed():
    z = norm.ppf(0.95)
    resid = np.array([0.0, 0.01, 0.05, 0.2])
    sd = np.full(4, 0.01)
    dist = np.full(4, 0.5)
    # needed tau per point: sqrt((r/z)^2 - sd^2) / dist where positive
    need = np.sort([0.0, np.sqrt(max(0, (0.01 / z) ** 2 - 1e-4)) / 0.5,
                    np.sqrt((0.05 / z) ** 2 - 1e-4) / 0.5, np.sqrt((0.2 / z) ** 2 - 1e-4) / 0.5])
    # conformal index ceil((n + 1) * 0.9) = 5 > 4: capped at the largest
    assert calibrate_tau(resid, sd, dist, 0.9) == pytest.approx(need[-1], rel=1e-12)
    # level 0.5: z = 0.674, index ceil(3 * 0.5) = 2 -> the larger of the two requirements
    z50 = norm.ppf(0.75)
    assert calibrate_tau(resid[:2], sd[:2], dist[:2], 0.5) == pytest.approx(
        np.sqrt((0.01 / z50) ** 2 - 1e-4) / 0.5, rel=1e-12)
    assert calibrate_tau([], [], []) == 0.0


def _pred(rows):
    df = pd.DataFrame(rows, columns=["form", "scheme", "split", "rel_err", "loss_rel_err"])
    return df.assign(are=df["rel_err"].abs())


def test_choose_form_compares_only_on_splits_every_candidate_fitted():
    rows = [("a", "D/2", "s2", 0.01, 0.002), ("a", "D/4", "s4", 0.08, 0.02),
            ("b", "D/2", "s2", 0.02, 0.004), ("b", "D/4", "s4", np.nan, np.nan)]
    # b did not fit D/4: compared on D/2 alone, where b is worse than a
    assert choose_form(_pred(rows), ["a", "b"]) == ("a", ["s2"])
    rows[0] = ("a", "D/2", "s2", 0.03, 0.006)
    assert choose_form(_pred(rows), ["a", "b"]) == ("b", ["s2"])  # a's bad D/4 does not count
    assert choose_form(_pred(rows), ["a", "b"], unidentified=["b"])[0] == "a"
    with pytest.raises(UserError, match="no form could be validated"):
        choose_form(_pred(rows), ["b"], unidentified=["b"])


def test_noise_from_deduplicated_seeds_else_rms_with_dof():
    pts = synthetic_case("chinchilla", seeds=1, noise=0.01)
    fit = fit_form("chinchilla", pts)
    sigma, source = seed_noise(fit, pts)
    r = np.log(pts.loss) - fit.predict_log(pts)
    assert source == "residuals"
    assert sigma == pytest.approx(np.sqrt((r**2).sum() / (len(pts) - 5)), rel=1e-12)
    doubled = pts.subset(np.r_[np.arange(len(pts)), np.arange(len(pts))])  # every row twice
    assert seed_noise(fit, doubled) == (pytest.approx(np.sqrt((r**2).sum() * 2 / (2 * len(pts) - 5))),
                                        "residuals")


def test_external_sizes_are_told_apart_by_exact_n():
    df = pd.DataFrame({"N": [1000001.0, 1000002.0], "D": [1e6, 1e6], "L": [3.0, 3.1]})
    pts = points_from_frame(df, columns=ColumnMap("N", "D", "L"))
    assert len(set(pts.size)) == 2


def test_kd_twin_is_the_seed_mean():
    common = {"model": "m", "params_non_embedding": 1e6, "tokens": 1000, "status": "ok"}
    rows = pd.DataFrame([{**common, "method": "cast", "seed": 1, "eval_loss": 3.0},
                         {**common, "method": "cast", "seed": 2, "eval_loss": 3.2},
                         {**common, "method": "dense-kd", "seed": 0, "eval_loss": 2.8},
                         {**common, "method": "dense-kd", "seed": 1, "eval_loss": 2.9}])
    pts = points_from_frame(rows, "cast")
    assert list(pts.lkd) == [pytest.approx(2.85)] * 2


def test_ppl_of_log_loss_never_overflows():
    with np.errstate(all="raise"):
        v = ppl_of_log_loss(np.array([1e6, -1e6, 1.0]))
    assert np.isfinite(v).all() and v[2] == pytest.approx(np.exp(np.e))


def test_synthetic_points_twins_for_kd_ratio():
    pts = synthetic_points("kd_ratio", {"C": 200.0, "gamma": 0.1, "beta": 0.4}, {"a": 1e6},
                           (1e6, 2e6), noise=0.0)
    assert np.isfinite(pts.lkd).all() and (pts.loss > pts.lkd).all()
