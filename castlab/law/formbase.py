"""What a scaling-law form is: its inputs, rescaling, the ``Form`` interface, and the shared
numerical helpers (log-sum-exp with a Jacobian, a log that tolerates non-positive losses).
The forms themselves live in ``castlab.law.forms`` (registry) and ``castlab.law.anchored``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

TINY = 1e-300  # losses are clipped here before the log: a non-positive predicted loss is a miss


@dataclass
class Inputs:
    """Design arrays of one set of points, already rescaled (see module docstring)."""

    logn: np.ndarray
    logd: np.ndarray
    s: np.ndarray  # sparsity in [0, 1)
    ldense: np.ndarray  # dense teacher loss L_dense(N), nats/token (NaN where unknown)
    lkd: np.ndarray  # dense-kd twin loss L_densekd(N, D), nats/token (NaN where unknown)
    # learning-rate areas of the run up to the point (castlab.law.lrareas), divided by a0; None
    # where the points carry none
    s1: np.ndarray | None = None  # forward area: sum of the lr over the steps so far
    s2: np.ndarray | None = None  # annealing area: lr drops, each decaying with later steps

    def masked(self, m) -> Inputs:
        """The inputs of the points selected by ``m`` (a mask or indices over the last axis: a
        twin loss stacked per bootstrap draw, (B, n), is selected along n)."""
        return Inputs(*(None if v is None else v[..., m] for v in (
            self.logn, self.logd, self.s, self.ldense, self.lkd, self.s1, self.s2)))


@dataclass(frozen=True)
class Scales:
    """The rescaling constants: N' = N / n0, D' = D / d0, learning-rate areas / a0."""

    n0: float
    d0: float
    a0: float = 1.0


def _col(theta: np.ndarray, i: int) -> np.ndarray:
    """Parameter i as a column that broadcasts against (n,) data, for theta (p,) or (K, p)."""
    return theta[..., i, None]


def _grid(*axes) -> np.ndarray:
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


class Form:
    """Base class: a law with internal parameters ``params`` (see module docstring)."""

    name: str = ""
    description: str = ""
    params: tuple[str, ...] = ()
    per_size: bool = False  # True: one independent parameter set per model size
    uses_n: bool = False  # needs >= 2 sizes to be identified
    min_budgets: int = 2  # distinct token budgets needed (per size for per-size forms)
    # Parameters of the D-dependent term(s) (amplitude, exponent): a fit needs one more distinct
    # budget than this, or the D-curve is exactly determined (or flat) in them.
    d_params: int = 1
    min_sparsities: int = 1
    needs: tuple[str, ...] = ()  # extra inputs: 'ldense', 'lkd', 's'

    def bounds(self, loss: np.ndarray, x: Inputs) -> list[tuple[float, float]]:
        """Box bounds on the internal parameters for L-BFGS-B."""
        raise NotImplementedError

    def starts(self, loss: np.ndarray, x: Inputs) -> np.ndarray:
        """Grid of starting points, shape (K, p), in internal parameters."""
        raise NotImplementedError

    def log_loss(self, theta: np.ndarray, x: Inputs, jac: bool = False):
        """Predicted ln L, (n,) or (K, n); with ``jac`` also d ln L / d theta, (n, p) or (K, n, p)."""
        raise NotImplementedError

    def public(self, theta: np.ndarray, sc: Scales) -> dict[str, float]:
        """Named parameters in the published parametrisation and original units."""
        raise NotImplementedError

    def internal(self, values: dict[str, float], sc: Scales) -> np.ndarray:
        """Inverse of ``public``: internal parameter vector from named published values."""
        raise NotImplementedError


def _lse_terms(terms: list[np.ndarray], grads: list[dict[int, np.ndarray]] | None = None,
               p: int = 0):
    """ln(sum_k exp(u_k)); with ``grads`` (per term: {param index: du_k/dtheta_j}) also the (n, p)
    Jacobian. Written out rather than scipy.special.logsumexp/softmax, whose per-call overhead
    dominated the fit (400 us vs 30 us per objective on Epoch's 240 points)."""
    shape = np.broadcast_shapes(*(np.shape(t) for t in terms))
    m = np.full(shape, -np.inf)
    for t in terms:
        m = np.maximum(m, t)
    m = np.where(np.isfinite(m), m, 0.0)  # all terms -inf (or +inf): leave it to the log
    e = [np.exp(t - m) for t in terms]
    total = sum(e)
    y = m + np.log(total)
    if grads is None:
        return y
    jac = np.zeros(y.shape + (p,))
    for k, g in enumerate(grads):
        w = e[k] / total
        for j, d in g.items():
            jac[..., j] += w * d
    return y, jac


def _safe_log(total: np.ndarray):
    """ln of a predicted loss that may be non-positive; the Jacobian factor 1/L is 0 there."""
    ok = total > 0
    return np.log(np.where(ok, total, TINY)), np.where(ok, 1.0 / np.where(ok, total, 1.0), 0.0)
