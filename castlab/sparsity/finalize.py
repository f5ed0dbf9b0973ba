"""End of a sparse run (CAST_SPEC.md, Finalize): hard prune, fold scales, verify exact N:M, save.

1. The mask: recomputed from the final raw weights, or the given one (one-shot pruners), or the
   one the masked forward used (SR-STE / AST parametrization). W <- W * mask.
2. Fold every parametrization: W <- W_eff * mask (scales dropped), a plain HF model.
3. Verify every in-scope matrix is N:M; NMVerificationError otherwise (the run is failed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from castlab.errors import UserError
from castlab.models import in_scope_linears
from castlab.sparsity.decay import masked_kept_ratio
from castlab.sparsity.masks import (
    NMVerificationError,
    check_nm_args,
    group_nonzeros,
    nm_mask,
    save_mask_file,
    verify_nm,
)
from castlab.sparsity.scaling import fold_parametrizations, raw_weight
from castlab.sparsity.ste import ste_masks

__all__ = ["FinalizeReport", "NMVerificationError", "finalize", "save_finalized", "MASK_FILE"]

MASK_FILE = "nm_mask.safetensors"


@dataclass
class FinalizeReport:
    """What finalize did; ``masks`` (layer name -> kept) is what ``save_finalized`` writes."""

    n: int
    m: int
    layers: int  # in-scope matrices pruned
    params_in_scope: int
    nonzero: int  # non-zero in-scope weights after finalize
    masked_kept_ratio: float  # mean |W| masked / kept just before the hard prune
    mask_source: str  # "recomputed", "given" or "masked-forward"
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


@torch.no_grad()
def finalize(model: nn.Module, n: int, m: int,
             masks: dict[str, torch.Tensor] | None = None) -> FinalizeReport:
    """Hard-prune ``model`` to exact N:M, fold scales/masks, verify; see the module docstring."""
    check_nm_args(n, m)
    layers = in_scope_linears(model)
    source = "given"
    if masks is None:
        from_forward = ste_masks(model)
        source = "masked-forward" if from_forward else "recomputed"
        masks = dict(from_forward)
    else:
        unknown = sorted(set(masks) - {name for name, _ in layers})
        if unknown:
            raise UserError(f"finalize: masks for unknown layers: {', '.join(unknown)}")
        masks = dict(masks)

    weights, used = [], []
    for name, linear in layers:
        weight = raw_weight(linear)
        mask = masks.get(name)
        if mask is None:
            mask = nm_mask(weight, n, m, name)
        elif mask.shape != weight.shape or mask.dtype != torch.bool:
            raise UserError(f"finalize: mask for '{name}' must be bool {tuple(weight.shape)}, "
                            f"got {mask.dtype} {tuple(mask.shape)}")
        mask = mask.to(weight.device)
        bad = int((group_nonzeros(mask, m, name) > n).sum())
        if bad:
            raise NMVerificationError(f"finalize: the mask for '{name}' keeps more than {n} of "
                                      f"{m} in {bad} groups")
        masks[name] = mask
        weights.append(weight)
        used.append(mask)
    ratio = masked_kept_ratio(weights, used)

    for weight, mask in zip(weights, used, strict=True):
        weight.mul_(mask)
    fold_parametrizations(model)  # W <- W_eff * mask (scales are per block, zeros stay zero)
    for (_, linear), mask in zip(layers, used, strict=True):
        linear.weight.mul_(mask)  # guard against a non-finite scale turning 0 into NaN
    verify_nm(model, n, m)

    nonzero = sum(int(torch.count_nonzero(linear.weight)) for _, linear in layers)
    return FinalizeReport(
        n=n, m=m, layers=len(layers),
        params_in_scope=sum(linear.weight.numel() for _, linear in layers),
        nonzero=nonzero, masked_kept_ratio=ratio, mask_source=source,
        masks={name: masks[name].cpu() for name, _ in layers},
    )


def save_finalized(model: nn.Module, tokenizer, out_dir: str | Path,
                   masks: dict[str, torch.Tensor] | None, n: int, m: int) -> Path:
    """``save_pretrained`` the model (+ tokenizer when given) and write the bit-packed mask file.

    Refuses a model that still has parametrizations or is not N:M (call ``finalize`` first).
    """
    from torch.nn.utils import parametrize

    out_dir = Path(out_dir)
    for name, linear in in_scope_linears(model):
        if parametrize.is_parametrized(linear):
            raise RuntimeError(f"save_finalized: layer '{name}' still has parametrizations; "
                               "call finalize() first")
    verify_nm(model, n, m)
    if masks is None:
        # On an N:M weight this keeps every non-zero (plus the lowest-index zeros up to n).
        masks = {name: nm_mask(linear.weight, n, m, name) for name, linear in in_scope_linears(model)}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    save_mask_file(out_dir / MASK_FILE, masks, n, m)
    return out_dir
