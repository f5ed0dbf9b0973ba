"""AdamS against a literal element-by-element reference of CAST_SPEC.md, and against torch Adam."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from castlab.errors import UserError
from castlab.sparsity import adams
from castlab.sparsity.adams import AdamS
from castlab.sparsity.decay import decay_budget, decay_budget_warning, masked_kept_ratio


def ref_mask(w: list[list[float]], n: int, m: int) -> list[list[bool]]:
    """Keep the n largest |w| of every m consecutive inputs; ties to the lower index."""
    keep = [[False] * len(row) for row in w]
    for r, row in enumerate(w):
        for g in range(0, len(row), m):
            order = sorted(range(g, g + m), key=lambda c, row=row: (-abs(row[c]), c))
            for c in order[:n]:
                keep[r][c] = True
    return keep


def sign(x: float) -> float:
    return (x > 0) - (x < 0)


class RefAdamS:
    """The spec's update, one scalar at a time, in float64."""

    def __init__(self, tensors, sparse, lr, betas, eps, lam, T, t1, n, m, bias_correct=False):
        self.bias_correct = bias_correct
        self.w = [t.double().tolist() for t in tensors]
        self.sparse, self.lr, self.b1, self.b2, self.eps = sparse, lr, betas[0], betas[1], eps
        self.lam, self.T, self.t1, self.n, self.m = lam, T, t1, n, m
        self.mom = [self._zeros(w) for w in self.w]
        self.v = [self._zeros(w) for w in self.w]
        self.mask = [None] * len(self.w)
        self.t = 0

    @staticmethod
    def _zeros(w):
        return [[0.0] * len(r) for r in w] if isinstance(w[0], list) else [0.0] * len(w)

    def step(self, grads):
        t, b1, b2 = self.t, self.b1, self.b2
        alpha = t / self.T
        for k, g in enumerate(grads):
            g = g.double().tolist()
            if self.sparse[k] and t % self.t1 == 0:
                self.mask[k] = ref_mask(self.w[k], self.n, self.m)
            rows = self.w[k] if isinstance(self.w[k][0], list) else [self.w[k]]
            mrows = self.mom[k] if isinstance(self.w[k][0], list) else [self.mom[k]]
            vrows = self.v[k] if isinstance(self.w[k][0], list) else [self.v[k]]
            grows = g if isinstance(g[0], list) else [g]
            for r in range(len(rows)):
                for c in range(len(rows[r])):
                    mrows[r][c] = b1 * mrows[r][c] + (1 - b1) * grows[r][c]
                    # bias-corrected variant: m~ is built from m / (1 - b1^(t+1)) and enters
                    # v and the step without a further correction
                    bc1 = (1 - b1 ** (t + 1)) if self.bias_correct and self.sparse[k] else 1.0
                    if self.sparse[k]:
                        mt = mrows[r][c] / bc1
                        if not self.mask[k][r][c]:
                            mt = (1 - alpha) * mrows[r][c] / bc1 + alpha * self.lam * sign(rows[r][c])
                        vrows[r][c] = b2 * vrows[r][c] + (1 - b2) * mt * mt
                    else:  # out of scope: plain Adam
                        mt = mrows[r][c]
                        vrows[r][c] = b2 * vrows[r][c] + (1 - b2) * grows[r][c] ** 2
                    mhat = mt * bc1 / (1 - b1 ** (t + 1))
                    vhat = vrows[r][c] / (1 - b2 ** (t + 1))
                    rows[r][c] -= self.lr * mhat / (math.sqrt(vhat) + self.eps)
        self.t += 1


def make_tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 8, generator=gen) * 0.1, torch.randn(2, 4, generator=gen) * 0.1,
            torch.randn(5, generator=gen) * 0.1]  # the last one is out of scope


