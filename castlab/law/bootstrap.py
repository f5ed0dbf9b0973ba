"""Uncertainty: bootstrap over runs, a seed-noise term, an extrapolation term, and intervals.

A draw resamples runs with replacement within each model size (so every size stays present) and
refits from a jittered start near the full-data optimum; only when that end is worse than the
optimum itself (scored on the draw's weights) is a second refit started at the optimum, and the
better kept (ties: the jittered end). Along a flat direction of the objective the draws then
spread out instead of all staying at the optimum. Draws are per-run multiplicities (no copies).
Prediction intervals add the run-to-run noise of one new run (the pooled spread of ln L across
repeated seeds, rows deduplicated and sizes told apart by exact N; otherwise the RMS residual
with a degrees-of-freedom correction) and the form's extrapolation error: ``tau`` (sd of ln L per
decade beyond the fitted budgets and sizes), learned from held-out residuals (validate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from castlab.law.fit import Fit, FitOptions, fit_form, objective_at, single_thread_blas
from castlab.law.forms import FORMS
from castlab.law.parallel import chunks, map_in_order, workers
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
    tau: float = 0.0  # extrapolation sd of ln L per decade beyond the data (0: not calibrated)
    d_seen: float = float("inf")  # largest fitted budget D
    n_seen: tuple = ()  # fitted model sizes N
    d_seen_n: tuple = ()  # largest fitted budget per fitted size, aligned with n_seen

    def distance(self, pts: Points) -> np.ndarray:
        """Decades (log10) beyond the fitted budgets plus decades to the nearest fitted size.

        At a fitted size the budgets are those fitted at that size (a trajectory table's small
        sizes end far below its largest budget); elsewhere the largest fitted budget."""
        top = np.full(len(pts), self.d_seen)
        for n, d in zip(self.n_seen, self.d_seen_n, strict=False):  # older laws: none
            top[pts.n == n] = d
        dd = np.maximum(0.0, np.log10(pts.d / top)) if np.isfinite(self.d_seen) \
            else np.zeros(len(pts))
        if not self.n_seen:
            return dd
        ln = np.log10(np.asarray(self.n_seen, dtype=np.float64))
        dn = np.min(np.abs(np.log10(pts.n)[:, None] - ln[None, :]), axis=1)
        return dd + dn


def resample_weights(pts: Points, rng: np.random.Generator,
                     per_size: bool = False) -> np.ndarray:
    """Multiplicity of each point in one bootstrap draw (see ``resample_plan``)."""
    return draw_weights(resample_plan(pts, per_size), len(pts), rng)


def resample_plan(pts: Points, per_size: bool = False) -> list[tuple[np.ndarray, list | None]]:
    """How a draw resamples ``pts``: per stratum (point indices, runs as index arrays or None).

    Runs are resampled within each size. Checkpoints of one run (``pts.run``) are correlated,
    so a run is drawn as a whole. Where a size has a single run (a trajectory table: one curve
    per size) resampling within the size would always return that run, so the runs are then
    resampled over the whole table, except for a ``per_size`` form (it needs every size in every
    draw), whose points are then resampled within each size as if independent. Computed once
    per bootstrap: a table with hundreds of sizes made per-draw grouping the bottleneck.
    """
    labels = list(dict.fromkeys(pts.size))
    by_size = [np.flatnonzero(pts.size == label) for label in labels]
    runs = pts.runs()
    if pts.run is None or len(np.unique(runs)) == len(pts):  # one point per run
        return [(idx, None) for idx in by_size]
    per_size_runs = [list(dict.fromkeys(runs[idx])) for idx in by_size]
    if min(len(r) for r in per_size_runs) >= 2:
        return [(idx, [idx[runs[idx] == r] for r in rs])
                for idx, rs in zip(by_size, per_size_runs, strict=True)]
    if per_size:
        return [(idx, None) for idx in by_size]
    every = np.arange(len(pts))
    return [(every, [np.flatnonzero(runs == r) for r in dict.fromkeys(runs)])]


def draw_weights(plan, n: int, rng: np.random.Generator) -> np.ndarray:
    """One draw's multiplicity per point from a ``resample_plan``."""
    w = np.zeros(n)
    for idx, runs in plan:
        if len(idx) == 1:  # a draw of one from one: numpy consumes no randomness for it either
            w[idx] += 1.0
        elif runs is None:
            np.add.at(w, rng.choice(idx, size=len(idx), replace=True), 1.0)
        else:
            for k in rng.choice(len(runs), size=len(runs), replace=True):
                w[runs[k]] += 1.0
    return w


def seed_noise(fit: Fit, pts: Points) -> tuple[float, str]:
    """Sd of ln L of a single run: pooled over repeated seeds (identical rows counted once, a
    cell keyed by exact N, D and sparsity), else the RMS residual with a degrees-of-freedom
    correction; NaN when neither exists (no repeats, no more runs than fitted parameters)."""
    cells: dict[tuple, set] = {}
    for n, d, s, loss in zip(pts.n, pts.d, pts.s, pts.loss, strict=True):
        cells.setdefault((float(n), float(d), float(s)), set()).add(float(loss))
    ss, dof = 0.0, 0
    for vals in cells.values():
        if len(vals) >= 2:
            y = np.log(np.fromiter(vals, np.float64))
            ss, dof = ss + float(((y - y.mean()) ** 2).sum()), dof + len(y) - 1
    if dof > 0:
        return float(np.sqrt(ss / dof)), "seeds"
    p = fit.theta.size
    if len(pts) <= p:  # an exactly determined fit leaves zero residuals
        return float("nan"), "none: no repeated seeds and no residual degrees of freedom"
    r = np.log(pts.loss) - fit.predict_log(pts)
    # The Huber fit is near-L1 (many residuals exactly 0), so a MAD would be far too small.
    return float(np.sqrt(np.sum(r**2) / (len(pts) - p))), "residuals"


