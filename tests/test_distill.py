"""KD loss against a hand computation; teacher logits are frozen inference-mode outputs."""

from __future__ import annotations

import math

import pytest
import torch

from castlab.errors import UserError
from castlab.models import build_preset
from castlab.sparsity.distill import kd_loss, teacher_logits


def hand_kd(student, teacher, labels, eta, temperature, ignore=-100):
    total_kl = total_ce = 0.0
    count = 0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        if y == ignore:
            continue
        count += 1
        zs = sum(math.exp(v) for v in s_row)
        total_ce += -(s_row[y] - math.log(zs))
        ps = [math.exp(v / temperature) for v in s_row]
        pt = [math.exp(v / temperature) for v in t_row]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total_kl += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))
    kl, ce = total_kl / count, total_ce / count
    return eta * temperature**2 * kl + (1 - eta) * ce, ce, kl


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_matches_hand_computation(temperature):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 5, generator=gen)
    teacher = torch.randn(2, 3, 5, generator=gen)
    labels = torch.tensor([[1, 4, -100], [0, 2, 3]])
    out = kd_loss(student, teacher, labels, eta=1 / 3, temperature=temperature)
    total, ce, kl = hand_kd(student.reshape(-1, 5), teacher.reshape(-1, 5), labels.reshape(-1),
                            1 / 3, temperature)
    assert out.total.item() == pytest.approx(total, rel=1e-5)
    assert out.ce.item() == pytest.approx(ce, rel=1e-5)
    assert out.kl.item() == pytest.approx(kl, rel=1e-5)


def test_identical_logits_give_zero_kl_and_eta_one_is_pure_kl():
    x = torch.randn(4, 7)
    y = torch.tensor([0, 1, 2, 3])
    out = kd_loss(x, x.clone(), y, eta=1.0)
    assert abs(out.kl.item()) < 1e-6 and abs(out.total.item()) < 1e-6
    with pytest.raises(UserError, match="eta"):
        kd_loss(x, x, y, eta=1.5)


def test_teacher_logits_frozen_and_usable_in_student_loss():
    teacher = build_preset("opt-tiny", vocab_size=64, seed=0)
    student = build_preset("opt-tiny", vocab_size=64, seed=1)
    teacher.train()
    batch = torch.randint(0, 64, (2, 10))
    t_logits = teacher_logits(teacher, batch)[:, :-1]  # sliced as castlab.train does
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not t_logits.requires_grad
    logits = student(input_ids=batch).logits[:, :-1]
    loss = kd_loss(logits.float(), t_logits.float(), batch[:, 1:]).total
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    with torch.no_grad():
        again = teacher(input_ids=batch).logits[:, :-1]
    torch.testing.assert_close(t_logits, again)


def unfused_kd(student, teacher, labels, eta, temperature, ignore=-100):
    """The textbook form, differentiated by autograd: the reference for the fused gradient."""
    keep = labels != ignore
    s, t, y = student[keep], teacher[keep], labels[keep]
    ce = torch.nn.functional.cross_entropy(s, y)
    log_q = torch.log_softmax(s / temperature, -1)
    log_p = torch.log_softmax(t / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return eta * temperature**2 * kl + (1 - eta) * ce


@pytest.mark.parametrize("temperature,eta", [(1.0, 1 / 3), (2.0, 1 / 3), (1.0, 1.0), (0.5, 0.0)])
def test_fused_kd_gradient_matches_autograd_of_the_unfused_loss(monkeypatch, temperature, eta):
    import castlab.sparsity.distill as distill

    monkeypatch.setattr(distill, "CHUNK_ELEMENTS", 40)  # 3 rows per chunk: several chunks
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(4, 6, 13, generator=gen, dtype=torch.float64)
    teacher = torch.randn(4, 6, 13, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 13, (4, 6), generator=gen)
    labels[:, -1] = -100
    labels[2, 1] = -100
    fused_in = student.clone().requires_grad_(True)
    out = kd_loss(fused_in, teacher, labels, eta=eta, temperature=temperature)
    (3.0 * out.total).backward()  # a non-unit upstream gradient is applied
    ref_in = student.clone().requires_grad_(True)
    ref = unfused_kd(ref_in.reshape(-1, 13), teacher.reshape(-1, 13), labels.reshape(-1), eta,
                     temperature)
    (3.0 * ref).backward()
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(fused_in.grad, ref_in.grad)
    assert not out.ce.requires_grad and not out.kl.requires_grad


def test_fused_kd_takes_sliced_and_bf16_logits():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 11, generator=gen)
    teacher = torch.randn(2, 5, 11, generator=gen)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    sliced = kd_loss(logits[:, :-1], teacher[:, :-1], ids[:, 1:]).total
    from castlab.evaluate import shifted_labels

    whole = kd_loss(logits, teacher, shifted_labels(ids)).total
    torch.testing.assert_close(sliced, whole)
    half = logits.bfloat16().requires_grad_(True)
    loss = kd_loss(half, teacher.bfloat16(), shifted_labels(ids)).total
    loss.backward()
    assert half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, whole, atol=0.05, rtol=0.02)
