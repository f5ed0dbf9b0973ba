"""Robust fit of a law form: summed Huber loss on ln-loss residuals, L-BFGS-B from a start grid.

The whole start grid is scored in one vectorised numpy pass; the best ``refine`` starts are
refined together by the batched solver (castlab.law.batchfit) and L-BFGS-B (scipy, analytic
gradients, float64) finishes the best ``polish`` of their ends and the best grid start. A fit
whose best start did not converge raises ``FitError`` instead of being reported.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber

from castlab.errors import UserError
from castlab.law.batchfit import solve as solve_batch
from castlab.law.forms import FORMS, Form, Inputs, Scales, on_bounds
from castlab.law.points import Points, check_fittable, scales_for

HUBER_DELTA = 1e-3


class FitError(UserError):
    """The optimiser did not converge: the law is not reported."""


@dataclass
class FitOptions:
    """Optimiser settings (defaults are what the Epoch check and the tests use)."""

    delta: float = HUBER_DELTA
    refine: int = 10  # refinements from the best-scoring grid starts
    # the refinements run together through the batched solver and L-BFGS-B finishes the best
    # ``polish`` of their ends (False: one L-BFGS-B run per start, as before the batch)
    batch_starts: bool = True
    polish: int = 2
    maxiter: int = 5000
    ftol: float = 1e-13
    gtol: float = 1e-9


@dataclass
class Fit:
    """A fitted law: internal parameters per group (one group unless the form is per size)."""

    form: str
    theta: np.ndarray  # (G, p)
    groups: list[str]
    scales: Scales
    objective: float
    converged: bool
    message: str
    n_points: int
    starts: int
    seconds: float
    dense: Fit | None = None  # kd_gap: the dense-kd curve its predictions are relative to
    extra: dict = field(default_factory=dict)  # "on_bound": parameters that ended on a bound

    @property
    def on_bound(self) -> list[str]:
        """Internal parameters (``name@size`` per size) that ended on a bound: not identified."""
        return list(self.extra.get("on_bound", []))

    def params(self, theta: np.ndarray | None = None) -> dict[str, float]:
        """Named public parameters (``name@size`` for per-size forms)."""
        form = FORMS[self.form]
        theta = self.theta if theta is None else theta
        out: dict[str, float] = {}
        for g, label in enumerate(self.groups):
            for k, v in form.public(theta[g], self.scales).items():
                out[k if label == "*" else f"{k}@{label}"] = float(v)
        return out

    def predict_log(self, pts: Points, theta: np.ndarray | None = None,
                    dense_theta: np.ndarray | None = None) -> np.ndarray:
        """Predicted ln L at ``pts``: shape (n,), or (B, n) for stacked thetas of shape (B, G, p).

        Points of a size the per-size form never saw are NaN.
        """
        form = FORMS[self.form]
        theta = self.theta if theta is None else theta
        x = pts.inputs(self.scales)
        if self.dense is not None:  # kd_gap predicts relative to the fitted dense-kd curve
            x.lkd = np.exp(self.dense.predict_log(pts, dense_theta))
        batch = theta.shape[:-2]
        out = np.full(batch + (len(pts),), np.nan)
        for g, _, m, xs in by_group(self.groups, pts, x):
            if not m.any():
                continue
            out[..., m] = form.log_loss(theta[..., g, :], xs)
        return out


def by_group(groups: list[str], pts: Points, x: Inputs):
    """(index, label, mask, inputs) of each parameter group's points: one group '*' of every
    point for a joint form, one per size label for a per-size form."""
    for g, label in enumerate(groups):
        m = np.ones(len(pts), bool) if label == "*" else (pts.size == label)
        yield g, label, m, x.masked(m)


def single_thread_blas():
    """Context limiting BLAS to one thread around the optimiser.

    scipy's L-BFGS-B core calls BLAS on 5-vectors; with OpenBLAS threads on a shared machine each
    call paid thread wake-ups (Epoch fit measured 1.0-4.5 s threaded vs 0.17-0.29 s single).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # still correct, only slower
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _objective(form: Form, x: Inputs, y: np.ndarray, w: np.ndarray, delta: float):
    def fun(theta):
        pred, jac = form.log_loss(theta, x, jac=True)
        r = pred - y
        f = float(np.dot(w, huber(delta, r)))
        if not np.isfinite(f):
            return 1e300, np.zeros_like(theta)
        return f, jac.T @ (w * np.clip(r, -delta, delta))
    return fun


def _converged(res) -> bool:
    # L-BFGS-B also stops with ABNORMAL_TERMINATION_IN_LNSRCH when it sits on the minimum of this
    # nearly piecewise-linear objective; _fit_group re-checks those by restarting from the end point.
    return bool(res.success)