def bootstrap(fit: Fit, pts: Points, draws: int = DEFAULT_DRAWS, seed: int = 0,
              options: FitOptions | None = None) -> Bootstrap:
    """``draws`` refits on runs resampled with replacement (seeded); unconverged draws dropped."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    opt = options or BOOT_OPTIONS
    plan = resample_plan(pts, FORMS[fit.form].per_size)
    # every draw's weights and start first, in the order a serial loop takes them, so the
    # refits can run on several cores with the same result
    starts = []
    for _ in range(draws):
        w = draw_weights(plan, len(pts), rng)
        starts.append((w, _jittered(fit, rng)))
    k = workers() if draws >= PARALLEL_MIN_DRAWS else 1
    pieces = [(fit, pts, opt, piece) for piece in chunks(starts, k)] if starts else []
    refits = [f for part in map_in_order(_refit_piece, pieces, k) for f in part]
    thetas = [f.theta for f in refits if f is not None]
    dense = [f.dense.theta for f in refits if f is not None and f.dense is not None]
    failed = sum(f is None for f in refits)
    sigma, source = seed_noise(fit, pts)
    p = fit.theta.shape
    return Bootstrap(np.array(thetas).reshape((-1,) + p), np.array(dense) if dense else None,
                     draws, failed, seed, time.perf_counter() - t0, sigma, source,
                     d_seen=float(pts.d.max()), n_seen=tuple(float(v) for v in np.unique(pts.n)),
                     d_seen_n=tuple(float(pts.d[pts.n == v].max()) for v in np.unique(pts.n)))


PARALLEL_MIN_DRAWS = 200  # fewer draws are refitted in this process (forking costs more)


def _refit_piece(job) -> list[Fit | None]:
    """Refit each (weights, jittered start) of one piece of a bootstrap: the jittered refit, and
    a second from the optimum when the jittered one ends worse than it; None: neither converged."""
    fit, pts, opt, piece = job
    out = []
    with single_thread_blas():
        for w, start in piece:
            jit = fit_form(fit.form, pts, weights=w, warm=start, options=opt)
            f = jit
            if not (_ok(jit) and jit.objective <= objective_at(fit, pts, w) + 1e-12):
                f = _best_of(fit_form(fit.form, pts, weights=w, warm=fit, options=opt), jit)
            out.append(f)
    return out


JITTER = 0.3  # sd of the second start around the optimum, in internal (O(1)) parameters


def _jittered(fit: Fit, rng: np.random.Generator) -> Fit:
    """``fit`` moved to a random nearby start (the dense curve too), for the second refit."""
    from dataclasses import replace

    dense = None if fit.dense is None else _jittered(fit.dense, rng)
    return replace(fit, theta=fit.theta + JITTER * rng.standard_normal(fit.theta.shape),
                   dense=dense)


def _ok(f: Fit) -> bool:
    return f.converged and (f.dense is None or f.dense.converged)


def _best_of(warm: Fit, jit: Fit) -> Fit | None:
    """The jittered refit unless the warm one is strictly better (ties: the jittered end, so flat
    directions show up as spread); None when neither converged."""
    if not _ok(jit):
        return warm if _ok(warm) else None
    if not _ok(warm):
        return jit
    return warm if warm.objective < jit.objective - 1e-9 * max(1.0, abs(warm.objective)) else jit


def predictive_draws(fit: Fit, boot: Bootstrap, pts: Points, seed: int = 0,
                     noise: bool = True) -> np.ndarray:
    """(B, n) draws of ln L at ``pts``: bootstrap refits, plus one run's noise if ``noise``.

    All NaN when the noise was asked for but could not be estimated: an interval without it
    would claim a certainty the data cannot give (zero width from an exactly determined fit).
    """
    y = fit.predict_log(pts, boot.thetas, boot.dense_thetas)
    if noise and not np.isfinite(boot.sigma):
        return np.full(y.shape, np.nan)
    if noise:
        sd = np.sqrt(boot.sigma**2 + (boot.tau * boot.distance(pts)) ** 2)
        y = y + sd * point_normals(pts, y.shape[0], seed)
    return y


def point_normals(pts: Points, draws: int, seed: int) -> np.ndarray:
    """(draws, n) standard normals, each column seeded by ``seed`` and its own point (N, D, S),
    so one query's interval does not depend on which other points are asked with it."""
    keys = np.column_stack([pts.n, pts.d, pts.s]).astype(np.float64).view(np.uint64)
    out = np.empty((draws, len(pts)))
    for j, key in enumerate(keys):
        out[:, j] = np.random.default_rng([seed, *map(int, key)]).standard_normal(draws)
    return out


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
                     "sd": float(col.std(ddof=1)) if len(col) > 1 else float("nan"),
                     "flag": interval_flag(float(lo), float(hi))}
    return out


WIDE_DECADES = 1.0  # a parameter interval wider than a factor 10 is flagged: not determined


def interval_flag(lo: float, hi: float) -> str:
    """'' for a determined parameter; else why its interval says little (orders of magnitude,
    or a sign the data cannot fix)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    if lo > 0 and np.log10(hi / lo) > WIDE_DECADES:
        return f"interval spans {np.log10(hi / lo):.1f} decades: not determined by these runs"
    if lo < 0 < hi:
        return "interval crosses zero: its sign is not determined by these runs"
    return ""
