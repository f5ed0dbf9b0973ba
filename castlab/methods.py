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
        """Scalars to log on the curve at eval steps (masked/kept ratio, mask life)."""

    def summary(self) -> dict[str, float]:
        """Result-row columns at the end of training (before finalize); fills the curve's
        ``mask_drift_final`` given to ``fill_curve``."""

    def fill_curve(self, curve: list[dict]) -> None:
        """Add columns known only at the end (drift from the final mask) to the eval records."""

    def state_dict(self) -> dict:
        """What the method keeps across a checkpoint besides model and optimizer."""

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""

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
    uses_lambda = False  # reads lambda_ (CAST only): the loop resolves 'auto' for it

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

    def summary(self):
        """No sparsity summary."""
        return {}

    def fill_curve(self, curve):
        """Nothing known only at the end."""

    def state_dict(self):
        """Nothing beyond model and optimizer."""
        return {}

    def load_state_dict(self, state):
        """Nothing to restore."""

    def finalize(self, model):
        """Dense models are saved as they are."""
        return None


class DenseKD(Dense):
    """The optimizer-matched dense twin of CAST: same KD continued training, AdamS with nothing
    masked (lambda = 0, in-scope v built from m as in CAST, same bias-correction setting)."""

    uses_teacher = True

    def build_optimizer(self, model, lr, total_steps):
        """AdamS with the in-scope weights in a never-pruned sparse group, Adam for the rest."""
        from castlab.sparsity.adams import AdamS

        cfg = self.cfg
        raw = _raw_weights(model)
        groups = [{"params": raw, "sparse": True, "prune": False},
                  {"params": _split_params(model, raw), "sparse": False}]
        return AdamS(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, lambda_=0.0,
                     total_steps=total_steps, t1=cfg.t1, n=cfg.nm_n, m=cfg.nm_m,
                     bias_correct=cfg.adams_bias_correct)


class DenseKDAdam(Dense):
    """Dense KD continued training with plain torch Adam (the twin before it matched AdamS)."""

    uses_teacher = True

    def build_optimizer(self, model, lr, total_steps):
        """Plain Adam over every trainable parameter."""
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=lr, betas=self.cfg.betas, eps=self.cfg.eps, foreach=True)


class _MaskLifeMixin:
    """Mask-life bookkeeping shared by the sparse methods (castlab.sparsity.masklife).

    Subclasses provide ``_weights()``, ``_masks()``, ``_flip_rates()``, ``masked_kept_ratio()``
    and ``self.optimizer``, keep the current step in ``self._step``, and call ``_life_start``
    once the first mask exists.
    """

    def _lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def diagnostics(self):
        """Masked/kept mean |theta| and the mask life at this eval (castlab.sparsity.masklife)."""
        return {"masked_kept_ratio": self.masked_kept_ratio(),
                **self._life_diagnostics(self._step + 1)}

    def _life_start(self, total_steps: int) -> None:
        from castlab.sparsity.masklife import MaskLife

        self.life = MaskLife(total_steps, self.cfg.eval_every)
        self.life.start(self._masks(), self._weights())

    def _life_before_update(self, step: int) -> None:
        if self.life.samples_step(step):
            self.life.before_update(self._weights())

    def _life_diagnostics(self, step: int) -> dict[str, float]:
        self.life.after_update(step - 1, self._weights(), self._masks(), self._lr())
        return self.life.record(step, self._masks(), self._flip_rates())

    def summary(self):
        """Masked/kept ratio, mask drift (T/2, end), mean flip rate, mean masked step / lr."""
        return {"masked_kept_ratio": self.masked_kept_ratio(),
                **self.life.summary(self._masks(), self._flip_rates())}

    def fill_curve(self, curve):
        """Drift of every eval step's mask from the final one."""
        self.life.fill_final(curve, self._masks())

    def state_dict(self):
        """The mask-life record (packed masks, samples)."""
        return {"mask_life": self.life.state_dict()}

    def load_state_dict(self, state):
        """Restore the mask-life record."""
        if "mask_life" in state:
            self.life.load_state_dict(state["mask_life"])


