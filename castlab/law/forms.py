"""Scaling-law forms: a registry of name -> form, each predicting log L with an analytic Jacobian.

Every form works on rescaled inputs (``logn = ln(N/N0)``, ``logd = ln(D/D0)`` with N0, D0 the
geometric means of the fitted data) so all internal parameters are O(1); ``public`` converts the
internal parameter vector back to the published parametrisation in original units.

``log_loss(theta, x)`` accepts ``theta`` of shape (p,) or (K, p): the (K, p) case evaluates K
parameter vectors at once (start-grid screening, bootstrap predictions) and returns (K, n).

Adding a form: subclass ``Form``, fill in the class attributes and the four methods, and add an
instance to ``FORMS``.
"""

from __future__ import annotations

import numpy as np

from castlab.law.anchored import KdRatio, TeacherAdd, TeacherMul
from castlab.law.annealing import LrAnneal
from castlab.law.formbase import (  # noqa: F401 - Form, Inputs, Scales, TINY are re-exported
    TINY,
    Form,
    Inputs,
    Scales,
    _col,
    _grid,
    _lse_terms,
    _safe_log,
)


class Chinchilla(Form):
    """L = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022; Epoch's refit)."""

    name = "chinchilla"
    description = "L = E + A/N^alpha + B/D^beta"
    params = ("e", "a", "b", "alpha", "beta")  # E = e^e, A = e^a N0^alpha, B = e^b D0^beta
    uses_n = True
    d_params = 2

    def bounds(self, loss, x):
        top = float(np.log(10 * loss.max()))
        return [(-7.0, float(np.log(loss.max()))), (-30.0, top), (-30.0, top), (0.0, 3.0), (0.0, 3.0)]

    def starts(self, loss, x):
        m = float(np.median(loss))
        fr = np.log(m * np.array([0.02, 0.1, 0.3, 0.6]))
        return _grid(np.log(m * np.array([0.3, 0.6, 0.85])), fr, fr, [0.1, 0.3, 0.6, 1.2],
                     [0.1, 0.3, 0.6, 1.2])

    def log_loss(self, theta, x, jac=False):
        e, a, b, al, be = (_col(theta, i) for i in range(5))
        terms = [e + np.zeros_like(x.logd), a - al * x.logn, b - be * x.logd]
        if not jac:
            return _lse_terms(terms, None)
        return _lse_terms(terms, [{0: 1.0}, {1: 1.0, 3: -x.logn}, {2: 1.0, 4: -x.logd}], 5)

    def public(self, theta, sc):
        e, a, b, al, be = map(float, theta)
        return {"E": np.exp(e), "A": np.exp(a) * sc.n0**al, "B": np.exp(b) * sc.d0**be,
                "alpha": al, "beta": be}

    def internal(self, v, sc):
        return np.array([np.log(v["E"]), np.log(v["A"]) - v["alpha"] * np.log(sc.n0),
                         np.log(v["B"]) - v["beta"] * np.log(sc.d0), v["alpha"], v["beta"]])


class PowerD(Form):
    """Per size: L = L_inf + B / D^beta (a saturating power law in tokens)."""

    name = "power_d"
    description = "per size: L = L_inf + B*D^-beta"
    params = ("l", "b", "beta")  # L_inf = e^l, B = e^b D0^beta
    per_size = True
    min_budgets = 3
    d_params = 2

    def bounds(self, loss, x):
        top = float(np.log(10 * loss.max()))
        return [(-7.0, float(np.log(loss.max()))), (-30.0, top), (0.0, 4.0)]

    def starts(self, loss, x):
        m = float(np.median(loss))
        return _grid(np.log(m * np.array([0.2, 0.5, 0.8, 0.95])),
                     np.log(m * np.array([0.01, 0.05, 0.2, 0.5])), [0.05, 0.2, 0.5, 1.0, 2.0])

    def log_loss(self, theta, x, jac=False):
        linf, b, be = (_col(theta, i) for i in range(3))
        terms = [linf + np.zeros_like(x.logd), b - be * x.logd]
        if not jac:
            return _lse_terms(terms, None)
        return _lse_terms(terms, [{0: 1.0}, {1: 1.0, 2: -x.logd}], 3)

    def public(self, theta, sc):
        linf, b, be = map(float, theta)
        return {"L_inf": np.exp(linf), "B": np.exp(b) * sc.d0**be, "beta": be}

    def internal(self, v, sc):
        return np.array([np.log(v["L_inf"]), np.log(v["B"]) - v["beta"] * np.log(sc.d0),
                         v["beta"]])


