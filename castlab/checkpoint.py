"""Training checkpoints that load without running code: tensors and plain data only.

A results folder is shared and downloaded, so a ``checkpoint/state.pt`` is a file castlab did not
just write. A full-pickle ``torch.load`` would run any payload inside it; here every
checkpoint is written as tensors, dicts, lists, tuples, ints, floats, strings and None, and read
back with ``weights_only=True``, which refuses anything else before executing it. The host RNG
states (numpy's and Python's, normally tuples holding arrays) are stored as int64 tensors.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from castlab.errors import UserError


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` atomically (temp file, then rename) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; UserError (one line) if it holds anything else.

    The unpickler stops at the first non-allowed global, so a payload never runs.
    """
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else is damaged
        raise UserError(f"{path}: unreadable checkpoint (not a torch checkpoint: truncated or "
                        "overwritten); delete it to restart the run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: refused to load a checkpoint holding more than tensors and plain "
                        f"data (it references {_unsafe_globals(path)}); delete it to restart the "
                        "run from step 0") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}: "
                        f"{str(err).strip()[:200]}); delete it to restart the run") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a castlab checkpoint (a {type(state).__name__}, "
                        "expected a dict); delete it to restart the run")
    return state


def _unsafe_globals(path: Path) -> str:
    """The code references a refused checkpoint holds (read from its pickle opcodes, not run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message
        return "objects other than tensors"
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def host_rng_state() -> dict[str, torch.Tensor]:
    """torch's CPU, numpy's global and Python's ``random`` states, as tensors."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    assert name == "MT19937", name
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "numpy_extra": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor(gauss, dtype=torch.float64),
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_extra": torch.tensor([version, gauss_next is not None], dtype=torch.int64),
        "python_gauss": torch.tensor(0.0 if gauss_next is None else gauss_next,
                                     dtype=torch.float64),
    }


def set_host_rng_state(rng: dict[str, torch.Tensor]) -> None:
    """Restore what ``host_rng_state`` recorded."""
    torch.set_rng_state(rng["torch"].cpu())
    pos, has_gauss = (int(x) for x in rng["numpy_extra"].tolist())
    np.random.set_state(("MT19937", rng["numpy"].cpu().numpy().astype(np.uint32), pos, has_gauss,
                         float(rng["numpy_gauss"])))
    version, has_next = (int(x) for x in rng["python_extra"].tolist())
    gauss_next = float(rng["python_gauss"]) if has_next else None
    random.setstate((version, tuple(int(x) for x in rng["python"].tolist()), gauss_next))
