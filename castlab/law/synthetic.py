"""Synthetic runs drawn from a form with known parameters (tests, `castlab bench fit`)."""

from __future__ import annotations

import numpy as np

from castlab.law.forms import FORMS, Inputs, Scales
from castlab.law.points import Points

# The dense-kd curve kd_gap synthetic sparse runs sit on (a chinchilla law in nats/token).
KD_CURVE = {"E": 2.0, "A": 60.0, "B": 300.0, "alpha": 0.3, "beta": 0.35}


def synthetic_points(form_name: str, public: dict[str, float], sizes: dict[str, float],
                     budgets, noise: float = 0.005, seeds: int = 1, rng_seed: int = 0,
                     sparsities=(0.5,), teacher: dict[str, float] | None = None) -> Points:
    """One run per size x budget x sparsity x seed; loss = law * exp(N(0, noise)).

    ``public`` holds the form's parameters (for per-size forms ``name@size``); ``teacher`` gives
    the dense teacher loss per size (dense_gap); kd_gap twins follow ``KD_CURVE`` with the same
    noise, and the sparse loss is the noiseless twin times the gap times its own noise.
    """
    form, rng = FORMS[form_name], np.random.default_rng(rng_seed)
    grid = [(lab, n, d, s, k) for lab, n in sizes.items() for d in budgets for s in sparsities
            for k in range(seeds)]
    lab, n, d, s, seed = (np.array(v) for v in zip(*grid, strict=True))
    n, d, s = n.astype(float), d.astype(float), s.astype(float)
    ldense = np.array([teacher[a] for a in lab]) if teacher else np.full(len(n), np.nan)
    sc = Scales(1.0, 1.0)
    lkd_true = np.exp(FORMS["chinchilla"].log_loss(
        FORMS["chinchilla"].internal(KD_CURVE, sc), Inputs(np.log(n), np.log(d), s, ldense, n)))
    x = Inputs(np.log(n), np.log(d), s, ldense, lkd_true)
    if "areas" in form.needs:  # each run ends at its budget on a cosine schedule (peak lr 1)
        x.s1, x.s2 = (np.array(v) for v in zip(*(_cosine_areas(v) for v in d), strict=True))
    y = np.empty(len(n))
    for label in dict.fromkeys(lab) if form.per_size else ["*"]:
        m = np.ones(len(n), bool) if label == "*" else lab == label
        vals = {k.split("@")[0]: v for k, v in public.items()
                if label == "*" or k.endswith(f"@{label}")}
        xs = x.masked(m)
        y[m] = form.log_loss(form.internal(vals, sc), xs)
    loss = np.exp(y + noise * rng.standard_normal(len(y)))
    lkd = lkd_true * np.exp(noise * rng.standard_normal(len(y))) if "lkd" in form.needs \
        else np.full(len(n), np.nan)
    return Points(n=n, d=d, loss=loss, s=s, ldense=ldense, lkd=lkd,
                  size=lab.astype(object), seed=seed.astype(int), s1=x.s1, s2=x.s2)


AREA_TOKENS_PER_STEP = 2048  # the synthetic lr_anneal runs: 488 steps at 1M tokens


def _cosine_areas(d: float) -> tuple[float, float]:
    """(S1, S2) at the end of a warmup + cosine run of ``d`` tokens (castlab.law.annealing)."""
    from castlab.law.annealing import lr_areas

    s1, s2 = lr_areas(cosine_lr(max(2, int(d / AREA_TOKENS_PER_STEP))))
    return float(s1[-1]), float(s2[-1])


# Laptop-ladder-like synthetic studies, one per form: 4 sizes x 8 budgets (x2 seeds), losses
# 2-6 nats. Shared by the tests and `castlab bench fit` so their numbers describe the same data.
SIZES = {"s100k": 1e5, "s300k": 3e5, "s1m": 1e6, "s3m": 3e6}
BUDGETS = tuple(1e6 * 2.0**k for k in range(8))
TEACHER = {"s100k": 4.0, "s300k": 3.6, "s1m": 3.3, "s3m": 3.1}


def _per_size(values: dict[str, tuple]) -> dict[str, float]:
    return {f"{k}@{s}": v[i] for k, v in values.items() for i, s in enumerate(SIZES)}


CASES: dict[str, dict] = {
    "chinchilla": {"public": dict(KD_CURVE)},
    "power_d": {"public": _per_size({"L_inf": (3.2, 3.0, 2.8, 2.6), "B": (40.0,) * 4,
                                     "beta": (0.3, 0.32, 0.34, 0.36)})},
    "loglinear": {"public": _per_size({"a": (6.0, 5.8, 5.6, 5.4), "b": (0.12, 0.11, 0.1, 0.09)})},
    "dense_gap": {"public": {"G_inf": 0.05, "C": 1000.0, "gamma": 0.2, "beta": 0.4},
                  "teacher": TEACHER},
    "kd_gap": {"public": {"G_inf": 0.02, "C": 200.0, "gamma": 0.1, "beta": 0.4}},
    "teacher_add": {"public": {"C": 1000.0, "gamma": 0.2, "beta": 0.4}, "teacher": TEACHER},
    "teacher_mul": {"public": {"C": 300.0, "gamma": 0.2, "beta": 0.4}, "teacher": TEACHER},
    "kd_ratio": {"public": {"C": 200.0, "gamma": 0.1, "beta": 0.4}},
    "lr_anneal": {"public": _per_size({"L0": (2.0, 1.9, 1.8, 1.7), "A": (30.0,) * 4,
                                       "alpha": (0.5, 0.5, 0.5, 0.5),
                                       "C": (4e-4, 4e-4, 3e-4, 3e-4)})},
    "frantar": {"public": {"a_S": 300.0, "b_S": 1.5, "c_S": 100.0, "b_N": 0.4, "a_D": 2e5,
                           "b_D": 0.4, "c": 1.6},
                "sparsities": (0.0, 0.5, 0.75, 0.875), "seeds": 1},
}