class LogLinear(Form):
    """Per size: L = a - b ln D (no floor: the limit of power_d as beta -> 0)."""

    name = "loglinear"
    description = "per size: L = a - b*ln(D)"
    params = ("a", "b")  # internal a is the loss at D = D0
    per_size = True

    def bounds(self, loss, x):
        return [(1e-6, float(10 * loss.max())), (-10.0, 10.0)]

    def starts(self, loss, x):
        m = float(np.median(loss))
        return _grid(m * np.array([0.8, 1.0, 1.2]), [0.0, 0.02, 0.1, 0.3])

    def log_loss(self, theta, x, jac=False):
        total = _col(theta, 0) - _col(theta, 1) * x.logd
        y, inv = _safe_log(total)
        if not jac:
            return y
        return y, np.stack([inv, -x.logd * inv], axis=-1)

    def public(self, theta, sc):
        a, b = map(float, theta)
        return {"a": a + b * np.log(sc.d0), "b": b}

    def internal(self, v, sc):
        return np.array([v["a"] - v["b"] * np.log(sc.d0), v["b"]])



class _GapParams:
    """Public <-> internal parameters shared by the gap forms: G_inf + C N^-gamma D^-beta,
    fitted as c = ln C - gamma ln N0 - beta ln D0 so N and D can be rescaled near 1."""

    def public(self, theta, sc):
        g, c, ga, be = map(float, theta)
        return {"G_inf": g, "C": np.exp(c) * sc.n0**ga * sc.d0**be, "gamma": ga, "beta": be}

    def internal(self, v, sc):
        c = np.log(v["C"]) - v["gamma"] * np.log(sc.n0) - v["beta"] * np.log(sc.d0)
        return np.array([v["G_inf"], c, v["gamma"], v["beta"]])

    @staticmethod
    def _gap_terms(theta, x):
        """(G_inf, C N^-gamma D^-beta) for stacked thetas: the shared part of both gap laws."""
        g, c, ga, be = (_col(theta, i) for i in range(4))
        return g, np.exp(c - ga * x.logn - be * x.logd)


class DenseGap(_GapParams, Form):
    """L = L_dense(N) + G_inf + C N^-gamma D^-beta (gap to the dense teacher closes with D)."""

    name = "dense_gap"
    description = "L = L_dense(N) + G_inf + C*N^-gamma*D^-beta"
    params = ("g", "c", "gamma", "beta")  # C = e^c N0^gamma D0^beta
    uses_n = True
    d_params = 2
    needs = ("ldense",)

    def bounds(self, loss, x):
        return [(-0.95 * float(np.nanmin(x.ldense)), float(loss.max())),
                (-30.0, float(np.log(10 * loss.max()))), (0.0, 3.0), (0.0, 3.0)]

    def starts(self, loss, x):
        gap = float(np.median(loss - x.ldense))
        scale = max(abs(gap), 0.01 * float(np.median(loss)))
        return _grid([gap - scale, gap - 0.5 * scale, 0.0, 0.5 * gap],
                     np.log(scale * np.array([0.1, 0.5, 1.0, 2.0])), [0.0, 0.3, 1.0],
                     [0.1, 0.3, 0.6, 1.2])

    def log_loss(self, theta, x, jac=False):
        g, t = self._gap_terms(theta, x)
        y, inv = _safe_log(x.ldense + g + t)
        if not jac:
            return y
        return y, np.stack([inv, t * inv, -t * x.logn * inv, -t * x.logd * inv], axis=-1)



class KdGap(_GapParams, Form):
    """ln L_sparse(N, D) - ln L_densekd(N, D) = G_inf + C N^-gamma D^-beta (gap to the dense-kd twin)."""

    name = "kd_gap"
    description = "ln L - ln L_densekd(N,D) = G_inf + C*N^-gamma*D^-beta"
    params = ("g", "c", "gamma", "beta")  # C = e^c N0^gamma D0^beta
    uses_n = True
    d_params = 2
    needs = ("lkd",)

    def bounds(self, loss, x):
        return [(-2.0, 2.0), (-30.0, 3.0), (0.0, 3.0), (0.0, 3.0)]

    def starts(self, loss, x):
        gap = float(np.median(np.log(loss) - np.log(x.lkd)))
        scale = max(abs(gap), 1e-3)
        return _grid([gap - scale, gap - 0.5 * scale, 0.0, 0.5 * gap],
                     np.log(scale * np.array([0.1, 0.5, 1.0, 2.0])), [0.0, 0.3, 1.0],
                     [0.1, 0.3, 0.6, 1.2])

    def log_loss(self, theta, x, jac=False):
        g, t = self._gap_terms(theta, x)
        y = np.log(x.lkd) + g + t
        if not jac:
            return y
        return y, np.stack([np.ones_like(t), t, -t * x.logn, -t * x.logd], axis=-1)



