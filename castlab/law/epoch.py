"""Epoch AI's Chinchilla replication data and published fit: the external check of the fitter.

Besiroglu, Erdil, Barnett, You (2024), "Chinchilla Scaling: A replication attempt"; data from
epoch-research/analyzing-chinchilla (tests/data/README.md has the attribution).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law.points import Points

EPOCH_CSV = Path(__file__).resolve().parents[2] / "tests" / "data" / "chinchilla_epoch_svg_extracted.csv"

# Their published point estimates and bootstrap 95% intervals (4,000 resamples).
EPOCH_PARAMS = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
EPOCH_INTERVALS = {"E": (1.769, 1.871), "A": (285.0, 744.0), "B": (1042.0, 5810.0),
                   "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}
# A straightforward reimplementation of their procedure (4,500-start L-BFGS grid, numeric
# gradients) measured 276 s on the project's machine; castlab must be >= 100x faster.
EPOCH_NAIVE_SECONDS = 276.0


def epoch_points(path: str | Path | None = None, drop_highest: int = 5) -> Points:
    """Their procedure's data: D = FLOP / (6 N), the ``drop_highest`` highest-loss points removed."""
    path = Path(path) if path is not None else EPOCH_CSV
    if not path.exists():
        raise UserError(f"{path}: Epoch reference data not found (copy it from shared/data)")
    df = pd.read_csv(path).sort_values("loss").iloc[: -drop_highest or None]
    n = df["Model Size"].to_numpy(np.float64)
    d = df["Training FLOP"].to_numpy(np.float64) / (6 * n)
    k = len(df)
    return Points(n=n, d=d, loss=df["loss"].to_numpy(np.float64), s=np.zeros(k),
                  ldense=np.full(k, np.nan), lkd=np.full(k, np.nan),
                  size=np.array([f"N={v:.4g}" for v in n], dtype=object), seed=np.full(k, -1))
