"""Uncertainty: bootstrap over runs, a seed-noise term, an extrapolation term, and intervals.

A draw resamples runs with replacement within each model size (so every size stays present) and
refits from a jittered start near the full-data optimum; only when that end is worse than the
optimum itself (scored on the draw's weights) is a second refit started at the optimum, and the
better kept (ties: the jittered end). Along a flat direction of the objective the draws then
spread out instead of all staying at the optimum. Draws are per-run multiplicities (no copies),
made for all draws in one vectorised pass, and refitted all at once by the batched solver
(castlab.law.batchfit); L-BFGS-B only finishes the few refits the batch leaves unsettled.
Prediction intervals add the run-to-run noise of one new run (the pooled spread of ln L across
repeated seeds, rows deduplicated and sizes told apart by exact N; otherwise the RMS residual
with a degrees-of-freedom correction) and the form's extrapolation error: ``tau`` (sd of ln L per
decade beyond the fitted budgets and sizes), learned from held-out residuals (validate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from castlab.law.fit import (
    Fit,
    FitOptions,
    Refits,
    fit_form,
    objective_at,
    point_objectives,
    refit_many,
    single_thread_blas,
)
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
    return draw_weights(resample_plan(pts, per_size), rng, 1)[0]


@dataclass(frozen=True)
class ResamplePlan:
    """What a draw resamples: units (runs, or single points) drawn with replacement within
    strata. ``unit`` is each point's unit; ``units`` lists the units stratum by stratum, and
    each slot of a draw picks among its stratum's ``units[start:start + length]``."""

    unit: np.ndarray  # (n,) unit index per point
    units: np.ndarray  # (U,) unit indices, stratum after stratum
    start: np.ndarray  # (U,) per slot: where its stratum begins in ``units``
    length: np.ndarray  # (U,) per slot: its stratum's number of units


def resample_plan(pts: Points, per_size: bool = False) -> ResamplePlan:
    """How a draw resamples ``pts``.

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
    points = np.arange(len(pts))
    if pts.run is None or len(np.unique(runs)) == len(pts):  # one point per run
        return _plan(points, by_size)
    run_index = np.unique(runs, return_inverse=True)[1]
    per_size_runs = [np.unique(run_index[idx]) for idx in by_size]
    if min(len(r) for r in per_size_runs) >= 2:
        return _plan(run_index, per_size_runs)
    if per_size:
        return _plan(points, by_size)
    return _plan(run_index, [np.unique(run_index)])


def _plan(unit: np.ndarray, strata: list[np.ndarray]) -> ResamplePlan:
    """The plan drawing ``strata`` (arrays of unit indices), each point counted via ``unit``."""
    sizes = [len(s) for s in strata]
    start = np.repeat(np.cumsum([0] + sizes[:-1]), sizes)
    return ResamplePlan(np.asarray(unit), np.concatenate(strata), start, np.repeat(sizes, sizes))


def draw_weights(plan: ResamplePlan, rng: np.random.Generator, draws: int) -> np.ndarray:
    """(draws, n) multiplicity of each point, every draw resampling each stratum's units with
    replacement, all draws in one vectorised pass."""
    slots = len(plan.units)
    pick = plan.start + np.floor(rng.random((draws, slots)) * plan.length).astype(np.int64)
    n_units = int(plan.unit.max()) + 1 if len(plan.unit) else 0
    flat = (np.arange(draws)[:, None] * n_units + plan.units[pick]).ravel()
    counts = np.bincount(flat, minlength=draws * n_units).reshape(draws, n_units)
    return counts[:, plan.unit].astype(np.float64)


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
              options: FitOptions | None = None, batched: bool = True) -> Bootstrap:
    """``draws`` refits on runs resampled with replacement (seeded); unconverged draws dropped.
    ``batched=False`` refits each draw by L-BFGS-B alone (the reference `castlab bench fit`
    times the batched solver against)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    opt = options or BOOT_OPTIONS
    plan = resample_plan(pts, FORMS[fit.form].per_size)
    # every draw's weights and jittered start first, so the result does not depend on how the
    # refits are grouped
    weights = draw_weights(plan, rng, draws)
    jitter = fit.theta + JITTER * rng.standard_normal((draws,) + fit.theta.shape)
    dense_jitter = None if fit.dense is None else \
        fit.dense.theta + JITTER * rng.standard_normal((draws,) + fit.dense.theta.shape)
    thetas, dense, failed = _refit_draws(fit, pts, weights, jitter, dense_jitter, opt, batched)
    sigma, source = seed_noise(fit, pts)
    p = fit.theta.shape
    return Bootstrap(np.array(thetas).reshape((-1,) + p), np.array(dense) if dense else None,
                     draws, failed, seed, time.perf_counter() - t0, sigma, source,
                     d_seen=float(pts.d.max()), n_seen=tuple(float(v) for v in np.unique(pts.n)),
                     d_seen_n=tuple(float(pts.d[pts.n == v].max()) for v in np.unique(pts.n)))


PARALLEL_MIN_DRAWS = 200  # fewer L-BFGS-B fallbacks are refitted in this process (forking costs more)