class Cast(_MaskLifeMixin, Dense):
    """CAST: dense forward, AdamS pulls masked weights to zero, learnable scales, KD."""

    uses_teacher = True
    sparse = True
    uses_lambda = True

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
                               n=cfg.nm_n, m=cfg.nm_m, bias_correct=cfg.adams_bias_correct,
                               masked_decay_ratio=cfg.masked_decay_ratio or 0.0)
        self._step = 0
        self._life_start(total_steps)  # AdamS.masks() computes the step-0 mask on demand
        return self.optimizer

    def _weights(self):
        return self.optimizer._sparse_params()

    def _masks(self):
        return self.optimizer.masks()

    def _flip_rates(self):
        return [rate for _, rate in self.optimizer.flip_rates]

    def masked_kept_ratio(self):
        """Mean |theta| of masked / kept entries (AdamS's current masks)."""
        return self.optimizer.masked_kept_ratio()

    def before_forward(self, step):
        """Half-way mask drift (the mask AdamS refreshes inside ``step()``)."""
        self._step = step
        self.life.at_step_start(step, self._masks)

    def after_backward(self, step):
        """Copy the weights before a step that precedes an eval (masked-step sample)."""
        self._life_before_update(step)

    def finalize(self, model):
        """Recompute the mask, prune, fold scales, verify exact N:M."""
        from castlab.sparsity.finalize import finalize

        return finalize(model, self.cfg.nm_n, self.cfg.nm_m)


class SrSte(_MaskLifeMixin, Dense):
    """SR-STE (Zhou et al. 2021): masked forward with straight-through gradients plus the
    sparse-refined decay lambda_W (``srste_decay``) on pruned weights; cross-entropy only as in
    the paper, or KD with ``kd: true``."""

    sparse = True
    default_kd = False

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.uses_teacher = self.default_kd if cfg.kd is None else cfg.kd

    def build_optimizer(self, model, lr, total_steps):
        """Masked-forward parametrization, then Adam over everything."""
        from castlab.sparsity.ste import attach_masked_forward

        self.total_steps = total_steps
        self.masked = attach_masked_forward(model, n=self.cfg.nm_n, m=self.cfg.nm_m)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                          lr=lr, betas=self.cfg.betas, eps=self.cfg.eps,
                                          foreach=True)
        self._step = 0
        self._life_start(total_steps)
        return self.optimizer

    def _weights(self):
        return self.masked.weights()

    def _masks(self):
        return self.masked.masks()

    def _flip_rates(self):
        return self.masked.flip_rates

    def masked_kept_ratio(self):
        """Mean |W| of masked / kept entries under the masked forward."""
        return self.masked.masked_kept_ratio()

    def before_forward(self, step):
        """Refresh the masks every t1 steps (step 0 included); half-way mask drift."""
        self._step = step
        if step % self.cfg.t1 == 0:
            self.masked.refresh()
        self.life.at_step_start(step, self._masks)

    def after_backward(self, step):
        """Sparse-refined decay: lambda_W * W on the currently pruned entries."""
        from castlab.sparsity.ste import srste_decay_

        srste_decay_(self.masked.weights(), self.masked.masks(), self.cfg.srste_decay)
        self._life_before_update(step)

    def state_dict(self):
        """Mask-life record plus the refresh flip rates (the masks themselves are model buffers)."""
        return {**super().state_dict(), "flip_rates": list(self.masked.flip_rates)}

    def load_state_dict(self, state):
        """Restore mask life and flip rates."""
        super().load_state_dict(state)
        self.masked.flip_rates = list(state.get("flip_rates", []))

    def finalize(self, model):
        """Keep the masks the forward used, prune, drop the parametrization, verify."""
        from castlab.sparsity.finalize import finalize

        return finalize(model, self.cfg.nm_n, self.cfg.nm_m)


class Ast(SrSte):
    """AST-style (Huang et al. 2024): masked forward, KD (``kd: false`` turns it off), and an L2
    decay on masked weights whose coefficient ``ast_decay`` ramps up linearly with alpha = t/T."""

    default_kd = True

    def after_backward(self, step):
        """Ramped decay on the masked entries (ast_decay scaled by t/T)."""
        from castlab.sparsity.ste import ast_decay_

        ast_decay_(self.masked.weights(), self.masked.masks(), self.cfg.ast_decay,
                   step / self.total_steps)
        self._life_before_update(step)


TRAINED_METHODS: dict[str, type] = {
    "dense": Dense,
    "dense-kd": DenseKD,
    "dense-kd-adam": DenseKDAdam,
    "cast": Cast,
    "sr-ste": SrSte,
    "ast": Ast,
}


def make_method(cfg: TrainConfig) -> TrainedMethod:
    """Instantiate the registered method named by ``cfg.method``."""
    return TRAINED_METHODS[cfg.method](cfg)
