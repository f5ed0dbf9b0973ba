"""Independent law fits over the CPU cores: the bootstrap's draws and the held-out splits.

Each item is fitted exactly as it would be in turn (the random draws are made before, in order),
so the results are identical to a serial run, only sooner. Worker processes are forked: no
re-import, and the fits are plain numpy/scipy. A process that has torch loaded (a test session,
a training run) stays serial, since forking after torch started its thread pools can hang the
child; so does any platform but Linux. ``CASTLAB_LAW_WORKERS`` sets the number of processes
(1: serial); the default is one per core this process may use.

Hand-written over the standard library's ProcessPoolExecutor: joblib would do the same, but it is
not among castlab's dependencies, and these pieces are few and large.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from castlab.errors import UserError

T = TypeVar("T")
R = TypeVar("R")
WORKERS_ENV = "CASTLAB_LAW_WORKERS"
_in_worker = False  # set in the forked workers: a piece is fitted serially inside them


def workers() -> int:
    """Processes to fit with: ``CASTLAB_LAW_WORKERS``, else one per usable core; 1 (serial) where
    processes cannot be forked safely."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            k = int(raw)
        except ValueError:
            k = 0
        if k < 1:
            raise UserError(f"{WORKERS_ENV}: got {raw!r}, allowed a whole number >= 1 (1: serial)")
    else:
        try:
            k = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            k = os.cpu_count() or 1
    # fork only on Linux: macOS's system BLAS (Accelerate) is not fork-safe, Windows cannot fork
    if _in_worker or "torch" in sys.modules or not sys.platform.startswith("linux"):
        return 1
    return max(1, k)


def chunks(items: Sequence[T], k: int) -> list[list[T]]:
    """``items`` in ``k`` contiguous pieces of near-equal length (order kept, none empty)."""
    k = max(1, min(k, len(items)))
    size, extra = divmod(len(items), k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return out


def map_in_order(fn: Callable[[T], R], items: Sequence[T], processes: int | None = None) -> list[R]:
    """``[fn(x) for x in items]``, on up to ``processes`` (default ``workers()``) forked
    processes when there is more than one item; ``fn`` must be a module-level function."""
    k = workers() if processes is None else processes
    if k <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=min(k, len(items)), mp_context=ctx,
                             initializer=_mark_worker) as pool:
        return list(pool.map(fn, items))


def _mark_worker() -> None:
    global _in_worker
    _in_worker = True
