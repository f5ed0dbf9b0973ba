"""Trajectories from castlab's own stores: every evaluated checkpoint of each run's curve.parquet
as a point of its own (``castlab fit-law RESULTS --curves``).

A checkpoint row copies its run's result row with the checkpoint's tokens, eval_loss and the
learning rate it was evaluated at; all rows of one run keep its run_id, so validation holds out
each run's last checkpoint and the bootstrap resamples runs whole (castlab.law.validate,
castlab.law.bootstrap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from castlab.errors import UserError
from castlab.law.annealing import areas_at
from castlab.paths import is_plain_name, read_regular_file

CURVE_FILE = "curve.parquet"  # castlab.store.CURVE_FILE (not imported: keeps the law light)


def with_curves(results: str | Path, rows: pd.DataFrame, method: str) -> pd.DataFrame:
    """``rows`` with one extra row per intermediate evaluation in the curves of ``method``'s ok
    runs (the final evaluation stays the result row itself). Every row of a run with a logged lr
    gets its learning-rate areas at its step (``lr_area``, ``lr_anneal_area``: the
    schedule-aware form's inputs, castlab.law.annealing); others NaN. Runs without a curve, or
    whose curve has no eval_loss, keep only their result row; that none has one is a
    UserError."""
    root = Path(results)
    rows = rows.assign(lr_area=np.nan, lr_anneal_area=np.nan)
    extra, found = [], 0
    keep = rows[(rows["status"] == "ok") & (rows["method"] == method)]
    for i, row in keep.iterrows():
        # rows may come from elsewhere: a run id names a folder only as one plain path part
        if not is_plain_name(str(row["run_id"])):
            continue
        path = root / str(row["run_id"]) / CURVE_FILE
        if not path.exists():
            continue
        curve = _read_curve(path)
        if "eval_loss" not in curve or "tokens" not in curve:
            continue
        ev = curve[curve["eval_loss"].notna() & (curve["tokens"] < float(row["tokens"]))]
        found += 1
        areas = _areas(curve, ev)
        if areas is not None:
            rows.loc[i, ["lr_area", "lr_anneal_area"]] = areas[0][-1], areas[1][-1]
        for k, (_, c) in enumerate(ev.iterrows()):
            extra.append({**row.to_dict(), "tokens": float(c["tokens"]), "checkpoint": True,
                          "eval_loss": float(c["eval_loss"]),
                          "lr": float(c["lr"]) if "lr" in c and np.isfinite(c["lr"]) else np.nan,
                          "lr_area": np.nan if areas is None else areas[0][k],
                          "lr_anneal_area": np.nan if areas is None else areas[1][k]})
    if not found:
        raise UserError(f"{root}: --curves: no {method} run has a {CURVE_FILE} with eval_loss")
    if not extra:
        return rows
    return pd.concat([rows, pd.DataFrame(extra)], ignore_index=True)


MAX_CURVE_BYTES = 256 * 2**20  # a curve logs ~10 columns per step: a 1M-step run is ~100 MiB


def _read_curve(path: Path) -> pd.DataFrame:
    """One run's curve.parquet, bounded before reading (a device or FIFO refused at once); a
    damaged file is a one-line UserError naming it."""
    import io

    data = read_regular_file(path, "--curves", MAX_CURVE_BYTES)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"--curves: {path}: not a readable parquet file "
                        f"({str(err).splitlines()[0][:120]})") from None


def _areas(curve: pd.DataFrame, ev: pd.DataFrame):
    """(S1, S2) at each checkpoint of ``ev`` and, last, at the curve's final step; None when the
    curve logs no lr per step."""
    if "lr" not in curve or "step" not in curve:
        return None
    logged = curve[np.isfinite(curve["lr"]) & np.isfinite(curve["step"])]
    if logged.empty:
        return None
    at = np.append(ev["step"].to_numpy(), logged["step"].max())
    return areas_at(logged["step"].to_numpy(), logged["lr"].to_numpy(), at)
