"""Many independent fits of one form at once: bootstrap draws and multi-start grids.

Each problem is the fitter's own objective (weighted Huber on ln-loss residuals inside the
form's box bounds); the problems differ only in their point weights and starting parameters, so
all of them advance together in a few vectorised numpy operations per iteration instead of one
scipy L-BFGS-B run (about 50 Python-level objective calls) each.

Written by hand because no kept library minimises a stack of small bounded robust least-squares
problems as one batch (scipy's ``least_squares`` and ``minimize`` take one problem per call; on
a bootstrap draw they cost the same 2-3 ms in per-call overhead). The method is a projected
Levenberg-Marquardt step on the Huber loss: the curvature of the quadratic (inside) residuals,
damped by the iteratively-reweighted curvature of all of them, bounds handled by freezing the
parameters a bound blocks. A problem is converged when its projected gradient is below ``gtol``,
or an accepted step lowered the objective by at most ``ftol`` (relative, as L-BFGS-B's), or no
step can lower it any more; the rest are reported unconverged so callers can fall back to
L-BFGS-B for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import huber

from castlab.law.formbase import Form, Inputs

MAX_ITER = 200
LAMBDA0 = 1.0
MAX_STEP = 0.5  # largest move of one internal (O(1)) parameter per iteration
LAMBDA_MAX = 1e12  # damping this large means no step lowers the objective: a stationary point
BOUND_EPS = 1e-12
MAX_BATCH_ELEMENTS = 1 << 22  # Jacobian entries per batch (32 MiB of float64; a few copies live)


@dataclass
class Batch:
    """Solutions of a stack of fits: parameters (B, p), objectives (B,), converged flags (B,)."""

    theta: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    iterations: int


def _state(form: Form, theta, x: Inputs, y, w, delta):
    """Objective, gradient and the two curvature matrices of each problem at ``theta`` (b, p)."""
    with np.errstate(all="ignore"):
        pred, jac = form.log_loss(theta, x, jac=True)
        r = pred - y
        f = np.einsum("bn,bn->b", w, huber(delta, r))
        bad = ~np.isfinite(f) | ~np.isfinite(jac).all(axis=(1, 2))
        f[bad] = np.inf
        r = np.where(np.isfinite(r), r, 0.0)
        jac = np.where(np.isfinite(jac), jac, 0.0)
        grad = np.matmul((w * np.clip(r, -delta, delta))[:, None, :], jac)[:, 0]
        inside = w * (np.abs(r) <= delta)
        reweight = w * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        jac_t = np.swapaxes(jac, 1, 2)  # batched matmuls: a three-operand einsum was 3x slower
        h_in = np.matmul(jac_t * inside[:, None, :], jac)
        h_rw = np.matmul(jac_t * reweight[:, None, :], jac)
    return f, grad, h_in, h_rw


def solve(form: Form, x: Inputs, y: np.ndarray, w: np.ndarray, theta0: np.ndarray,
          lo: np.ndarray, hi: np.ndarray, delta: float, ftol: float, gtol: float,
          max_iter: int | None = None) -> Batch:
    """Minimise sum_i w[b, i] huber(delta, ln L(theta_b; x_i) - y_i) over the box [lo, hi] for
    every row b of ``w`` (B, n) from ``theta0`` (B, p), in at most ``max_iter`` (default
    ``MAX_ITER``) iterations."""
    max_iter = MAX_ITER if max_iter is None else max_iter
    rows = max(1, MAX_BATCH_ELEMENTS // max(1, w.shape[1] * len(lo)))
    if len(w) > rows:  # bounded memory: a Jacobian stack of (rows, n, p) floats at a time
        parts = [solve(form, x, y, w[k:k + rows], theta0[k:k + rows], lo, hi, delta, ftol, gtol,
                       max_iter) for k in range(0, len(w), rows)]
        return Batch(*(np.concatenate([getattr(b, f) for b in parts])
                       for f in ("theta", "objective", "converged")),
                     max(b.iterations for b in parts))
    theta = np.clip(np.array(theta0, dtype=np.float64), lo, hi)
    b_count, p = theta.shape
    f, grad, h_in, h_rw = _state(form, theta, x, y, w, delta)
    lam = np.full(b_count, LAMBDA0)
    # a start the form cannot evaluate is left unconverged (a NaN parameter can still give
    # finite predictions: loglinear reads a NaN loss as a miss, with a zero gradient)
    done = ~np.isfinite(f) | ~np.isfinite(theta).all(axis=1)
    ok = np.zeros(b_count, bool)
    eye = np.eye(p)
    iterations = 0
    while iterations < max_iter:
        idx = np.flatnonzero(~done)
        if not len(idx):
            break
        iterations += 1
        th, g = theta[idx], grad[idx]
        blocked = ((th <= lo + BOUND_EPS) & (g > 0)) | ((th >= hi - BOUND_EPS) & (g < 0))
        free = ~blocked
        pg = np.where(free, g, 0.0)
        small = np.abs(pg).max(axis=1) <= gtol
        ok[idx[small]] = done[idx[small]] = True
        keep = ~small
        idx, th, pg, free = idx[keep], th[keep], pg[keep], free[keep]
        if not len(idx):
            continue
        damp = h_rw[idx] + np.einsum("bp,pq->bpq", 1e-9 * np.abs(np.diagonal(h_rw[idx], 0, 1, 2))
                                     + 1e-30, eye)
        h = h_in[idx] + lam[idx, None, None] * damp
        pair = free[:, :, None] & free[:, None, :]
        h = np.where(pair, h, eye)  # a blocked parameter stays where it is
        with np.errstate(all="ignore"):
            try:
                step = np.linalg.solve(h, -pg[..., None])[..., 0]
            except np.linalg.LinAlgError:  # an exactly singular system somewhere in the stack
                step = (np.linalg.pinv(h) @ -pg[..., None])[..., 0]
        step = np.where(np.isfinite(step), step, 0.0)
        # a long Newton step from a poor start runs into a corner where the D-term vanishes (a
        # flat, spurious stationary point): moves are capped as a trust region would
        size = np.abs(step).max(axis=1, keepdims=True)
        step = step * np.minimum(1.0, MAX_STEP / np.maximum(size, 1e-300))
        trial = np.clip(th + step, lo, hi)
        f_new, g_new, h_in_new, h_rw_new = _state(form, trial, x, y, w[idx], delta)
        f_old = f[idx]
        better = f_new < f_old
        acc = idx[better]
        theta[acc], f[acc], grad[acc] = trial[better], f_new[better], g_new[better]
        h_in[acc], h_rw[acc] = h_in_new[better], h_rw_new[better]
        drop = f_old[better] - f_new[better]
        # a tiny drop ends the search only after a Newton-like (lightly damped) step
        flat = (drop <= ftol * np.maximum(np.maximum(np.abs(f_old[better]), np.abs(f_new[better])),
                                          1.0)) & (lam[acc] <= 1.0)
        ok[acc[flat]] = done[acc[flat]] = True
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
        rej = idx[~better]
        lam[rej] *= 8.0
        stuck = rej[lam[rej] > LAMBDA_MAX]
        ok[stuck] = done[stuck] = True  # no step lowers it: stationary up to rounding
    return Batch(theta, f, ok & np.isfinite(f) & np.isfinite(theta).all(axis=1), iterations)