@pytest.mark.parametrize("bias_correct", [False, True], ids=["spec-literal", "bias-corrected"])
@pytest.mark.parametrize("kernel", ["fused", "foreach"])
@pytest.mark.parametrize("chunk", [None, 5], ids=["default-chunks", "5-element-chunks"])
def test_adams_matches_elementwise_reference_across_refreshes(chunk, kernel, bias_correct,
                                                               monkeypatch):
    if chunk is not None:  # slices that cut rows, mask groups and tensor boundaries
        monkeypatch.setattr(adams, "CHUNK_ELEMENTS", chunk)
    # both Adam tails: torch's fused kernel, and the foreach passes other devices fall back to
    monkeypatch.setattr(adams, "_NO_FUSED_ADAM", set() if kernel == "fused" else {"cpu"})
    T, t1, lr, lam = 7, 3, 0.02, 0.05
    tensors = make_tensors()
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    opt = AdamS([{"params": params[:2], "sparse": True}, {"params": params[2:]}], lr=lr,
                lambda_=lam, total_steps=T, t1=t1, n=2, m=4, bias_correct=bias_correct)
    ref = RefAdamS(tensors, [True, True, False], lr, (0.9, 0.999), 1e-8, lam, T, t1, 2, 4,
                   bias_correct=bias_correct)
    gen = torch.Generator().manual_seed(1)
    raw_m = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    for _ in range(T):
        grads = [torch.randn(t.shape, generator=gen) * 0.01 for t in tensors]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        for k, g in enumerate(grads):
            raw_m[k] = 0.9 * raw_m[k] + 0.1 * g.double()
        for p, w in zip(params, ref.w, strict=True):
            torch.testing.assert_close(p.detach().double(), torch.tensor(w, dtype=torch.float64),
                                       rtol=1e-5, atol=1e-7)
        # m~ is never written back: the stored first moment is the raw-gradient EMA.
        for p, m_ in zip(params, raw_m, strict=True):
            torch.testing.assert_close(opt.state[p]["exp_avg"].double(), m_, rtol=1e-5, atol=1e-9)
    # masks are one byte per weight (uint8 ~mask), exactly the reference's latest (step 6)
    for p, mask, got in zip(params[:2], ref.mask[:2], opt.masks()[:2], strict=True):
        assert opt.state[p]["pruned"].dtype == torch.uint8
        assert got.dtype == torch.bool and got.tolist() == mask
        assert (opt.state[p]["pruned"] == 0).tolist() == mask
    assert len(opt.flip_rates) == 2 and [s for s, _ in opt.flip_rates] == [3, 6]
    fell_back = "cpu" in adams._NO_FUSED_ADAM  # the fused run really used the kernel
    assert fell_back == (kernel == "foreach")


@pytest.mark.parametrize("bias_correct, first_step", [(False, 10.0), (True, 1.0)])
def test_first_step_is_ten_lr_spec_literal_and_one_lr_bias_corrected(bias_correct, first_step):
    # t = 0, kept entry: m = 0.1 g; literal: v/bc2 = (0.1 g)^2, step = lr * g / (0.1 |g|) = 10 lr;
    # corrected: m~ = g, v/bc2 = g^2, step = lr
    p = torch.nn.Parameter(torch.tensor([[4.0, 3.0, 1.0, 2.0]]))
    opt = AdamS([{"params": [p], "sparse": True}], lr=1e-3, lambda_=1.0, total_steps=10,
                bias_correct=bias_correct)
    p.grad = torch.full_like(p, 0.5)
    before = p.detach().clone()
    opt.step()
    torch.testing.assert_close(before - p.detach(), torch.full_like(p, first_step * 1e-3),
                               rtol=1e-4, atol=0)


def test_unpruned_sparse_group_is_adams_with_nothing_masked():
    # prune=False: no mask, m~ = m for every entry, so it equals a pruned group at a = 0 forever
    # (lambda is never used), which differs from torch Adam (v tracks m^2, not g^2)
    tensors = make_tensors()
    a = [torch.nn.Parameter(t.clone()) for t in tensors[:2]]
    b = [torch.nn.Parameter(t.clone()) for t in tensors[:2]]
    c = [torch.nn.Parameter(t.clone()) for t in tensors[:2]]
    unpruned = AdamS([{"params": a, "sparse": True, "prune": False}], lr=0.01, lambda_=5.0,
                     total_steps=4, bias_correct=True)
    # a = t/T stays 0 when T is huge: the pruned group's masked entries also step on m alone
    pruned_at_zero = AdamS([{"params": b, "sparse": True}], lr=0.01, lambda_=0.0,
                           total_steps=10**12, bias_correct=True)
    adam = torch.optim.Adam(c, lr=0.01)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        grads = [torch.randn(t.shape, generator=gen) * 0.01 for t in tensors[:2]]
        for group in (a, b, c):
            for p, g in zip(group, grads, strict=True):
                p.grad = g.clone()
        unpruned.step()
        pruned_at_zero.step()
        adam.step()
    for x, y, z in zip(a, b, c, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-9)
        assert not torch.allclose(x, z, rtol=1e-4, atol=1e-7)
    assert unpruned.masks() == [] and unpruned.flip_rates == []
    assert "pruned" not in unpruned.state[a[0]]


