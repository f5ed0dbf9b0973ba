"""The schedule-aware form: the loss along a run as a function of its learning-rate schedule
(Tissue et al. 2024, "Scaling Law with Learning Rate Annealing", arXiv 2408.11029):

    L(s) = L0 + A * S1^-alpha - C * S2

S1 is the forward area (the sum of the lr over the steps so far), S2 the annealing area: each
drop of the lr adds to a momentum m_i = lambda * m_(i-1) + (lr_(i-1) - lr_i) that decays with
later steps, and S2 sums m. Every checkpoint of a run is a point of the law with its own areas,
so a mid-run checkpoint (its lr not yet annealed) is no longer read as the end of a run of
that budget. The lr warm-up adds to S1 but not to S2 (only drops after the peak anneal).
"""

from __future__ import annotations

import numpy as np

from castlab.law.formbase import Form, _col, _grid, _safe_log

ANNEAL_DECAY = 0.999  # lambda, per optimizer step (the paper's value)


def lr_areas(lr: np.ndarray, decay: float = ANNEAL_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after each step of a run whose step i (from 1) ran at ``lr[i - 1]``."""
    from scipy.signal import lfilter  # here: `--help` lists the forms without loading scipy

    lr = np.asarray(lr, dtype=np.float64)
    if not len(lr):
        return np.zeros(0), np.zeros(0)
    drops = np.zeros(len(lr))
    drops[1:] = lr[:-1] - lr[1:]
    drops[: int(np.argmax(lr)) + 1] = 0.0  # the warm-up climbs: no annealing before the peak
    momentum = lfilter([1.0], [1.0, -decay], drops)  # m_i = decay * m_(i-1) + drop_i
    return np.cumsum(lr), np.cumsum(momentum)


def areas_at(steps: np.ndarray, lr: np.ndarray, at_steps: np.ndarray,
             decay: float = ANNEAL_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) at the optimizer steps ``at_steps`` of a run whose lr was logged at ``steps``;
    steps the log skipped take the lr linearly interpolated between logged ones."""
    steps = np.asarray(steps, dtype=np.float64)
    order = np.argsort(steps)
    last = int(max(steps.max(), np.max(at_steps)))
    every = np.interp(np.arange(1, last + 1), steps[order], np.asarray(lr, float)[order])
    s1, s2 = lr_areas(every, decay)
    idx = np.clip(np.asarray(at_steps, dtype=np.int64), 1, last) - 1
    return s1[idx], s2[idx]


class LrAnneal(Form):
    """Per size: L = L0 + A S1^-alpha - C S2 over every checkpoint of the size's runs."""

    name = "lr_anneal"
    description = "per size: L = L0 + A*S1^-alpha - C*S2 (lr areas, Tissue et al. 2024)"
    params = ("l0", "a", "alpha", "c")  # L0 = e^l0, A = e^a a0^alpha, C = e^c / a0
    per_size = True
    min_budgets = 4
    d_params = 3
    needs = ("areas",)

    def bounds(self, loss, x):
        top = float(np.log(10 * loss.max()))
        return [(-7.0, float(np.log(loss.max()))), (-30.0, top), (0.0, 4.0), (-30.0, top)]

    def starts(self, loss, x):
        m = float(np.median(loss))
        return _grid(np.log(m * np.array([0.3, 0.6, 0.85])), np.log(m * np.array([0.05, 0.2, 0.5])),
                     [0.2, 0.5, 1.0], np.log(m * np.array([1e-3, 1e-2, 0.1])))

    def log_loss(self, theta, x, jac=False):
        l0, a, al, c = (_col(theta, i) for i in range(4))
        ls1 = np.log(x.s1)
        floor, forward = np.exp(l0), np.exp(a - al * ls1)
        anneal = np.exp(c) * x.s2
        y, inv = _safe_log(floor + forward - anneal)
        if not jac:
            return y
        return y, np.stack([floor * inv, forward * inv, -ls1 * forward * inv, -anneal * inv],
                           axis=-1)

    def public(self, theta, sc):
        l0, a, al, c = map(float, theta)
        return {"L0": np.exp(l0), "A": np.exp(a) * sc.a0**al, "alpha": al, "C": np.exp(c) / sc.a0}

    def internal(self, v, sc):
        return np.array([np.log(v["L0"]), np.log(v["A"]) - v["alpha"] * np.log(sc.a0),
                         v["alpha"], np.log(v["C"] * sc.a0)])