def _refit_draws(fit: Fit, pts: Points, w: np.ndarray, jitter: np.ndarray,
                 dense_jitter: np.ndarray | None, opt: FitOptions, batched: bool = True):
    """Refit every draw (weights ``w`` (B, n), jittered starts): all at once with the batched
    solver (castlab.law.batchfit), first from the jittered starts, then from the optimum for the
    draws whose jittered end is worse than it or that the batch did not settle (a jittered start
    that wandered into a flat, degenerate valley: polishing it with L-BFGS-B cost 30 ms a draw).
    The refits from the optimum the batch leaves unconverged are polished by L-BFGS-B, and a
    draw neither settles is refitted by L-BFGS-B from both starts, one draw at a time. Returns
    the converged draws' parameters (and dense-curve parameters) in draw order, and the count
    of draws that converged nowhere."""
    if not len(w):
        return [], [], 0
    if not batched:
        return _unbatched(fit, pts, w, jitter, dense_jitter, opt, list(range(len(w))),
                          [None] * len(w))
    jit = _batch(fit, pts, w, jitter, dense_jitter, opt, polish=False)
    at_optimum = w @ point_objectives(fit, pts)
    again = np.flatnonzero(~jit.converged | (jit.objective > at_optimum + 1e-12))
    chosen: list[tuple | None] = [_pick(jit, b) if jit.converged[b] else None
                                  for b in range(len(w))]
    if len(again):
        warm = _batch(fit, pts, w[again], np.repeat(fit.theta[None], len(again), 0),
                      None if fit.dense is None
                      else np.repeat(fit.dense.theta[None], len(again), 0), opt)
        for k, b in enumerate(again):
            # ties keep the jittered end, so flat directions show up as spread
            if warm.converged[k] and (chosen[b] is None or warm.objective[k] < jit.objective[b]
                                      - 1e-9 * max(1.0, abs(warm.objective[k]))):
                chosen[b] = _pick(warm, k)
    slow = [b for b, c in enumerate(chosen) if c is None]
    return _unbatched(fit, pts, w, jitter, dense_jitter, opt, slow, chosen)


def _unbatched(fit, pts, w, jitter, dense_jitter, opt, slow: list[int], chosen: list):
    """L-BFGS-B refits, one draw at a time, for the draws ``slow``; then the kept draws (see
    ``_refit_draws``)."""
    if slow:
        starts = [(w[b], _moved(fit, jitter[b], None if dense_jitter is None else dense_jitter[b]))
                  for b in slow]
        k = workers() if len(slow) >= PARALLEL_MIN_DRAWS else 1
        pieces = [(fit, pts, opt, piece) for piece in chunks(starts, k)]
        refits = [f for part in map_in_order(_refit_piece, pieces, k) for f in part]
        for b, f in zip(slow, refits, strict=True):
            chosen[b] = None if f is None else (f.theta, None if f.dense is None else f.dense.theta)
    kept = [c for c in chosen if c is not None]
    return ([c[0] for c in kept], [c[1] for c in kept if c[1] is not None],
            sum(c is None for c in chosen))


PARALLEL_MIN_WORK = 1_000_000  # draws x points from which a batch is split over the cores


def _batch(fit: Fit, pts: Points, w, theta0, dense0, opt: FitOptions, polish=True) -> Refits:
    """``refit_many`` on the draws ``w``; a large batch (a big table: numpy-bound, not
    overhead-bound) is split over the cores, each draw refitted exactly as in one batch."""
    k = workers() if len(w) * len(pts) >= PARALLEL_MIN_WORK else 1
    if k <= 1:
        return _batch_job((fit, pts, w, theta0, dense0, opt, polish))
    jobs = [(fit, pts, w[i], theta0[i], None if dense0 is None else dense0[i], opt, polish)
            for i in (np.asarray(c, dtype=np.int64) for c in chunks(range(len(w)), k))]
    return _joined(map_in_order(_batch_job, jobs, k))


def _batch_job(job) -> Refits:
    fit, pts, w, theta0, dense0, opt, polish = job
    with single_thread_blas():
        return refit_many(fit, pts, w, theta0, opt, dense0, polish)


def _joined(parts: list[Refits]) -> Refits:
    """One Refits of the pieces' draws, in order."""
    dense = None if parts[0].dense is None else _joined([p.dense for p in parts])
    return Refits(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("theta", "objective", "converged")), dense)


def _pick(r: Refits, b: int) -> tuple:
    return r.theta[b], None if r.dense is None else r.dense.theta[b]


def _refit_piece(job) -> list[Fit | None]:
    """L-BFGS-B refits of one piece of draws: from the jittered start, and again from the
    optimum when the jittered end is worse than it; None: neither converged."""
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


JITTER = 0.3  # sd of the jittered start around the optimum, in internal (O(1)) parameters


def _moved(fit: Fit, theta: np.ndarray, dense_theta: np.ndarray | None) -> Fit:
    """``fit`` started from other parameters (the dense curve too): a warm start for L-BFGS-B."""
    dense = None if fit.dense is None else replace(fit.dense, theta=dense_theta)
    return replace(fit, theta=theta, dense=dense)


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
