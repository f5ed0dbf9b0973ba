"""Floor-anchored joint forms with shared exponents: the loss is anchored on the dense teacher
L_dense(N) or on the dense-KD twin L_densekd(N, D) and a shared C N^-gamma D^-beta term decays
towards it (see ``_Anchored``).
"""

from __future__ import annotations

import numpy as np

from castlab.law.formbase import Form, Inputs, _col, _grid


class _Anchored(Form):
    """Floor-anchored joint forms: ln L = ln F + h(T), T = C N^-gamma D^-beta with one exponent
    pair shared by every size, the floor F given per run (teacher or dense-kd twin loss), so the
    D-curve needs only two budgets (beta from their ratio, C from the level). Subclasses choose
    F (``needs``) and h (additive excess over the floor, or a relative one)."""

    params = ("c", "gamma", "beta")  # C = e^c N0^gamma D0^beta
    uses_n = True
    relative = True  # h(T) = ln(1 + T); False: L = F + T

    def floor(self, x: Inputs) -> np.ndarray:
        """The anchor F per point (nats/token)."""
        raise NotImplementedError

    def bounds(self, loss, x):
        return [(-30.0, float(np.log(10 * loss.max()))), (-1.0, 3.0), (0.0, 3.0)]

    def starts(self, loss, x):
        f = self.floor(x)
        excess = (loss / f - 1) if self.relative else (loss - f)
        pos = excess[excess > 0]
        lvl = float(np.median(pos)) if len(pos) else 1e-3 * float(np.median(loss))
        return _grid(np.log(lvl * np.array([0.3, 1.0, 3.0])), [0.0, 0.3, 1.0], [0.1, 0.3, 0.6, 1.2])

    def log_loss(self, theta, x, jac=False):
        c, ga, be = (_col(theta, i) for i in range(3))
        f = self.floor(x)
        with np.errstate(over="ignore"):
            t = np.exp(np.minimum(c - ga * x.logn - be * x.logd, 700.0))
        if self.relative:
            y, dt = np.log(f) + np.log1p(t), t / (1 + t)
        else:
            total = f + t
            y, dt = np.log(total), t / total
        if not jac:
            return y
        return y, np.stack([dt, -dt * x.logn, -dt * x.logd], axis=-1)

    def public(self, theta, sc):
        c, ga, be = map(float, theta)
        return {"C": np.exp(c) * sc.n0**ga * sc.d0**be, "gamma": ga, "beta": be}

    def internal(self, v, sc):
        c = np.log(v["C"]) - v["gamma"] * np.log(sc.n0) - v["beta"] * np.log(sc.d0)
        return np.array([c, v["gamma"], v["beta"]])


class TeacherAdd(_Anchored):
    """L = L_teacher(N) + C N^-gamma D^-beta: the dense teacher is the floor (D -> infinity)."""

    name = "teacher_add"
    description = "L = L_teacher(N) + C*N^-gamma*D^-beta"
    needs = ("ldense",)
    relative = False

    def floor(self, x):
        return x.ldense


class TeacherMul(_Anchored):
    """L = L_teacher(N) (1 + C N^-gamma D^-beta): a relative excess over the teacher."""

    name = "teacher_mul"
    description = "L = L_teacher(N)*(1 + C*N^-gamma*D^-beta)"
    needs = ("ldense",)

    def floor(self, x):
        return x.ldense


class KdRatio(_Anchored):
    """L = L_densekd(N, D) (1 + C N^-gamma D^-beta): the ratio to the dense-kd twin closes with D.

    Like kd_gap, predictions use the dense-kd curve fitted to the twins (the twin of an unseen
    budget is not known)."""

    name = "kd_ratio"
    description = "L = L_densekd(N,D)*(1 + C*N^-gamma*D^-beta)"
    needs = ("lkd",)

    def floor(self, x):
        return x.lkd
