"""Registry of trained methods: how each one builds its optimizer and touches a training step.

The training loop (castlab.train) is the same for all of them; a method only says which optimizer
it uses, what happens around the forward and after the backward, which diagnostics it reports, and
how it finalizes. Adding a method is one class plus one registry entry.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from castlab.config import TrainConfig
from castlab.models import in_scope_linears


class TrainedMethod(Protocol):
    """What the training loop needs from a method."""

    uses_teacher: bool
    sparse: bool

    def build_optimizer(self, model: nn.Module, lr: float, total_steps: int) -> torch.optim.Optimizer:
        """Prepare the model (scales, masked forward) and return its optimizer."""

    def before_forward(self, step: int) -> None:
        """Called at the start of every step (mask refreshes for masked-forward methods)."""

    def after_backward(self, step: int) -> None:
        """Called after gradients exist, before clipping and the optimizer step."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars to log on the curve at eval steps (masked/kept ratio, flip rate)."""

    def finalize(self, model: nn.Module):
        """Hard-prune, fold and verify; returns a FinalizeReport or None for dense methods."""


def _split_params(model: nn.Module, in_scope: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every trainable parameter of ``model`` that is not one of ``in_scope`` (by identity)."""
    ids = {id(p) for p in in_scope}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in ids]


def _raw_weights(model: nn.Module) -> list[torch.Tensor]:
    from castlab.sparsity.scaling import raw_weight

    return [raw_weight(linear) for _, linear in in_scope_linears(model)]


class Dense:
    """Dense pretraining from scratch: AdamW, cross-entropy only."""

    uses_teacher = False
    sparse = False

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def build_optimizer(self, model, lr, total_steps):
        """AdamW with decoupled weight decay on matrices only (not norms/biases)."""
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=self.cfg.betas, eps=self.cfg.eps,
                                 foreach=True)

    def before_forward(self, step):
        """Nothing to do."""

    def after_backward(self, step):
        """Nothing to do."""

    def diagnostics(self):
        """No sparsity diagnostics."""
        return {}

    def finalize(self, model):
        """Dense models are saved as they are."""
        return None


class DenseKD(Dense):
    """The dense twin of a sparse run: same KD continued training, plain Adam, no sparsity."""

    uses_teacher = True

    def build_optimizer(self, model, lr, total_steps):
        """Plain Adam: AdamS with nothing masked (the reference a sparse run is compared to)."""
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=lr, betas=self.cfg.betas, eps=self.cfg.eps, foreach=True)


class Cast(Dense):
    """CAST: dense forward, AdamS pulls masked weights to zero, learnable scales, KD."""

    uses_teacher = True
    sparse = True

    def build_optimizer(self, model, lr, total_steps):
        """Attach weight scaling, then AdamS over raw in-scope weights + Adam over the rest."""
        from castlab.sparsity.adams import AdamS
        from castlab.sparsity.scaling import attach_weight_scaling

        cfg = self.cfg
        if cfg.scale_blocks:
            attach_weight_scaling(model, n_blocks=cfg.scale_blocks, m=cfg.nm_m)
        raw = _raw_weights(model)
        groups = [{"params": raw, "sparse": True},
                  {"params": _split_params(model, raw), "sparse": False}]
        self.optimizer = AdamS(groups, lr=lr, betas=cfg.betas, eps=cfg.eps,
                               lambda_=float(cfg.lambda_), total_steps=total_steps, t1=cfg.t1,
                               n=cfg.nm_n, m=cfg.nm_m)
        return self.optimizer

    def diagnostics(self):
        """Masked/kept mean |theta| and the latest mask flip rate from AdamS."""
        return {"masked_kept_ratio": self.optimizer.masked_kept_ratio(),
                "mask_flip_rate": self.optimizer.last_flip_rate()}

    def finalize(self, model):
        """Recompute the mask, prune, fold scales, verify exact N:M."""
        from castlab.sparsity.finalize import finalize

        return finalize(model, self.cfg.nm_n, self.cfg.nm_m)


class SrSte(Dense):
    """SR-STE (Zhou et al. 2021): masked forward with straight-through gradients plus the
    sparse-refined decay on pruned weights; cross-entropy only, as in the paper."""

    uses_teacher = False
    sparse = True

    def build_optimizer(self, model, lr, total_steps):
        """Masked-forward parametrization, then Adam over everything."""
        from castlab.sparsity.ste import attach_masked_forward

        self.total_steps = total_steps
        self.masked = attach_masked_forward(model, n=self.cfg.nm_n, m=self.cfg.nm_m)
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=lr, betas=self.cfg.betas, eps=self.cfg.eps, foreach=True)

    def before_forward(self, step):
        """Refresh the masks every t1 steps (step 0 included)."""
        if step % self.cfg.t1 == 0:
            self.masked.refresh()

    def after_backward(self, step):
        """Sparse-refined decay: lambda_W * W on the currently pruned entries."""
        from castlab.sparsity.ste import srste_decay_

        srste_decay_(self.masked.weights(), self.masked.masks(), self.cfg.srste_decay)

    def diagnostics(self):
        """Masked/kept ratio and flip rate of the masked forward."""
        return {"masked_kept_ratio": self.masked.masked_kept_ratio(),
                "mask_flip_rate": self.masked.last_flip_rate()}

    def finalize(self, model):
        """Keep the masks the forward used, prune, drop the parametrization, verify."""
        from castlab.sparsity.finalize import finalize

        return finalize(model, self.cfg.nm_n, self.cfg.nm_m)


class Ast(SrSte):
    """AST-style (Huang et al. 2024): masked forward, KD, and a decay on masked weights whose
    strength ramps up linearly with alpha = t / T."""

    uses_teacher = True

    def after_backward(self, step):
        """Ramped decay on the masked entries (lambda_ scaled by t/T)."""
        from castlab.sparsity.ste import ast_decay_

        lam = float(self.cfg.lambda_)
        ast_decay_(self.masked.weights(), self.masked.masks(), lam, step / self.total_steps)


TRAINED_METHODS: dict[str, type] = {
    "dense": Dense,
    "dense-kd": DenseKD,
    "cast": Cast,
    "sr-ste": SrSte,
    "ast": Ast,
}


def make_method(cfg: TrainConfig) -> TrainedMethod:
    """Instantiate the registered method named by ``cfg.method``."""
    return TRAINED_METHODS[cfg.method](cfg)
