"""Masked forward with a straight-through gradient, for the SR-STE and AST-style baselines.

- SR-STE: Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From
  Scratch" (ICLR 2021, arXiv 2102.04010). Forward with W * mask, the dense gradient passes
  straight through to all of W, and the "sparse-refined" term lambda_W * (~mask) * W is added to
  the gradient so pruned weights decay (their default lambda_W = 2e-4).
- AST: Huang et al. 2024, "Pruning Large Language Models with Semi-Structural Adaptive Sparse
  Training" (AAAI 2025, arXiv 2407.20584). Same masked forward, with the decay on masked
  weights ramped up over the run (here lambda * alpha, alpha = t / T) and distillation.

The mask lives in a ``torch.nn.utils.parametrize`` parametrization on ``linear.weight`` and is
refreshed by an explicit call (every T1 steps, from the current weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from castlab.models import in_scope_linears
from castlab.sparsity.decay import masked_kept_ratio
from castlab.sparsity.masks import check_nm_args, nm_mask
from castlab.sparsity.scaling import raw_weight


class _MaskSTE(torch.autograd.Function):
    """Forward W * mask; backward passes the gradient to W unchanged (straight through).

    The same as W + (W * mask - W).detach(), in one pass and without keeping W for backward.
    """

    @staticmethod
    def forward(ctx, weight, mask):
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class MaskedForward(nn.Module):
    """Parametrization applying the current N:M mask with a straight-through gradient."""

    def __init__(self, shape: torch.Size, device: torch.device):
        super().__init__()
        # A buffer, so it is saved with the model's state_dict (checkpoints resume the same mask).
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """W * mask in value, identity in gradient."""
        return _MaskSTE.apply(weight, self.mask)


def _masked_forward(linear: nn.Module) -> MaskedForward | None:
    if not parametrize.is_parametrized(linear, "weight"):
        return None
    return next((p for p in linear.parametrizations.weight if isinstance(p, MaskedForward)), None)


def _pre_mask_weight(linear: nn.Module) -> torch.Tensor:
    """The weight as it enters the MaskedForward (raw W through any earlier parametrizations)."""
    plist = linear.parametrizations.weight
    weight = plist.original
    for p in plist:
        if isinstance(p, MaskedForward):
            break
        weight = p(weight)
    return weight


class MaskedModel:
    """Handle on a model whose in-scope Linears run a masked forward; refresh and diagnostics."""

    def __init__(self, model: nn.Module, n: int, m: int):
        self.model, self.n, self.m = model, n, m
        self.layers = [(name, lin) for name, lin in in_scope_linears(model)
                       if _masked_forward(lin) is not None]
        self.flip_rates: list[float] = []
        self._refreshed = False

    @property
    def flip_rates(self) -> list[float]:
        """Fraction of mask entries changed per refresh after the first. Fused (CUDA) refreshes
        count on the device; their counts are read here, in one sync for all of them."""
        if self._device_flips:
            counts = torch.stack([c for c, _ in self._device_flips]).tolist()
            self._flip_rates.extend(c / total for c, (_, total)
                                    in zip(counts, self._device_flips, strict=True))
            self._device_flips.clear()
        return self._flip_rates

    @flip_rates.setter
    def flip_rates(self, value: list[float]) -> None:
        self._flip_rates = list(value)
        self._device_flips: list[tuple[torch.Tensor, int]] = []

    @torch.no_grad()
    def refresh(self) -> float | None:
        """Recompute every mask from the current weights; returns the flip rate (None the 1st
        time, and on a fused device, where reading it would wait for the GPU: see flip_rates)."""
        from castlab.sparsity.adams import FUSED_DEVICES

        if self.layers and raw_weight(self.layers[0][1]).device.type in FUSED_DEVICES:
            self._refresh_fused()
            return None
        changed = total = 0
        for name, linear in self.layers:
            holder = _masked_forward(linear)
            new = nm_mask(_pre_mask_weight(linear), self.n, self.m, name)
            changed += int(torch.count_nonzero(holder.mask != new))
            total += new.numel()
            holder.mask.copy_(new)
        rate = None
        if self._refreshed and total:
            rate = changed / total
            self.flip_rates.append(rate)
        self._refreshed = True
        return rate

    def _refresh_fused(self) -> None:
        """The CUDA refresh: AdamS's fused N:M pass over every weight (castlab.sparsity.fused),
        changed entries counted on the device; no host sync."""
        from castlab.sparsity.fused import fused_nm_pruned

        holders = [_masked_forward(linear) for _, linear in self.layers]
        weights = [_pre_mask_weight(linear) for _, linear in self.layers]
        # the masks as the fused pass counts them: uint8, 1 = pruned (none before the first)
        olds = [torch.logical_not(h.mask).view(torch.uint8) if self._refreshed else None
                for h in holders]
        news, changed = fused_nm_pruned(weights, olds, self.n, self.m)
        for holder, new in zip(holders, news, strict=True):
            torch.logical_not(new.view(torch.bool), out=holder.mask)
        if self._refreshed and weights:
            self._device_flips.append((changed, sum(w.numel() for w in weights)))
        self._refreshed = True

    def weights(self) -> list[torch.Tensor]:
        """The raw (trainable) weights, in layer order."""
        return [raw_weight(linear) for _, linear in self.layers]

    def masks(self) -> list[torch.Tensor]:
        """The current masks (True = kept), in layer order."""
        return [_masked_forward(linear).mask for _, linear in self.layers]

    def mask_dict(self) -> dict[str, torch.Tensor]:
        """Layer name -> current mask (what ``finalize`` should keep)."""
        return {name: _masked_forward(linear).mask.clone() for name, linear in self.layers}

    def masked_kept_ratio(self) -> float:
        """Mean |W| of masked entries / mean |W| of kept ones, pooled over layers."""
        return masked_kept_ratio(self.weights(), self.masks())

    def last_flip_rate(self) -> float:
        """Flip rate of the latest refresh (NaN before the second refresh)."""
        return self.flip_rates[-1] if self.flip_rates else float("nan")


def attach_masked_forward(model: nn.Module, n: int = 2, m: int = 4) -> MaskedModel:
    """Register a MaskedForward on every in-scope Linear, compute the first masks, return a handle."""
    check_nm_args(n, m)
    layers = in_scope_linears(model)
    for name, linear in layers:  # validate shapes first (UserError naming the layer)
        nm_mask(raw_weight(linear).detach()[:1], n, m, name)
    for _, linear in layers:
        if _masked_forward(linear) is None:
            weight = raw_weight(linear)
            parametrize.register_parametrization(linear, "weight",
                                                 MaskedForward(weight.shape, weight.device))
    handle = MaskedModel(model, n, m)
    handle.refresh()
    return handle


def ste_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> mask of every in-scope Linear that has a masked forward (may be empty)."""
    found = {}
    for name, linear in in_scope_linears(model):
        holder = _masked_forward(linear)
        if holder is not None:
            found[name] = holder.mask.clone()
    return found


@torch.no_grad()
def srste_decay_(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                 lam_w: float) -> None:
    """SR-STE (Zhou et al. 2021): grad += lam_w * (~mask) * W, in place, for each weight."""
    if lam_w == 0:
        return
    for w, mask in zip(weights, masks, strict=True):
        if w.grad is None:
            continue
        w.grad.add_(w * ~mask, alpha=lam_w)


def ast_decay_(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], lam: float,
               alpha: float) -> None:
    """AST-style (Huang et al. 2024) masked-weight decay ramped by alpha = t/T: grad += lam*alpha*(~mask)*W."""
    srste_decay_(weights, masks, lam * min(max(alpha, 0.0), 1.0))
