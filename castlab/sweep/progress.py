"""Overall sweep progress: one line per run to do, 'run k of N', elapsed time and ETA, printed
above the run's own progress bar. Runs planned as done get no line (the sweep prints one
summary line for them), so N counts what this invocation has to run."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from castlab.sweep.plan import format_seconds


@dataclass
class SweepProgress:
    """Counts runs across the teacher and run batches of one sweep invocation.

    The ETA is the estimates of the runs still to do, scaled by how long the runs executed so
    far took against their own estimates (so a busy machine's slowdown carries forward), over
    the ``slots`` runs the backend trains at once (the local backend's CPU runs).
    """

    total: int  # runs to do
    estimates: dict[str, float]  # run_id -> estimated seconds (0: unknown) of every run to do
    started: float = field(default_factory=time.time)
    position: int = 0
    spent: float = 0.0  # wall seconds of the runs executed so far
    spent_estimate: float = 0.0  # their estimates
    slots: int = 1  # runs at once
    finished: int = 0  # runs to do that have ended
    remaining: float = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = sum(self.estimates.values())

    def eta(self) -> float | None:
        """Seconds left, or None while nothing has run and nothing is estimated."""
        scale = self.spent / self.spent_estimate if self.spent_estimate > 0 else 1.0
        left = len(self.estimates) - self.finished  # in flight or not yet started
        return self.remaining * scale / max(1, min(self.slots, left)) if self.remaining else None

    def begin(self, run_id: str, label: str, echo: bool = True) -> float:
        """Print the header line of the next run to do; returns its start time. A run that is
        not to do (done when the sweep started) is skipped silently."""
        if run_id not in self.estimates:
            return time.time()
        self.position += 1
        if echo:
            print(f"[run {self.position}/{self.total} | elapsed "
                  f"{format_seconds(time.time() - self.started)} | ETA "
                  f"{format_seconds(self.eta())}] {label}  ({run_id})", file=sys.stderr,
                  flush=True)
        return time.time()

    def end(self, run_id: str, began: float, executed: bool) -> None:
        """Account a finished run; ``executed`` is False for a skipped (already done) run."""
        estimate = self.estimates.get(run_id, 0.0)
        self.finished += run_id in self.estimates
        self.remaining = max(self.remaining - estimate, 0.0)
        if executed and estimate > 0:
            self.spent += time.time() - began
            self.spent_estimate += estimate
