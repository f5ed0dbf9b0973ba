"""Weight scaling: forward uses W_eff, folding gives a plain model with identical logits."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from castlab.errors import UserError
from castlab.models import build_preset, in_scope_linears
from castlab.sparsity.scaling import attach_weight_scaling, fold_weight_scaling, raw_weight


def test_block_scale_formula_by_hand():
    model = build_preset("opt-tiny", vocab_size=64)
    scales = attach_weight_scaling(model, n_blocks=2, m=4)
    name, linear = in_scope_linears(model)[0]
    assert len(scales) == len(in_scope_linears(model))
    with torch.no_grad():
        scales[0].copy_(torch.arange(1, 1 + scales[0].numel(), dtype=torch.float32).view_as(scales[0]))
    W, A = raw_weight(linear).detach(), scales[0].detach()
    cols = W.shape[1]
    expected = torch.empty_like(W)
    for r in range(W.shape[0]):
        for c in range(cols):
            expected[r, c] = A[r, c // (cols // 2)] * W[r, c]
    torch.testing.assert_close(linear.weight.detach(), expected)
    assert raw_weight(linear) is linear.parametrizations.weight.original


def test_fold_keeps_logits_and_leaves_plain_model():
    model = build_preset("opt-tiny", vocab_size=64, seed=1)
    scales = attach_weight_scaling(model, n_blocks=2, m=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a in scales:
            a.copy_(torch.rand(a.shape, generator=gen) + 0.5)
    ids = torch.randint(0, 64, (2, 12), generator=gen)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert fold_weight_scaling(model) == len(scales)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert not any(parametrize.is_parametrized(lin) for _, lin in in_scope_linears(model))
    assert not any("parametrizations" in key for key in model.state_dict())


def test_scales_get_gradients_and_zero_blocks_is_off():
    model = build_preset("opt-tiny", vocab_size=64)
    assert attach_weight_scaling(model, n_blocks=0) == []
    scales = attach_weight_scaling(model, n_blocks=2)
    ids = torch.randint(0, 64, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in scales)


def test_block_width_must_be_a_multiple_of_m():
    model = build_preset("opt-tiny", vocab_size=64)  # hidden 32, ffn 64
    with pytest.raises(UserError, match=r"layer '.*': 32 input columns cannot be cut into 3"):
        attach_weight_scaling(model, n_blocks=3, m=4)
    with pytest.raises(UserError, match="into 16 scale blocks"):
        attach_weight_scaling(model, n_blocks=16, m=4)  # 32/16 = 2 columns: not a multiple of 4
    assert not any(parametrize.is_parametrized(lin) for _, lin in in_scope_linears(model))