def synthetic_case(form_name: str, noise: float = 0.005, rng_seed: int = 0, seeds: int = 2,
                   budgets=BUDGETS, sizes=None) -> Points:
    """The synthetic study of ``CASES[form_name]`` (``seeds`` unless the case fixes it)."""
    case = dict(CASES[form_name])
    public = case.pop("public")
    case.setdefault("seeds", seeds)
    return synthetic_points(form_name, public, sizes or SIZES, budgets, noise=noise,
                            rng_seed=rng_seed, **case)


# A trajectory table with known truth: one run per size, checkpoints along a warmup + cosine
# schedule (to 10% of the peak), 20 tokens per parameter at the end of each run. The loss follows
# L0(N) + B S^-beta (1 - C a), S the learning-rate area in tokens (a budgeted run's D at its end),
# a in [0, 1] the annealed share of the peak rate (an EMA of the schedule, so the decay's benefit
# lags it): checkpoints mid-schedule sit above what a run budgeted for their D reaches.
TRAJ_SIZES = (5e6, 2e7, 8e7, 3e8, 1e9, 4e9)
TRAJ_TRUTH = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 250.0, "beta": 0.3, "C": 0.3}
TOKENS_PER_STEP = 2**19


def cosine_lr(steps: int, warmup: float = 0.01, floor: float = 0.1) -> np.ndarray:
    """Per step (1..steps): linear warmup, then cosine from 1 to ``floor``."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    w = max(1, int(warmup * steps))
    cos = floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * np.clip((t - w) / (steps - w), 0, 1)))
    return np.where(t <= w, t / w, cos)


def trajectory_loss(n: float, lr: np.ndarray, truth=TRAJ_TRUTH) -> np.ndarray:
    """True loss after each step of a run of size ``n`` under schedule ``lr`` (peak 1)."""
    area = np.cumsum(lr) * TOKENS_PER_STEP / np.mean(cosine_lr(1000))  # = D at a cosine run's end
    k = 1 / max(1.0, 0.02 * len(lr))  # the annealing benefit lags the rate by ~2% of the run
    ema = np.empty(len(lr))
    acc = 1.0
    for i, v in enumerate(lr):
        acc += k * (v - acc)
        ema[i] = acc
    annealed = np.clip(1 - ema, 0, 1) / 0.9  # 0 at the peak rate, 1 at the floor
    t = truth
    return (t["E"] + t["A"] * n ** -t["alpha"]
            + t["B"] * area ** -t["beta"] * (1 - t["C"] * annealed))


def trajectory_table(sizes=TRAJ_SIZES, checkpoints: int = 24, noise: float = 0.004,
                     run_noise: float = 0.004, rng_seed: int = 0):
    """DataFrame (run, n, tokens, lr, loss): ``checkpoints`` per run, geometric from 2% of the
    run to its end; ln L carries a per-run offset (``run_noise``) and per-point noise."""
    import pandas as pd

    rng = np.random.default_rng(rng_seed)
    rows = []
    for n in sizes:
        steps = max(50, int(round(20 * n / TOKENS_PER_STEP)))
        lr = cosine_lr(steps)
        loss = trajectory_loss(n, lr)
        at = np.unique(np.geomspace(max(1, 0.02 * steps), steps, checkpoints).round().astype(int))
        offset = run_noise * rng.standard_normal()
        for s in at:
            rows.append({"run": f"run-{n:.0e}", "n": n, "tokens": s * TOKENS_PER_STEP,
                         "lr": lr[s - 1], "loss": loss[s - 1] * np.exp(offset + noise *
                                                                     rng.standard_normal())})
    return pd.DataFrame(rows)


def sparse_table(rng_seed: int = 0, noise: float = 0.005):
    """DataFrame (n, tokens, sparsity, loss) from the frantar case: 5 sizes x 3 budgets x 4
    sparsities (0, 0.5, 0.75, 0.875), like a published sparse sweep."""
    import pandas as pd

    sizes = {f"s{k}": v for k, v in enumerate((1e6, 3e6, 1e7, 3e7, 1e8))}
    pts = synthetic_points("frantar", CASES["frantar"]["public"], sizes, (2.5e7, 1e8, 4e8),
                           noise=noise, rng_seed=rng_seed, sparsities=(0.0, 0.5, 0.75, 0.875))
    return pd.DataFrame({"n": pts.n, "tokens": pts.d, "sparsity": pts.s, "loss": pts.loss})
