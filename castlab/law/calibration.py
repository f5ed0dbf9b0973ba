"""Synthetic calibration of the prediction intervals: do 90% intervals cover 90% of new runs?

Each replicate draws a study from a known law (default: the chinchilla case of ``synthetic``,
4 sizes x 8 budgets, one seed, noise sd 0.01 in ln L), fits the form on the budgets <= D/2 and
<= D/4 (validate's token splits), and asks whether each held-out run at the top budget falls
inside the law's ``level`` prediction interval (bootstrap refits + run noise; the form is the
true one here, so the extrapolation term is 0). Shared by the test suite and `castlab bench fit`.
"""

from __future__ import annotations

import time

import numpy as np

from castlab.errors import UserError
from castlab.law.bootstrap import DEFAULT_LEVEL, bootstrap, interval, predictive_draws
from castlab.law.fit import fit_form
from castlab.law.forms import FORMS
from castlab.law.points import check_fittable
from castlab.law.synthetic import synthetic_case
from castlab.law.validate import TOKEN_SCHEMES, holdouts

CALIBRATION_NOISE = 0.01


def coverage(replicates: int = 100, draws: int = 100, form: str = "chinchilla",
             noise: float = CALIBRATION_NOISE, level: float = DEFAULT_LEVEL,
             first_seed: int = 1000) -> dict:
    """Per token split (D/2, D/4): share of held-out runs inside their interval, the number of
    runs, and the mean |error| of ln L; plus ``seconds`` and ``skipped`` (splits not fitted)."""
    t0 = time.perf_counter()
    hits: dict[str, list] = {s: [] for s in TOKEN_SCHEMES}
    errs: dict[str, list] = {s: [] for s in TOKEN_SCHEMES}
    skipped = 0
    for r in range(replicates):
        pts = synthetic_case(form, noise=noise, rng_seed=first_seed + r, seeds=1)
        for h in holdouts(pts, form):
            if h.scheme not in TOKEN_SCHEMES:
                continue
            train, test = pts.subset(h.train(pts)), pts.subset(h.test(pts))
            try:
                check_fittable(FORMS[form], train)
                fit = fit_form(form, train)
            except UserError:
                skipped += 1
                continue
            boot = bootstrap(fit, train, draws=draws, seed=r)
            lo, hi = interval(predictive_draws(fit, boot, test, seed=r), level)
            y = np.log(test.loss)
            hits[h.scheme] += list((y >= lo) & (y <= hi))
            errs[h.scheme] += list(np.abs(fit.predict_log(test) - y))
    out: dict = {"seconds": time.perf_counter() - t0, "skipped": skipped,
                 "replicates": replicates, "draws": draws, "level": level}
    for s in TOKEN_SCHEMES:
        out[s] = {"coverage": float(np.mean(hits[s])) if hits[s] else float("nan"),
                  "runs": len(hits[s]),
                  "mean_abs_err": float(np.mean(errs[s])) if errs[s] else float("nan")}
    both = hits["D/2"] + hits["D/4"]
    out["all"] = {"coverage": float(np.mean(both)) if both else float("nan"), "runs": len(both)}
    return out
