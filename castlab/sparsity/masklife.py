"""The life of a sparse run's N:M mask: does it keep learning, or freeze at its first version?

A sparse method owns one ``MaskLife`` and feeds it its masks, its refresh flip rates and, at the
step before each eval, the weights before and after the optimizer step. Per eval step it reports

- ``mask_drift_initial``: fraction of mask entries that differ from the step-0 mask (cumulative);
- ``mask_drift_final``: the same against the final mask (filled in when the run ends);
- ``mask_flip_rate``: mean fraction of entries changed per refresh, over EVERY refresh since the
  previous eval (not only a refresh that happens to fall on an eval step);
- ``masked_step_lr``: mean step of the masked weights towards zero, -sign(theta) * dtheta, in
  units of that step's lr (CAST's decay saturates near sqrt(3) x lr once lambda dominates m).

Snapshots are kept bit-packed on the CPU (one bit per weight per eval) so the final-mask column
can be filled in at the end; ``state_dict`` carries everything through a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch


def _flat(masks: Sequence[torch.Tensor]) -> np.ndarray:
    return torch.cat([m.detach().reshape(-1).to("cpu", torch.bool) for m in masks]).numpy()


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a != b)) / a.size if a.size else float("nan")


class MaskLife:
    """Mask-drift, flip-rate and masked-step bookkeeping of one sparse run (see module doc)."""

    def __init__(self, total_steps: int, eval_every: int):
        self.total_steps, self.eval_every = total_steps, eval_every
        self.count = 0  # mask entries
        self.initial: np.ndarray | None = None  # packed step-0 mask
        self.snapshots: list[tuple[int, np.ndarray]] = []  # (step, packed mask) at each eval
        self.half: float = float("nan")  # drift from the step-0 mask at step T // 2
        self.typical_masked: float = float("nan")  # mean |theta| of the step-0 masked entries
        self.flips_seen = 0  # flip rates already folded into a curve record
        self.step_samples: list[tuple[int, float]] = []  # (step, masked step / lr)
        self._before: list[torch.Tensor] | None = None

    def _unpack(self, packed: np.ndarray) -> np.ndarray:
        return np.unpackbits(packed, count=self.count).astype(bool)

    def start(self, masks: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> None:
        """Remember the step-0 mask and the typical |theta| it prunes (the distance the decay
        has to cover); a no-op once known, e.g. after a resume."""
        from castlab.sparsity.decay import typical_masked_magnitude

        if self.initial is None:
            flat = _flat(masks)
            self.count, self.initial = flat.size, np.packbits(flat)
            self.typical_masked = typical_masked_magnitude(weights, masks)

    def drift_from_initial(self, masks: Sequence[torch.Tensor]) -> float:
        """Fraction of entries of ``masks`` that differ from the step-0 mask."""
        return _differ(_flat(masks), self._unpack(self.initial))

    def at_step_start(self, step: int, masks: Callable[[], Sequence[torch.Tensor]]) -> None:
        """Called at the start of every step: records the half-way drift at step T // 2
        (``masks`` is called only then: building them every step would cost a pass)."""
        if step == self.total_steps // 2 and self.initial is not None:
            self.half = self.drift_from_initial(masks())

    def samples_step(self, step: int) -> bool:
        """Whether step ``step`` (0-based) precedes an eval, where the masked step is sampled."""
        return (step + 1) % self.eval_every == 0 or step + 1 == self.total_steps

    def before_update(self, weights: Sequence[torch.Tensor]) -> None:
        """Copy the weights before a sampled optimizer step."""
        self._before = [w.detach().clone() for w in weights]

    @torch.no_grad()
    def after_update(self, step: int, weights: Sequence[torch.Tensor],
                     masks: Sequence[torch.Tensor], lr: float) -> float:
        """Mean -sign(theta)*dtheta / lr over the masked entries since ``before_update``."""
        if self._before is None or not lr > 0:
            return float("nan")
        towards = count = 0.0
        for before, after, keep in zip(self._before, weights, masks, strict=True):
            masked = ~keep
            towards += float((-(after.detach() - before) * before.sign() * masked).sum())
            count += float(masked.sum())
        self._before = None
        value = towards / count / lr if count else float("nan")
        self.step_samples.append((step, value))
        return value

    def record(self, step: int, masks: Sequence[torch.Tensor], flip_rates: Sequence[float]) -> dict:
        """Curve columns at an eval step; ``flip_rates`` is every refresh's rate so far."""
        flat = _flat(masks)
        self.snapshots = [s for s in self.snapshots if s[0] != step] + [(step, np.packbits(flat))]
        new = list(flip_rates[self.flips_seen:])
        self.flips_seen = len(flip_rates)
        sample = self.step_samples[-1] if self.step_samples else None
        return {"mask_drift_initial": _differ(flat, self._unpack(self.initial)),
                "mask_flip_rate": float(np.mean(new)) if new else float("nan"),
                "masked_step_lr": sample[1] if sample and sample[0] == step - 1 else float("nan")}

    def fill_final(self, curve: list[dict], masks: Sequence[torch.Tensor]) -> None:
        """Add ``mask_drift_final`` (against ``masks``, the final mask) to the eval records."""
        final = _flat(masks)
        drift = {step: _differ(final, self._unpack(packed)) for step, packed in self.snapshots}
        for record in curve:
            if record["step"] in drift:
                record["mask_drift_final"] = drift[record["step"]]

    def summary(self, masks: Sequence[torch.Tensor], flip_rates: Sequence[float]) -> dict:
        """Result-row columns: drift at T/2 and at the end, mean flip rate, mean masked step."""
        steps = [v for _, v in self.step_samples if math.isfinite(v)]
        return {"mask_drift": self.drift_from_initial(masks), "mask_drift_half": self.half,
                "mask_flip_rate": float(np.mean(flip_rates)) if len(flip_rates) else float("nan"),
                "masked_step_lr": float(np.mean(steps)) if steps else float("nan")}

    def state_dict(self) -> dict:
        """Plain data and uint8 tensors (loadable with ``torch.load(weights_only=True)``)."""
        return {"count": self.count, "half": self.half, "flips_seen": self.flips_seen,
                "typical_masked": self.typical_masked,
                "initial": None if self.initial is None else torch.from_numpy(self.initial),
                "snapshots": [(s, torch.from_numpy(p)) for s, p in self.snapshots],
                "step_samples": list(self.step_samples)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` saved."""
        self.count, self.half, self.flips_seen = state["count"], state["half"], state["flips_seen"]
        self.typical_masked = state["typical_masked"]
        # .cpu(): a checkpoint read onto a GPU holds CUDA tensors, which .numpy() refuses
        self.initial = None if state["initial"] is None else state["initial"].cpu().numpy()
        self.snapshots = [(s, p.cpu().numpy()) for s, p in state["snapshots"]]
        self.step_samples = [tuple(x) for x in state["step_samples"]]


def measured_decay_distance(lr_schedule: Sequence[float], samples: Sequence[tuple[int, float]]
                            ) -> float:
    """sum_t lr_t * s_t, s_t the measured masked step / lr of the eval window holding step t.

    A sample taken at step k stands for the steps after the previous sample up to k; steps past
    the last sample take the last one. With no finite sample the distance is NaN.
    """
    finite = sorted((k, v) for k, v in samples if math.isfinite(v))
    if not finite:
        return float("nan")
    total, start = 0.0, 0
    for i, (k, value) in enumerate(finite):
        end = len(lr_schedule) if i == len(finite) - 1 else k + 1
        total += value * sum(lr_schedule[start:end])
        start = end
    return total
