"""Fine-tuning a finalized N:M model on downstream text with its mask held fixed.

Every step the gradients of the in-scope weights are multiplied by the mask before the optimizer
step and the weights by the mask after it, so pruned weights stay exactly zero (Adam's moments
for them stay zero too) and the model is exactly N:M at the end. ``masks=None`` fine-tunes the
dense model the same way, which is the comparison the sparse result is judged against.
Optional logit distillation from a frozen dense teacher uses the CAST loss
(``castlab.sparsity.distill.kd_loss``: η·KL(teacher‖student) + (1-η)·CE).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from castlab.errors import UserError
from castlab.models import in_scope_linears
from castlab.sparsity.masks import nm_mask, nm_violations


@dataclass
class FinetuneResult:
    """Losses of a fine-tuning run and whether the N:M pattern survived."""

    steps: int
    lr: float
    sparse: bool
    distilled: bool
    train_losses: list[float] = field(default_factory=list)  # per step (the optimized loss)
    eval_loss_before: float | None = None  # mean next-token CE on eval_batches
    eval_loss_after: float | None = None
    exact_nm: bool | None = None  # None for a dense run
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def masks_from_model(model: nn.Module, n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """The N:M masks of a finalized model's in-scope weights (its kept positions), by layer name.

    Raises UserError if the model is not N:M: fine-tuning with a fixed mask starts from a
    finalized model, and recomputing a mask here would silently prune a dense one.
    """
    problems = nm_violations(model, n, m)
    if problems:
        raise UserError(f"model is not {n}:{m} sparse, so it has no mask to hold fixed "
                        f"({problems[0]}); finalize it first or fine-tune it dense")
    return {name: nm_mask(lin.weight, n, m, name) for name, lin in in_scope_linears(model)}


def _lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                           input_ids[:, 1:].reshape(-1))


@torch.no_grad()
def eval_loss(model: nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Mean next-token cross-entropy over ``batches`` (token-weighted), model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for batch in batches:
            batch = batch.to(device)
            tokens = batch[:, 1:].numel()
            total += float(_lm_loss(model(input_ids=batch).logits, batch)) * tokens
            count += tokens
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("eval batches are empty: nothing to score")
    return total / count


def finetune(model: nn.Module, batches: Sequence[torch.Tensor],
             masks: dict[str, torch.Tensor] | None, steps: int, lr: float,
             teacher: nn.Module | None = None, eta: float = 1 / 3, temperature: float = 1.0,
             eval_batches: Sequence[torch.Tensor] | None = None, weight_decay: float = 0.0,
             n: int = 2, m: int = 4) -> FinetuneResult:
    """Fine-tune ``model`` in place with AdamW for ``steps`` steps over ``batches`` (cycled).

    ``masks`` (layer name -> bool tensor, e.g. from ``masks_from_model``) are held fixed; ``None``
    trains densely. ``teacher`` switches the loss to the KD mix with weight ``eta``.
    """
    if steps < 1:
        raise UserError(f"steps: got {steps}, allowed a positive integer")
    if not lr > 0:
        raise UserError(f"lr: got {lr}, allowed a positive number")
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"eta: got {eta}, allowed 0..1")
    if not batches:
        raise UserError("fine-tuning batches are empty")
    layers = dict(in_scope_linears(model))
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    if masks is not None:
        missing = sorted(set(layers) - set(masks))
        if missing:
            raise UserError(f"masks: no mask for in-scope layer(s) {', '.join(missing[:3])}")
        for name, linear in layers.items():
            mask = masks[name].to(linear.weight.device)
            if mask.shape != linear.weight.shape or mask.dtype != torch.bool:
                raise UserError(f"masks: '{name}' must be a bool tensor of shape "
                                f"{tuple(linear.weight.shape)}, got {mask.dtype} "
                                f"{tuple(mask.shape)}")
            held.append((linear.weight, mask))
    if teacher is not None:
        from castlab.sparsity.distill import freeze_teacher, kd_loss, teacher_logits
        freeze_teacher(teacher)

    result = FinetuneResult(steps=steps, lr=lr, sparse=masks is not None,
                            distilled=teacher is not None)
    start = time.perf_counter()
    with torch.no_grad():
        for weight, mask in held:
            weight.mul_(mask)
    if eval_batches:
        result.eval_loss_before = eval_loss(model, eval_batches)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)].to(device)
        logits = model(input_ids=batch).logits
        if teacher is not None:
            target = teacher_logits(teacher, batch)
            loss = kd_loss(logits[:, :-1], target[:, :-1], batch[:, 1:], eta=eta,
                           temperature=temperature).total
        else:
            loss = _lm_loss(logits, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"fine-tuning diverged at step {step} (loss {value}); "
                               "lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for weight, mask in held:
                if weight.grad is not None:
                    weight.grad.mul_(mask)
        optimizer.step()
        with torch.no_grad():
            # Decoupled weight decay and rounding never move a zero, but the pattern is the
            # point of the run, so it is enforced rather than assumed.
            for weight, mask in held:
                weight.mul_(mask)
        result.train_losses.append(value)
    model.eval()
    if eval_batches:
        result.eval_loss_after = eval_loss(model, eval_batches)
    if masks is not None:
        result.exact_nm = not nm_violations(model, n, m)
    result.seconds = time.perf_counter() - start
    return result
