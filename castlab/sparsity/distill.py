"""Logit knowledge distillation from a frozen dense teacher (CAST_SPEC.md, Knowledge distillation).

Per token: eta * KL(p_teacher || p_student) + (1 - eta) * CE(student, next token), averaged over
the scored tokens; eta = 1/3 and temperature 1 in the paper (both config fields).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from castlab.errors import UserError


class KDLoss(NamedTuple):
    """The loss to backpropagate and its two parts (token means)."""

    total: torch.Tensor  # eta * T^2 * kl + (1 - eta) * ce
    ce: torch.Tensor  # cross-entropy of the student on the labels (temperature 1)
    kl: torch.Tensor  # KL(p_teacher || p_student) at temperature T, without the T^2 factor


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            eta: float = 1 / 3, temperature: float = 1.0, ignore_index: int = -100) -> KDLoss:
    """eta*KL(teacher || student) + (1-eta)*CE per token, averaged over non-ignored tokens.

    Inputs are already aligned: ``student_logits[..., t, :]`` predicts ``labels[..., t]`` (the
    caller shifts, as castlab.train does with ``logits[:, :-1]`` and ``input_ids[:, 1:]``).
    Shapes [..., V], [..., V], [...]. With temperature T != 1 the KL uses softmax(z / T) and is
    multiplied by T^2 (Hinton et al. 2015), keeping its gradient scale independent of T; the CE
    always uses T = 1. Teacher logits may be inference-mode tensors.
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
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.reshape(-1, vocab)
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    count = int(valid.sum())
    if count == 0:
        raise ValueError("kd_loss: every label is ignore_index; nothing to score")
    if count != labels.numel():  # padded batches: score only real tokens (packed ones skip this copy)
        student, teacher, labels = student[valid], teacher[valid], labels[valid]

    log_p_student = F.log_softmax(student.float(), dim=-1)  # once; shared by CE and KL at T = 1
    ce = F.nll_loss(log_p_student, labels)
    if temperature == 1.0:
        log_p_student_t = log_p_student
        log_p_teacher_t = F.log_softmax(teacher.float(), dim=-1)
    else:
        log_p_student_t = F.log_softmax(student.float() / temperature, dim=-1)
        log_p_teacher_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q) = KL(p || q).
    kl = F.kl_div(log_p_student_t, log_p_teacher_t, reduction="sum", log_target=True) / count
    total = eta * temperature**2 * kl + (1 - eta) * ce
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
