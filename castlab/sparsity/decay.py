"""How far AdamS drove the masked weights towards zero: the masked/kept magnitude ratio, the
typical masked magnitude, the a-priori decay budget and the warning when the measured decay
distance fell short (castlab.sparsity.masklife measures the distance)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from castlab.errors import UserError


@torch.no_grad()
def masked_kept_ratio(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> float:
    """Mean |w| over masked (False) entries / mean |w| over kept (True) entries, pooled."""
    masked_sum = kept_sum = 0.0
    masked_count = kept_count = 0
    for w, mask in zip(weights, masks, strict=True):
        a = w.detach().abs()
        kept = float((a * mask).sum())
        total = float(a.sum())
        n_kept = int(torch.count_nonzero(mask))
        kept_sum += kept
        masked_sum += total - kept
        kept_count += n_kept
        masked_count += mask.numel() - n_kept
    if kept_count == 0 or masked_count == 0 or kept_sum == 0:
        return float("nan")
    return (masked_sum / masked_count) / (kept_sum / kept_count)


def decay_budget(lr_schedule: Sequence[float] | Callable[[int], float], total_steps: int) -> float:
    """Sum over t of lr_t * t/T: how far AdamS can move a masked weight towards zero at most.

    Late in a run the step on a masked weight saturates near +-lr_t whatever lambda is, and the
    blend weighs the decay by a = t/T, so this bounds the distance travelled.
    """
    if total_steps < 1:
        raise UserError(f"decay budget: total_steps must be >= 1, got {total_steps}")
    if callable(lr_schedule):
        rates = [float(lr_schedule(t)) for t in range(total_steps)]
    else:
        rates = [float(x) for x in lr_schedule]
        if len(rates) < total_steps:
            raise UserError(
                f"decay budget: lr schedule has {len(rates)} entries for {total_steps} steps"
            )
    return sum(rates[t] * t / total_steps for t in range(total_steps))


@torch.no_grad()
def typical_masked_magnitude(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> float:
    """Mean |w| over the masked entries of ``weights`` (the distance the decay has to cover)."""
    total = sum(float((w.detach().abs() * ~mask).sum()) for w, mask in zip(weights, masks, strict=True))
    count = sum(mask.numel() - int(torch.count_nonzero(mask)) for mask in masks)
    return total / count if count else 0.0


def decay_budget_warning(distance: float, typical: float, total_steps: int) -> str | None:
    """A warning when ``distance``, how far the masked weights were measured to move towards
    zero over the run (castlab.sparsity.masklife.measured_decay_distance), is below ``typical``,
    their mean |theta| at the start; None when it is not (or nothing was measured).

    The a priori bound sum_t lr_t * t/T (``decay_budget``) assumed the masked step follows the
    ramp; once lambda dominates m it is ~sqrt(3) x lr from the first steps, so that bound warned
    on runs that ended with masked/kept 0.001.
    """
    if not (math.isfinite(distance) and math.isfinite(typical)) or distance >= typical:
        return None
    return (
        f"measured decay distance sum_t lr_t*step_t = {distance:.3g} is below the typical |theta| "
        f"of masked weights at the start ({typical:.3g}): AdamS did not drive them to zero in "
        f"{total_steps} steps, so the final prune is not lossless (raise lambda, the lr or the "
        "steps)"
    )
