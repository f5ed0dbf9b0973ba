"""A fitted law as a file (law.json) and the questions asked of it: PPL at a budget, budget for a PPL.

law.json keeps the internal parameters, the rescaling and every converged bootstrap refit, so
``castlab predict`` recomputes intervals exactly as ``fit-law`` would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

from castlab import __version__
from castlab.config import parse_count
from castlab.errors import UserError
from castlab.law.bootstrap import DEFAULT_LEVEL, Bootstrap, interval, predictive_draws
from castlab.law.fit import Fit
from castlab.law.forms import FORMS, Scales
from castlab.law.lawfile import read_law
from castlab.law.points import Points
from castlab.law.validate import LN_CLIP, exp_clipped, ppl_of_log_loss

LN_D_RANGE = (0.0, np.log(1e30))  # budgets searched by --target-ppl: 1 to 1e30 tokens
FAR_DECADES = 1.0  # predict warns beyond this many decades outside the fitted budgets or sizes


def fit_to_json(fit: Fit) -> dict:
    """Plain-data form of a Fit (recursive for kd_gap's dense-kd curve)."""
    return {"form": fit.form, "params": fit.params(), "theta": fit.theta.tolist(),
            "on_bound": fit.on_bound,
            "groups": fit.groups,
            "scales": {"n0": fit.scales.n0, "d0": fit.scales.d0, "a0": fit.scales.a0},
            "objective": fit.objective, "converged": fit.converged, "message": fit.message,
            "n_points": fit.n_points, "starts": fit.starts, "seconds": fit.seconds,
            "dense": fit_to_json(fit.dense) if fit.dense else None}


def fit_from_json(d: dict) -> Fit:
    """Inverse of ``fit_to_json``."""
    if d["form"] not in FORMS:
        raise KeyError(f"unknown form {d['form']!r}")
    theta = np.array(d["theta"], dtype=np.float64)
    groups = list(d["groups"])
    if theta.shape != (len(groups), len(FORMS[d["form"]].params)):
        raise ValueError(f"theta of shape {theta.shape} does not fit form {d['form']} "
                         f"({len(FORMS[d['form']].params)} parameters x {len(groups)} groups)")
    return Fit(d["form"], theta, groups,
               # a0 (the lr-area scale) is absent from laws written before it existed: 1
               Scales(d["scales"]["n0"], d["scales"]["d0"], d["scales"].get("a0", 1.0)),
               d["objective"], d["converged"],
               d["message"], d["n_points"], d["starts"], d["seconds"],
               fit_from_json(d["dense"]) if d.get("dense") else None,
               {"on_bound": list(d.get("on_bound", []))} if d.get("on_bound") else {})


def checksum(d: dict) -> str:
    """sha256 of a law's content (every key but ``checksum``), canonical JSON."""
    body = {k: v for k, v in d.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


@dataclass
class Law:
    """A fitted law with its bootstrap, the sizes it saw, and provenance."""

    fit: Fit
    boot: Bootstrap
    sizes: dict[str, dict]  # size label -> {"n": N, "teacher_eval_loss": L_dense or None}
    level: float = DEFAULT_LEVEL
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain data for law.json."""
        b = self.boot
        return {"castlab_version": __version__, "form": self.fit.form, "level": self.level,
                "fit": fit_to_json(self.fit), "sizes": self.sizes,
                "bootstrap": {"draws": b.draws, "failed": b.failed, "seed": b.seed,
                              "seconds": b.seconds, "sigma": b.sigma,
                              "noise_source": b.noise_source, "tau": b.tau,
                              "d_seen": b.d_seen, "n_seen": list(b.n_seen),
                              "d_seen_n": list(b.d_seen_n),
                              "thetas": b.thetas.tolist(),
                              "dense_thetas": None if b.dense_thetas is None
                              else b.dense_thetas.tolist()},
                **self.meta}

    def save(self, path: str | Path) -> None:
        """Write law.json with a checksum of its content (``load`` refuses an edited file)."""
        d = json.loads(json.dumps(self.to_json(), allow_nan=True))  # as it will read back
        d["checksum"] = checksum(d)
        Path(path).write_text(json.dumps(d, indent=1, allow_nan=True))

    @classmethod
    def load(cls, path: str | Path) -> Law:
        """Read law.json; a missing or foreign file is a one-line UserError."""
        path = Path(path)
        if path.is_dir():
            raise UserError(f"--law: {path} is a directory; give the law.json inside it")
        try:
            d = read_law(path)  # castlab.law.lawfile: bounded read, schema, checksum required
            if "checksum" in d and d["checksum"] != checksum(d):
                raise UserError(f"--law: {path} does not match its checksum (edited after "
                                "fit-law wrote it); refit with castlab fit-law")
            fit = fit_from_json(d["fit"])
            if d.get("form", fit.form) != fit.form:
                raise ValueError(f"form {d['form']!r} but the fit is {fit.form!r}")
            b = d["bootstrap"]
            boot = Bootstrap(np.array(b["thetas"], dtype=np.float64).reshape((-1,) + fit.theta.shape),
                             None if b["dense_thetas"] is None else np.array(b["dense_thetas"]),
                             b["draws"], b["failed"], b["seed"], b["seconds"], b["sigma"],
                             b["noise_source"], float(b.get("tau", 0.0)),
                             float(b.get("d_seen", float("inf"))),
                             tuple(b.get("n_seen", ())), tuple(b.get("d_seen_n", ())))
        except FileNotFoundError:
            raise UserError(f"--law: {path} does not exist") from None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise UserError(f"--law: {path} is not a castlab law.json ({err})") from None
        meta = {k: v for k, v in d.items() if k not in
                ("castlab_version", "form", "level", "fit", "sizes", "bootstrap", "checksum")}
        meta["castlab_version"] = d.get("castlab_version")
        return cls(fit, boot, d["sizes"], d.get("level", DEFAULT_LEVEL), meta)

    # --- queries -----------------------------------------------------------------------------
    def resolve(self, model: str | None = None, n: float | None = None) -> tuple[str, float]:
        """(size label, N) for ``--model`` (a size the law saw, or a count like 125M) or ``--n``."""
        if (model is None) == (n is None):
            raise UserError("give exactly one of --model SIZE_OR_N and --n N")
        if model is not None and model in self.sizes:
            return model, float(self.sizes[model]["n"])
        if model is not None:
            try:
                n = float(parse_count(model, "--model"))
            except UserError:
                raise UserError(f"--model: '{model}' is neither a size in this law "
                                f"({', '.join(self.sizes)}) nor a parameter count like 125M") from None
        if n is None or not np.isfinite(n) or n <= 0:
            raise UserError(f"--n: got {n!r}, allowed a positive, finite parameter count")
        label = next((k for k, v in self.sizes.items() if np.isclose(v["n"], n, rtol=1e-9)), "")
        if FORMS[self.fit.form].per_size and not label:
            raise UserError(f"form {self.fit.form} is fitted per size and cannot predict a new "
                            f"size (N={n:.4g}): --model must be one of {', '.join(self.sizes)}; "
                            f"{self.who_predicts('sizes')}")
        return label, float(n)

    def who_predicts(self, target: str) -> str:
        """Which forms would answer a ``target`` query ('sizes', 'sparsities') this law cannot,
        best held-out first among those this law's fit-law scored, and how to get such a law."""
        from castlab.law.targets import can_predict, forms_that_can

        scored = [r for r in self.meta.get("heldout", []) if r.get("form") in FORMS
                  and can_predict(FORMS[r["form"]], target)
                  and isinstance(r.get("tokens_loss_are"), float)]
        scored.sort(key=lambda r: r["tokens_loss_are"])
        names = [r["form"] for r in scored] or forms_that_can([target])
        return (f"forms that can: {', '.join(names)} (refit with castlab fit-law "
                f"--predict-for {target})")

    def warnings(self, q: Points, y: np.ndarray) -> list[str]:
        """Why predictions at ``q`` (predicted ln L ``y``) deserve caution: far beyond the fitted
        budgets or sizes (more than ``FAR_DECADES``), or below the dense teacher's loss."""
        out = []
        b = self.boot
        far = np.log10(q.d / b.d_seen) if np.isfinite(b.d_seen) else np.zeros(len(q))
        for d, v in zip(q.d, far, strict=True):
            if v > FAR_DECADES:
                out.append(f"{d:.4g} tokens is {v:.1f} decades beyond the largest fitted budget "
                           f"({b.d_seen:.4g}): an extrapolation the held-out splits never tested")
        if b.n_seen:
            lo, hi = min(b.n_seen), max(b.n_seen)
            gap = max(np.log10(lo / q.n[0]), np.log10(q.n[0] / hi), 0.0)
            if gap > FAR_DECADES:
                out.append(f"N={q.n[0]:.4g} is {gap:.1f} decades outside the fitted sizes "
                           f"({lo:.4g} to {hi:.4g})")
        with np.errstate(invalid="ignore"):
            below = np.isfinite(q.ldense) & (y < np.log(q.ldense))
        for d in q.d[below]:
            out.append(f"at {d:.4g} tokens the law predicts a loss below the dense teacher's "
                       f"({q.ldense[0]:.4g} nats): a sparse model rarely beats its teacher")
        return out

    def query(self, label: str, n: float, tokens, sparsity: float | None = None,
              dense_loss: float | None = None) -> Points:
        """Points to predict at: one per budget in ``tokens``."""
        form = FORMS[self.fit.form]
        if "areas" in form.needs:
            raise UserError(f"form {form.name} predicts checkpoints along a run's learning-rate "
                            "schedule (their lr areas, from curve.parquet), which a budget alone "
                            f"does not give; {self.who_predicts('budgets')}")
        d = np.atleast_1d(np.asarray(tokens, dtype=np.float64))
        k = len(d)
        if "s" in form.needs:
            if sparsity is None:
                raise UserError(f"--sparsity: form {form.name} needs the sparsity to predict at")
            if not 0 <= sparsity < 1:
                raise UserError(f"--sparsity: got {sparsity}, allowed 0 <= s < 1")
        elif sparsity is not None:
            raise UserError(f"--sparsity: form {form.name} does not use sparsity; "
                            f"{self.who_predicts('sparsities')}")
        teacher = dense_loss
        if teacher is None and label:
            teacher = self.sizes[label].get("teacher_eval_loss")
        if "ldense" in form.needs and teacher is None:
            raise UserError(f"--dense-loss: form {form.name} needs the dense teacher loss of a "
                            "size the law did not see")
        return Points(n=np.full(k, n), d=d, loss=np.full(k, np.nan),
                      s=np.full(k, sparsity or 0.0), ldense=np.full(k, np.nan if teacher is None
                                                                  else float(teacher)),
                      lkd=np.full(k, np.nan), size=np.array([label] * k, dtype=object),
                      seed=np.full(k, -1))

    def predict(self, q: Points, seed: int = 0) -> list[dict]:
        """Per query point: loss and PPL with the ``level`` prediction interval."""
        y = self.fit.predict_log(q)
        if not np.isfinite(y).all():
            raise UserError("this law cannot predict at that size (its dense-kd curve is per "
                            f"size); {self.who_predicts('sizes')}")
        why = self.no_interval()
        lo = hi = np.full(len(q), np.nan)
        if not why:
            lo, hi = interval(predictive_draws(self.fit, self.boot, q, seed=seed), self.level)
        return [{"tokens": float(q.d[i]), "loss": float(exp_clipped(y[i])),
                 "ppl": float(ppl_of_log_loss(y[i])),
                 "ppl_lo": None if why else float(ppl_of_log_loss(lo[i])),
                 "ppl_hi": None if why else float(ppl_of_log_loss(hi[i])),
                 "no_interval": why or None, "level": self.level}
                for i in range(len(q))]

    def no_interval(self) -> str:
        """Why this law gives no prediction interval ('' when it does)."""
        if not len(self.boot.thetas):
            return "no converged bootstrap refit"
        if not np.isfinite(self.boot.sigma):
            return (f"the law was fitted to {self.fit.n_points} runs for {self.fit.theta.size} "
                    "parameters with no repeated seeds, so the run noise cannot be estimated")
        return ""

    def tokens_for_ppl(self, target_ppl: float, q: Points) -> dict:
        """Tokens at which the law's PPL reaches ``target_ppl`` (point and bootstrap interval).

        ``q`` is a one-point query fixing size and sparsity. If the target lies at or below the
        law's asymptote (D -> infinity) at that size, ``tokens`` is None and ``reachable`` False.
        """
        if not target_ppl > 1:
            raise UserError(f"--target-ppl: got {target_ppl}, allowed a perplexity above 1")
        y_target = np.log(np.log(target_ppl))

        def at(u):
            return self.fit.predict_log(self._at(q, u))[0] - y_target

        with np.errstate(all="ignore"):
            y_inf = self.fit.predict_log(self._at(q, np.inf))[0]
        # A form without a floor (loglinear) goes to L <= 0 as D grows: no asymptote to report.
        floor = float(ppl_of_log_loss(y_inf)) if np.isfinite(y_inf) and y_inf > -LN_CLIP \
            else None
        out = {"target_ppl": target_ppl, "asymptote_ppl": floor, "level": self.level}
        if floor is not None and not floor < target_ppl:
            return {**out, "reachable": False, "tokens": None, "tokens_lo": None, "tokens_hi": None}
        lo_u, hi_u = LN_D_RANGE
        if at(lo_u) <= 0:
            raise UserError(f"--target-ppl: {target_ppl} is already reached with a single token")
        if at(hi_u) > 0:
            raise UserError(f"--target-ppl: {target_ppl} needs more than 1e30 tokens")
        u = brentq(at, lo_u, hi_u, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
        why = self.no_interval()
        lo = hi = None
        if not why:
            lo, hi = self._token_interval(y_target, q)
            if not lo < hi:  # every refit crosses at the same budget: exactly determined
                why, lo, hi = "every bootstrap refit gives the same budget (exactly determined)", \
                    None, None
        return {**out, "reachable": True, "tokens": float(np.exp(u)), "tokens_lo": lo,
                "tokens_hi": hi, "no_interval": why or None}

    def _at(self, q: Points, u) -> Points:
        p = q.subset(np.zeros(np.size(u), int))
        p.d = np.exp(np.atleast_1d(np.asarray(u, np.float64)))
        return p

    def _token_interval(self, y_target: float, q: Points) -> tuple[float, float]:
        # Every bootstrap refit on one grid of ln D, crossing found by linear interpolation:
        # vectorised over draws; parameter uncertainty only (no run noise) for a budget.
        grid = np.linspace(*LN_D_RANGE, 4000)
        y = self.fit.predict_log(self._at(q, grid), self.boot.thetas, self.boot.dense_thetas)
        f = y - y_target
        below = f <= 0
        first = np.where(below.any(axis=1), below.argmax(axis=1), -1)
        ln_d = np.full(len(f), np.inf)
        for b in np.flatnonzero(first > 0):
            j = first[b]
            f0, f1 = f[b, j - 1], f[b, j]
            ln_d[b] = grid[j - 1] + (grid[j] - grid[j - 1]) * f0 / (f0 - f1)
        ln_d[first == 0] = grid[0]
        q = (1 - self.level) / 2  # "nearest": draws that never reach the target are +inf
        lo, hi = np.quantile(ln_d, [q, 1 - q], method="nearest")
        return float(np.exp(lo)), float(np.exp(hi))