class Frantar(Form):
    """Frantar et al. 2023: L = (a_S (1-S)^b_S + c_S) (1/N)^b_N + (a_D / D)^b_D + c."""

    name = "frantar"
    description = "L = (a_S*(1-S)^b_S + c_S)*N^-b_N + (a_D/D)^b_D + c"
    # a_S = e^p N0^b_N, c_S = e^q N0^b_N, a_D = D0 e^(k / b_D), c = e^e
    params = ("p", "b_S", "q", "b_N", "k", "b_D", "e")
    uses_n = True
    d_params = 2
    min_sparsities = 3
    needs = ("s",)

    def bounds(self, loss, x):
        top = float(np.log(10 * loss.max()))
        return [(-30.0, top), (0.0, 5.0), (-30.0, top), (0.0, 3.0), (-30.0, top), (0.0, 3.0),
                (-7.0, float(np.log(loss.max())))]

    def starts(self, loss, x):
        m = float(np.median(loss))
        fr = np.log(m * np.array([0.05, 0.3]))
        return _grid(fr, [0.5, 1.5], fr, [0.2, 0.6], np.log(m * np.array([0.02, 0.1, 0.3])),
                     [0.1, 0.4, 1.0], np.log(m * np.array([0.3, 0.7])))

    def log_loss(self, theta, x, jac=False):
        p, bs, q, bn, k, bd, e = (_col(theta, i) for i in range(7))
        l1s = np.log1p(-x.s)
        terms = [p + bs * l1s - bn * x.logn, q - bn * x.logn, k - bd * x.logd,
                 e + np.zeros_like(x.logd)]
        if not jac:
            return _lse_terms(terms, None)
        grads = [{0: 1.0, 1: l1s, 3: -x.logn}, {2: 1.0, 3: -x.logn}, {4: 1.0, 5: -x.logd},
                 {6: 1.0}]
        return _lse_terms(terms, grads, 7)

    def public(self, theta, sc):
        p, bs, q, bn, k, bd, e = map(float, theta)
        a_d = sc.d0 * np.exp(k / bd) if bd > 0 else float("nan")
        return {"a_S": np.exp(p) * sc.n0**bn, "b_S": bs, "c_S": np.exp(q) * sc.n0**bn,
                "b_N": bn, "a_D": a_d, "b_D": bd, "c": np.exp(e)}

    def internal(self, v, sc):
        ln0 = np.log(sc.n0)
        return np.array([np.log(v["a_S"]) - v["b_N"] * ln0, v["b_S"],
                         np.log(v["c_S"]) - v["b_N"] * ln0, v["b_N"],
                         v["b_D"] * (np.log(v["a_D"]) - np.log(sc.d0)), v["b_D"], np.log(v["c"])])


FORMS: dict[str, Form] = {
    f.name: f for f in (PowerD(), LogLinear(), DenseGap(), KdGap(), Chinchilla(), Frantar(),
                        TeacherAdd(), TeacherMul(), KdRatio(), LrAnneal())
}


def on_bounds(form: Form, theta: np.ndarray, loss: np.ndarray, x: Inputs) -> list[str]:
    """Internal parameter names of ``theta`` (p,) that ended on a box bound: not identified."""
    out = []
    for name, v, (lo, hi) in zip(form.params, theta, form.bounds(loss, x), strict=True):
        tol = 1e-6 * max(1.0, hi - lo)
        if v <= lo + tol or v >= hi - tol:
            out.append(name)
    return out


def get_form(name: str) -> Form:
    """The registered form called ``name``; a UserError lists the allowed names otherwise."""
    from castlab.errors import UserError

    if name not in FORMS:
        raise UserError(f"--form: unknown law form '{name}', allowed auto, {', '.join(FORMS)}")
    return FORMS[name]