def _fit_group(form: Form, x: Inputs, y: np.ndarray, w: np.ndarray, opt: FitOptions,
               theta0: np.ndarray | None):
    bounds = form.bounds(np.exp(y), x)
    lo, hi = np.array(bounds).T
    if theta0 is None:
        grid = np.clip(form.starts(np.exp(y), x), lo, hi)
        with np.errstate(all="ignore"):
            scores = (w * huber(opt.delta, form.log_loss(grid, x) - y)).sum(axis=1)
        scores[~np.isfinite(scores)] = np.inf
        starts = grid[np.argsort(scores)[: opt.refine]]
        if opt.batch_starts and len(starts) > opt.polish:
            ends = solve_batch(form, x, y, np.repeat(w[None], len(starts), 0), starts, lo, hi,
                               opt.delta, opt.ftol, opt.gtol)
            keep = np.argsort(np.where(np.isfinite(ends.objective), ends.objective, np.inf))
            # the best grid start too: along a flat valley L-BFGS-B from it walked further than
            # from a batch end in 3 of 98 fits (objective 5e-5 - 8e-4 lower)
            starts = np.concatenate([ends.theta[keep[: opt.polish]], starts[:1]])
    else:
        starts, grid = np.clip(theta0, lo, hi)[None], theta0[None]
    fun = _objective(form, x, y, w, opt.delta)
    options = {"maxiter": opt.maxiter, "ftol": opt.ftol, "gtol": opt.gtol}
    best = None
    for s in starts:
        res = minimize(fun, s, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
        if best is None or res.fun < best.fun:
            best = res
    # A line-search stop is accepted only if a fresh L-BFGS-B start from it cannot improve it.
    for _ in range(3):
        if _converged(best):
            break
        again = minimize(fun, best.x, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
        stalled = best.fun - again.fun <= 1e-12 * max(1.0, abs(best.fun))
        best = again if again.fun < best.fun else best
        if stalled:
            best.success = True
            best.message = f"stationary (restart could not improve): {again.message}"
    return best, len(grid)


@dataclass
class Refits:
    """A stack of refits of one fitted law: parameters (B, G, p) per group, the summed objective,
    converged flags, and the dense-kd curve's refits for the twin forms."""

    theta: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    dense: Refits | None = None


def refit_many(fit: Fit, pts: Points, weights: np.ndarray, theta0: np.ndarray,
               options: FitOptions, dense_theta0: np.ndarray | None = None,
               polish: bool = True) -> Refits:
    """Refit ``fit``'s form on ``pts`` once per row of ``weights`` (B, n) from ``theta0``
    (B, G, p), with the fit's scales: all rows at once (castlab.law.batchfit), then L-BFGS-B from
    where the batch stopped for the few it left unconverged (long flat valleys of ill-determined
    parameters; ``polish=False`` leaves them unconverged). A twin form's dense-kd curve is
    refitted on the twins from ``dense_theta0`` and must converge too."""
    form, opt = FORMS[fit.form], options
    x, y = pts.inputs(fit.scales), np.log(pts.loss)
    theta = np.array(theta0, dtype=np.float64)
    objective, ok = np.zeros(len(weights)), np.ones(len(weights), bool)
    for g, _, m, xs in by_group(fit.groups, pts, x):
        lo, hi = np.array(form.bounds(np.exp(y[m]), xs), dtype=np.float64).T
        res = solve_batch(form, xs, y[m], weights[:, m], theta[:, g], lo, hi, opt.delta,
                          opt.ftol, opt.gtol)
        for b in np.flatnonzero(~res.converged & np.isfinite(res.objective) & polish):
            polished, _ = _fit_group(form, xs, y[m], weights[b, m], opt, res.theta[b])
            res.theta[b], res.objective[b] = polished.x, polished.fun
            res.converged[b] = bool(polished.success)
        theta[:, g], objective, ok = res.theta, objective + res.objective, ok & res.converged
    dense = None
    if fit.dense is not None:
        keep = np.isfinite(pts.lkd)
        dense = refit_many(fit.dense, pts.twins(), weights[:, keep], dense_theta0, opt, polish=polish)
        ok &= dense.converged
    return Refits(theta, objective, ok, dense)


def fit_form(form_name: str, pts: Points, weights: np.ndarray | None = None,
             warm: Fit | None = None, scales: Scales | None = None,
             options: FitOptions | None = None) -> Fit:
    """Fit ``form_name`` to ``pts``.

    ``weights`` are per-point multiplicities (a bootstrap draw); ``warm`` is an earlier fit of the
    same form whose parameters, scales and dense curve start a single L-BFGS-B run (no grid), and
    a warm fit that does not converge is returned with ``converged=False`` instead of raising.
    """
    if warm is None:
        with single_thread_blas():
            return _fit_form(form_name, pts, weights, warm, scales, options)
    return _fit_form(form_name, pts, weights, warm, scales, options)


def _fit_form(form_name, pts, weights, warm, scales, options) -> Fit:
    t0 = time.perf_counter()
    form, opt = FORMS[form_name], options or FitOptions()
    theta0 = None if warm is None else warm.theta
    if warm is None:
        check_fittable(form, pts)
    sc = warm.scales if warm is not None else (scales or scales_for(pts))
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, np.float64)
    x, y = pts.inputs(sc), np.log(pts.loss)
    groups = list(dict.fromkeys(pts.size)) if form.per_size else ["*"]
    thetas, total, n_starts, msgs, ok, bound = [], 0.0, 0, [], True, []
    for g, label, m, xs in by_group(groups, pts, x):
        res, k = _fit_group(form, xs, y[m], w[m], opt, None if theta0 is None else theta0[g])
        if warm is None:  # a parameter on its box bound was not identified by the data
            bound += [k_ if label == "*" else f"{k_}@{label}"
                      for k_ in on_bounds(form, res.x, pts.loss[m], xs)]
        thetas.append(res.x)
        total, n_starts = total + float(res.fun), n_starts + k
        ok &= bool(res.success)
        msgs.append(str(res.message))
    dense = None
    if "lkd" in form.needs:
        twins, wt = pts.twins(), w[np.isfinite(pts.lkd)]
        if warm is not None and warm.dense is not None:
            dense = fit_form(warm.dense.form, twins, weights=wt, warm=warm.dense, options=opt)
        else:
            dense = fit_dense_curve(twins, sc, weights=wt, options=opt)
    fit = Fit(form_name, np.array(thetas), [str(g) for g in groups], sc, total, ok,
              "; ".join(dict.fromkeys(msgs)), len(pts), n_starts, time.perf_counter() - t0, dense,
              {"on_bound": bound} if bound else {})
    if not ok and warm is None:
        raise FitError(f"form {form_name}: the optimiser did not converge ({fit.message}); "
                       "no law reported")
    return fit


def fit_dense_curve(twins: Points, sc: Scales, weights=None,
                    options: FitOptions | None = None) -> Fit:
    """The dense-kd curve L_densekd(N, D) the twin forms need: anchored on the teacher where its
    loss is known (two budgets suffice), else chinchilla if identifiable, else per size."""
    # One twin per cast run: the same (size, budget) twin repeats across cast seeds, so the
    # identifiability rules count distinct twins.
    keys = np.array([f"{a}|{b!r}" for a, b in zip(twins.size, twins.d, strict=True)])
    distinct = twins.subset(np.unique(keys, return_index=True)[1])
    for form in ("teacher_mul", "chinchilla", "power_d", "loglinear"):
        try:
            check_fittable(FORMS[form], distinct)
        except UserError:
            continue
        return fit_form(form, twins, weights=weights, scales=sc, options=options)
    raise UserError("too few dense-kd twins to fit the dense-kd curve")


def point_objectives(fit: Fit, pts: Points, delta: float = HUBER_DELTA) -> np.ndarray:
    """Each point's Huber term at ``fit``'s own parameters (no refit), as the fitter scores it
    (the observed dense-kd twin, not the dense curve): weights @ this is a draw's objective."""
    form = FORMS[fit.form]
    x, y = pts.inputs(fit.scales), np.log(pts.loss)
    out = np.zeros(len(pts))
    for g, _, m, xs in by_group(fit.groups, pts, x):
        out[m] = huber(delta, form.log_loss(fit.theta[g], xs) - y[m])
    return out


def objective_at(fit: Fit, pts: Points, weights: np.ndarray, delta: float = HUBER_DELTA) -> float:
    """The weighted Huber objective of ``fit``'s own parameters on ``pts`` (no refit)."""
    return float(np.dot(weights, point_objectives(fit, pts, delta)))


def huber_objective(form_name: str, pts: Points, public: dict[str, float],
                    delta: float = HUBER_DELTA) -> float:
    """The summed Huber objective at published (public) parameter values, e.g. Epoch's."""
    form = FORMS[form_name]
    sc = scales_for(pts)
    theta = form.internal(public, sc)
    return float(huber(delta, form.log_loss(theta, pts.inputs(sc)) - np.log(pts.loss)).sum())