def test_out_of_scope_group_matches_torch_adam():
    tensors = make_tensors(3)
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    theirs = [torch.nn.Parameter(t.clone()) for t in tensors]
    opt = AdamS([{"params": ours[:1], "sparse": True}, {"params": ours[1:]}], lr=1e-2,
                lambda_=0.0, total_steps=100, t1=10)
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        for a, b in zip(ours, theirs, strict=True):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for k in (1, 2):
            torch.testing.assert_close(ours[k].detach(), theirs[k].detach(), rtol=1e-6, atol=1e-7)
    # The in-scope tensor is not plain Adam even at lambda = 0: its v tracks m~^2, not g^2.
    assert not torch.allclose(ours[0].detach(), theirs[0].detach(), atol=1e-4)


def test_state_dict_round_trip_keeps_bool_masks_and_continues_identically():
    params = [torch.nn.Parameter(t.clone()) for t in make_tensors(4)[:2]]
    opt = AdamS([{"params": params, "sparse": True}], lr=1e-2, lambda_=0.1, total_steps=20, t1=2)
    gen = torch.Generator().manual_seed(5)
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(8)]
    for gs in grads[:5]:
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    for gs in grads[5:]:
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
    expected = [p.detach().clone() for p in params]

    fresh = [torch.nn.Parameter(w.clone()) for w in saved_params]
    opt2 = AdamS([{"params": fresh, "sparse": True}], lr=1e-2, lambda_=0.1, total_steps=20, t1=2)
    opt2.load_state_dict(saved)
    assert all(opt2.state[p]["pruned"].dtype == torch.uint8 for p in fresh)
    assert opt2.flip_rates == opt.flip_rates[: len(opt2.flip_rates)]
    for gs in grads[5:]:
        for p, g in zip(fresh, gs, strict=True):
            p.grad = g
        opt2.step()
    for a, b in zip(fresh, expected, strict=True):
        torch.testing.assert_close(a.detach(), b)


def test_refuses_non_fp32_and_bad_shapes():
    with pytest.raises(UserError, match="q_proj.*bfloat16.*fp32"):
        AdamS([{"params": [torch.nn.Parameter(torch.zeros(4, 8, dtype=torch.bfloat16))],
                "sparse": True, "names": ["q_proj"]}])
    with pytest.raises(UserError, match="'fc1'.*not divisible by M=4"):
        AdamS([{"params": [torch.nn.Parameter(torch.zeros(4, 6))], "sparse": True,
                "names": ["fc1"]}])
    AdamS([{"params": [torch.nn.Parameter(torch.zeros(4, 6, dtype=torch.bfloat16))]}])  # dense: ok


def test_masked_kept_ratio_by_hand():
    w = torch.tensor([[4.0, -1.0, 0.5, 3.0]])
    mask = torch.tensor([[True, False, False, True]])
    assert masked_kept_ratio([w], [mask]) == pytest.approx(((1 + 0.5) / 2) / ((4 + 3) / 2))
    p = torch.nn.Parameter(w.clone())
    opt = AdamS([{"params": [p], "sparse": True}])
    assert opt.masked_kept_ratio() == pytest.approx(0.75 / 3.5)  # mask computed on demand


def test_decay_budget_and_measured_warning():
    assert decay_budget([0.1] * 4, 4) == pytest.approx(0.1 * (0 + 0.25 + 0.5 + 0.75))
    assert decay_budget(lambda t: 0.1 * (t + 1), 2) == pytest.approx(0.2 * 0.5)
    with pytest.raises(UserError, match="3 entries for 4 steps"):
        decay_budget([0.1] * 3, 4)
    message = decay_budget_warning(0.01, 0.035, 512)
    assert message is not None and "below the typical |theta|" in message and "512 steps" in message
    assert decay_budget_warning(0.05, 0.035, 512) is None
    assert decay_budget_warning(float("nan"), 0.035, 512) is None  # nothing measured: no claim
