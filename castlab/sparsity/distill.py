"""Logit knowledge distillation from a frozen dense teacher (CAST_SPEC.md, Knowledge distillation).

Per token: eta * KL(p_teacher || p_student) + (1 - eta) * CE(student, next token), averaged over
the scored tokens; eta = 1/3 and temperature 1 in the paper (both config fields).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from castlab.errors import UserError


class KDLoss(NamedTuple):
    """The loss to backpropagate and its two parts (token means)."""

    total: torch.Tensor  # eta * T^2 * kl + (1 - eta) * ce
    ce: torch.Tensor  # cross-entropy of the student on the labels (temperature 1), no gradient
    kl: torch.Tensor  # KL(p_teacher || p_student) at temperature T, without T^2, no gradient


# Rows of logits handled together. CPU: ~1 MiB of fp32 per temporary keeps a chunk in cache.
# CUDA: a chunk must fill the card, not a cache; at 16k tokens x 50272 vocabulary on an H200 the
# loss took 1013 ms with the CPU size (3,300 Python iterations) and 27 ms with 2**27 elements
# (512 MiB per fp32 temporary, a handful of them at once).
CHUNK_ELEMENTS = 2**18
CUDA_CHUNK_ELEMENTS = 2**27


def chunk_elements(device: torch.device) -> int:
    """Logit elements per chunk of the fused KD loss on ``device``."""
    return CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CHUNK_ELEMENTS


class _FusedKD(torch.autograd.Function):
    """eta*T^2*KL + (1-eta)*CE whose gradient is computed in the forward, chunk by chunk.

    Written by hand: the unfused form keeps ~6 vocabulary-sized tensors alive at once (both
    log-softmaxes, their difference, slicing copies, the gradient), the largest transient of a
    small model's step; this keeps one, the gradient w.r.t. the student logits (Liger-Kernel's
    fused KD/CE kernels do the same, but in Triton, GPU-only). Per scored token, over their count:
    d/ds = (1-eta)*(softmax(s) - onehot(y)) + eta*T*(softmax(s/T) - softmax(t/T)).
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, valid, eta, temperature):
        dtype = torch.promote_types(student.dtype, torch.float32)  # bf16 logits: fp32 math
        count = valid.sum().clamp(min=1).to(dtype)
        grad = torch.empty_like(student)
        ce_sum = torch.zeros((), dtype=dtype, device=student.device)
        kl_sum = torch.zeros_like(ce_sum)
        rows = max(1, chunk_elements(student.device) // student.shape[-1])
        for start in range(0, student.shape[0], rows):
            part = slice(start, start + rows)
            s, t, keep = student[part].to(dtype), teacher[part].to(dtype), valid[part].to(dtype)
            picked = labels[part].clamp(min=0).unsqueeze(-1)  # ignored rows: any index, keep=0
            log_q = torch.log_softmax(s, dim=-1)
            ce_sum -= (log_q.gather(-1, picked).squeeze(-1) * keep).sum()
            if temperature == 1.0:
                log_q_t, log_p_t = log_q, torch.log_softmax(t, dim=-1)
            else:
                log_q_t = torch.log_softmax(s / temperature, dim=-1)
                log_p_t = torch.log_softmax(t / temperature, dim=-1)
            p_t = log_p_t.exp()
            kl_sum += ((p_t * (log_p_t - log_q_t)).sum(-1) * keep).sum()
            if temperature == 1.0:  # (1-eta)*q + eta*q = q: one softmax serves both terms
                g = log_q.exp().sub_(p_t, alpha=eta)
            else:
                g = log_q.exp().mul_(1 - eta)
                g.add_(log_q_t.exp().sub_(p_t), alpha=eta * temperature)
            g.scatter_add_(-1, picked, torch.full(picked.shape, eta - 1.0, dtype=dtype, device=g.device))
            grad[part] = g.mul_(keep.unsqueeze(-1) / count)
        ctx.save_for_backward(grad)
        ce, kl = ce_sum / count, kl_sum / count
        ctx.mark_non_differentiable(ce, kl)
        return eta * temperature**2 * kl + (1 - eta) * ce, ce, kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_ce, _grad_kl):
        (grad,) = ctx.saved_tensors
        if grad.is_cuda:  # reading grad_total on the host would wait for the GPU: scale in place
            return grad.mul_(grad_total), None, None, None, None, None
        # the usual call is loss.backward() (grad_total = 1): hand back the buffer, no copy
        return (grad if bool(grad_total == 1) else grad * grad_total), None, None, None, None, None


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            eta: float = 1 / 3, temperature: float = 1.0, ignore_index: int = -100) -> KDLoss:
    """eta*KL(teacher || student) + (1-eta)*CE per token, averaged over non-ignored tokens.

    Inputs are already aligned: ``student_logits[..., t, :]`` predicts ``labels[..., t]``. Shapes
    [..., V], [..., V], [...]. Passing whole logits with the last position's label set to
    ``ignore_index`` (as castlab.train does) avoids the copy a ``logits[:, :-1]`` slice costs.
    With temperature T != 1 the KL uses softmax(z / T) and is multiplied by T^2 (Hinton et al.
    2015), keeping its gradient scale independent of T; the CE always uses T = 1. Teacher logits
    may be inference-mode tensors. Only ``total`` carries a gradient.
    """
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"eta must be in [0, 1], got {eta}")
    if temperature <= 0:
        raise UserError(f"kd temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    vocab = student_logits.shape[-1]
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    # on CUDA the check would wait for the GPU every step; an all-ignored batch scores 0 there
    if not valid.is_cuda and not bool(valid.any()):
        raise ValueError("kd_loss: every label is ignore_index; nothing to score")
    total, ce, kl = _FusedKD.apply(student_logits.reshape(-1, vocab),
                                   teacher_logits.reshape(-1, vocab), labels, valid, eta,
                                   temperature)
    return KDLoss(total=total, ce=ce, kl=kl)


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put the teacher in eval mode with no parameter requiring gradients; returns it."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def teacher_logits(teacher: nn.Module, input_ids: torch.Tensor, **model_kwargs) -> torch.Tensor:
    """Logits of the frozen teacher for ``input_ids`` [B, T], computed under inference mode."""
    freeze_teacher(teacher)
    with torch.inference_mode():
        return teacher(input_ids=input_ids, **model_kwargs).logits
