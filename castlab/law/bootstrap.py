"""Uncertainty: bootstrap over runs, a seed-noise term, and prediction / parameter intervals.

A draw resamples runs with replacement within each model size (so every size stays present) and
refits from the full-data optimum; it is expressed as per-run multiplicities, so no data is
copied. Prediction intervals add the run-to-run noise of one new run: the pooled spread of ln L
across seeds where runs were repeated, otherwise the robust spread of the fit's residuals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from castlab.law.fit import Fit, FitOptions, fit_form, single_thread_blas
from castlab.law.points import Points

DEFAULT_DRAWS = 1000
DEFAULT_LEVEL = 0.9
# Draws start at the optimum of nearby data, so looser stopping suffices: on the bench's 60 runs
# intervals matched the tight settings to 4 digits at 0.75x the time.
BOOT_OPTIONS = FitOptions(ftol=1e-10, gtol=1e-7)


@dataclass
class Bootstrap:
    """Converged bootstrap refits and the noise term."""

    thetas: np.ndarray  # (B, G, p)
    dense_thetas: np.ndarray | None  # (B, G', p') for kd_gap
    draws: int
    failed: int
    seed: int
    seconds: float
    sigma: float  # sd of ln L of one run around the law
    noise_source: str  # 'seeds' or 'residuals'


def resample_weights(pts: Points, rng: np.random.Generator) -> np.ndarray:
    """Multiplicity of each run in one bootstrap draw, resampled within each size."""
    w = np.zeros(len(pts))
    for label in dict.fromkeys(pts.size):
        idx = np.flatnonzero(pts.size == label)
        np.add.at(w, rng.choice(idx, size=len(idx), replace=True), 1.0)
    return w


def seed_noise(fit: Fit, pts: Points) -> tuple[float, str]:
    """Sd of ln L of a single run: pooled over repeated seeds, else 1.4826 * MAD of residuals;
    NaN when neither exists (no repeated seeds and no more runs than fitted parameters)."""
    keys = np.array([f"{a}|{b:.6g}|{c:.6g}" for a, b, c in zip(pts.size, pts.d, pts.s, strict=True)])
    ss, dof = 0.0, 0
    for k in np.unique(keys):
        y = np.log(pts.loss[keys == k])
        if len(y) >= 2:
            ss, dof = ss + float(((y - y.mean()) ** 2).sum()), dof + len(y) - 1
    if dof > 0:
        return float(np.sqrt(ss / dof)), "seeds"
    if len(pts) <= fit.theta.size:  # an exactly determined fit leaves zero residuals
        return float("nan"), "none: no repeated seeds and no residual degrees of freedom"
    r = np.log(pts.loss) - fit.predict_log(pts)
    return float(1.4826 * np.median(np.abs(r - np.median(r)))), "residuals"


def bootstrap(fit: Fit, pts: Points, draws: int = DEFAULT_DRAWS, seed: int = 0,
              options: FitOptions | None = None) -> Bootstrap:
    """``draws`` refits on runs resampled with replacement (seeded); unconverged draws dropped."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    thetas, dense, failed = [], [], 0
    with single_thread_blas():
        for _ in range(draws):
            f = fit_form(fit.form, pts, weights=resample_weights(pts, rng), warm=fit,
                         options=options or BOOT_OPTIONS)
            if not f.converged or (f.dense is not None and not f.dense.converged):
                failed += 1
                continue
            thetas.append(f.theta)
            if f.dense is not None:
                dense.append(f.dense.theta)
    sigma, source = seed_noise(fit, pts)
    p = fit.theta.shape
    return Bootstrap(np.array(thetas).reshape((-1,) + p), np.array(dense) if dense else None,
                     draws, failed, seed, time.perf_counter() - t0, sigma, source)


def predictive_draws(fit: Fit, boot: Bootstrap, pts: Points, seed: int = 0,
                     noise: bool = True) -> np.ndarray:
    """(B, n) draws of ln L at ``pts``: bootstrap refits, plus one run's noise if ``noise``.

    All NaN when the noise was asked for but could not be estimated: an interval without it
    would claim a certainty the data cannot give (zero width from an exactly determined fit).
    """
    y = fit.predict_log(pts, boot.thetas, boot.dense_thetas)
    if noise and not np.isfinite(boot.sigma):
        return np.full(y.shape, np.nan)
    if noise and boot.sigma > 0:
        y = y + boot.sigma * np.random.default_rng(seed).standard_normal(y.shape)
    return y


def interval(draws: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` percentile interval over axis 0."""
    q = (1 - level) / 2
    return np.quantile(draws, q, axis=0), np.quantile(draws, 1 - q, axis=0)


def param_summary(fit: Fit, boot: Bootstrap, level: float = DEFAULT_LEVEL) -> dict[str, dict]:
    """Per public parameter: fitted value, bootstrap sd and central ``level`` interval."""
    values = fit.params()
    table = np.array([list(fit.params(t).values()) for t in boot.thetas]).reshape(-1, len(values))
    out = {}
    for j, (name, v) in enumerate(values.items()):
        col = table[:, j]
        lo, hi = interval(col, level) if len(col) else (np.nan, np.nan)
        out[name] = {"value": v, "lo": float(lo), "hi": float(hi),
                     "sd": float(col.std(ddof=1)) if len(col) > 1 else float("nan")}
    return out
