"""CAST weight scaling: a learnable R x n scale per in-scope weight (CAST_SPEC.md, Weight scaling).

Row r of W (shape R x C) is cut into n contiguous blocks of C/n columns; block b is multiplied
by A[r, b] (A initialised to ones): W_eff[r, c] = A[r, c // (C/n)] * W[r, c]. C/n must be a
multiple of M, so a positive scale never reorders the entries of an N:M group.

Implemented with ``torch.nn.utils.parametrize``: ``linear.weight`` becomes W_eff, the raw W lives
at ``linear.parametrizations.weight.original`` (where AdamS's decay acts, never on A) and A is a
parameter of the parametrization module. ``fold_weight_scaling`` bakes W_eff back into a plain
weight, leaving an ordinary HF model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from castlab.errors import UserError
from castlab.models import in_scope_linears


class BlockScale(nn.Module):
    """Parametrization W -> W * A expanded over n contiguous column blocks per row."""

    def __init__(self, rows: int, n_blocks: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.n_blocks = n_blocks
        self.scale = nn.Parameter(torch.ones(rows, n_blocks, dtype=dtype, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """W_eff = A[r, c // (C/n)] * W[r, c] (a broadcast over a [R, n, C/n] view, no copy of A)."""
        rows, cols = weight.shape
        blocks = weight.view(rows, self.n_blocks, cols // self.n_blocks)
        return (blocks * self.scale.unsqueeze(-1)).view(rows, cols)


def raw_weight(linear: nn.Module) -> torch.Tensor:
    """The raw weight W of a Linear: the parametrization's original if any, else ``.weight``."""
    if parametrize.is_parametrized(linear, "weight"):
        return linear.parametrizations.weight.original
    return linear.weight


def block_scale(linear: nn.Module) -> BlockScale | None:
    """The BlockScale parametrization of ``linear.weight``, or None."""
    if not parametrize.is_parametrized(linear, "weight"):
        return None
    return next((p for p in linear.parametrizations.weight if isinstance(p, BlockScale)), None)


def attach_weight_scaling(model: nn.Module, n_blocks: int = 2, m: int = 4) -> list[nn.Parameter]:
    """Add a learnable R x n_blocks scale to every in-scope Linear; return the scale parameters.

    ``n_blocks = 0`` means no scaling (returns []). Raises UserError naming the layer when C is not
    divisible into n_blocks blocks whose width is a multiple of M.
    """
    if n_blocks < 0:
        raise UserError(f"scale_blocks must be >= 0, got {n_blocks}")
    if n_blocks == 0:
        return []
    layers = in_scope_linears(model)
    for name, linear in layers:  # check everything before touching anything
        rows, cols = raw_weight(linear).shape
        if cols % n_blocks != 0 or (cols // n_blocks) % m != 0:
            raise UserError(
                f"layer '{name}': {cols} input columns cannot be cut into {n_blocks} scale blocks "
                f"whose width is a multiple of M={m} (scale_blocks must divide {cols} into "
                f"multiples of {m})"
            )
        if block_scale(linear) is not None:
            raise UserError(f"layer '{name}' already has weight scaling attached")
    scales = []
    for _, linear in layers:
        weight = raw_weight(linear)
        module = BlockScale(weight.shape[0], n_blocks, weight.dtype, weight.device)
        parametrize.register_parametrization(linear, "weight", module)
        scales.append(module.scale)
    return scales


@torch.no_grad()
def fold_parametrizations(model: nn.Module) -> int:
    """Bake every parametrization of in-scope weights into a plain weight; return how many layers.

    Used for weight scaling (W <- W_eff) and for masked-forward methods (W <- W * mask).
    """
    folded = 0
    for _, linear in in_scope_linears(model):
        if parametrize.is_parametrized(linear, "weight"):
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
            folded += 1
    return folded


def fold_weight_scaling(model: nn.Module) -> int:
    """W <- W_eff for every scaled in-scope Linear and drop A; returns the number of layers folded."""
    return fold_parametrizations(model)
