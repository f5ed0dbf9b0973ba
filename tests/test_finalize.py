"""Finalize: exact N:M, scales folded, masks from the masked forward, save + reload identical.

Also the masked forward (STE) used by the SR-STE / AST baselines that finalize consumes.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from castlab.errors import UserError
from castlab.models import build_preset, in_scope_linears
from castlab.sparsity.finalize import (
    MASK_FILE,
    NMVerificationError,
    finalize,
    save_finalized,
)
from castlab.sparsity.masks import group_nonzeros, load_mask_file, nm_mask
from castlab.sparsity.scaling import attach_weight_scaling, block_scale, raw_weight
from castlab.sparsity.ste import ast_decay_, attach_masked_forward, srste_decay_


def scaled_model(seed=0):
    model = build_preset("opt-tiny", vocab_size=64, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in attach_weight_scaling(model, 2, 4):
            a.copy_(torch.rand(a.shape, generator=gen) + 0.5)
    return model


def test_finalize_prunes_folds_and_verifies():
    model = scaled_model()
    expected, expected_masks = {}, {}
    for name, linear in in_scope_linears(model):
        w = raw_weight(linear).detach()
        a = block_scale(linear).scale.detach()
        w_eff = w * a.repeat_interleave(w.shape[1] // 2, dim=1)
        expected_masks[name] = nm_mask(w, 2, 4)
        expected[name] = w_eff * expected_masks[name]
    report = finalize(model, 2, 4)
    assert report.mask_source == "recomputed" and report.layers == len(expected)
    assert report.nonzero <= report.params_in_scope // 2 and 0 < report.masked_kept_ratio < 1
    for name, linear in in_scope_linears(model):
        assert not parametrize.is_parametrized(linear)
        assert int(group_nonzeros(linear.weight, 4).max()) <= 2
        torch.testing.assert_close(linear.weight.detach(), expected[name])
        assert torch.equal(report.masks[name], expected_masks[name])


def test_save_and_reload_gives_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = scaled_model(1)
    report = finalize(model, 2, 4)
    out = save_finalized(model, None, tmp_path / "model", report.masks, 2, 4)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    masks, n, m = load_mask_file(out / MASK_FILE)
    assert (n, m) == (2, 4)
    for name, linear in in_scope_linears(reloaded):
        assert torch.equal(masks[name], report.masks[name])
        assert not linear.weight[~masks[name]].any()


def test_bad_given_mask_fails_verification():
    model = build_preset("opt-tiny", vocab_size=64)
    masks = {name: torch.ones_like(lin.weight, dtype=torch.bool) for name, lin in in_scope_linears(model)}
    with pytest.raises(NMVerificationError, match="keeps more than 2 of 4"):
        finalize(model, 2, 4, masks=masks)
    with pytest.raises(UserError, match="unknown layers: nope"):
        finalize(model, 2, 4, masks={"nope": masks[next(iter(masks))]})


def test_masked_forward_ste_and_finalize_keeps_its_masks():
    model = build_preset("opt-tiny", vocab_size=64, seed=2)
    handle = attach_masked_forward(model, 2, 4)
    name, linear = in_scope_linears(model)[0]
    w = raw_weight(linear)
    mask = handle.masks()[0]
    torch.testing.assert_close(linear.weight, w * mask)  # forward uses the masked weight
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert w.grad[~mask].abs().sum() > 0  # straight-through: pruned entries get gradients too

    grads = [p.grad.clone() for p in handle.weights()]
    srste_decay_(handle.weights(), handle.masks(), 0.5)
    for p, g, mk in zip(handle.weights(), grads, handle.masks(), strict=True):
        torch.testing.assert_close(p.grad, g + 0.5 * p.detach() * ~mk)
    ast_decay_(handle.weights(), handle.masks(), 0.5, alpha=0.5)
    for p, g, mk in zip(handle.weights(), grads, handle.masks(), strict=True):
        torch.testing.assert_close(p.grad, g + 0.75 * p.detach() * ~mk)

    with torch.no_grad():  # make the magnitudes disagree with the mask the forward used
        w.copy_(torch.where(mask, w * 1e-3, w + 10.0))
    kept = {n_: m_.clone() for n_, m_ in handle.mask_dict().items()}
    report = finalize(model, 2, 4)
    assert report.mask_source == "masked-forward"
    assert torch.equal(report.masks[name], kept[name])
    assert not any(parametrize.is_parametrized(lin) for _, lin in in_scope_linears(model))
    assert not linear.weight[~kept[name]].any()


def test_refresh_reports_flip_rate():
    model = build_preset("opt-tiny", vocab_size=64, seed=3)
    handle = attach_masked_forward(model, 2, 4)
    assert handle.refresh() == 0.0  # nothing changed since attach
    w = handle.weights()[0]
    with torch.no_grad():
        w.neg_().mul_(torch.linspace(1.0, 2.0, w.shape[1]))  # reorders magnitudes inside groups
    rate = handle.refresh()
    assert 0 < rate < 1 and handle.last_flip_rate() == rate
