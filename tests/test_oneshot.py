"""One-shot pruners on a tiny OPT: exact 2:4, Wanda's score by hand, SparseGPT beats magnitude."""

from __future__ import annotations

import copy

import pytest
import torch

from castlab.errors import UserError
from castlab.models import build_preset, in_scope_linears
from castlab.sparsity.masks import group_nonzeros, nm_mask, verify_nm
from castlab.sparsity.oneshot import (
    ONESHOT_PRUNERS,
    collect_linear_inputs,
    layer_reconstruction_error,
)


@pytest.fixture(scope="module")
def dense():
    return build_preset("opt-tiny", vocab_size=256, seed=0)


@pytest.fixture(scope="module")
def calib():
    return torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_exact_2_4_and_weights_follow_masks(dense, calib, method):
    model = copy.deepcopy(dense)
    masks = ONESHOT_PRUNERS[method](model, calib, n=2, m=4)
    layers = in_scope_linears(model)
    assert set(masks) == {name for name, _ in layers}
    verify_nm(model, 2, 4)
    for name, linear in layers:
        assert masks[name].dtype == torch.bool
        assert torch.equal(group_nonzeros(masks[name], 4), torch.full_like(group_nonzeros(masks[name], 4), 2))
        assert not linear.weight[~masks[name]].any()


def test_wanda_score_by_hand(dense, calib):
    model = copy.deepcopy(dense)
    inputs = collect_linear_inputs(dense, calib)  # block 0 sees the dense model's activations
    masks = ONESHOT_PRUNERS["wanda"](model, calib, n=2, m=4, batch_size=3)
    for name, linear in in_scope_linears(dense):
        norms = inputs[name].pow(2).sum(0).sqrt()
        expected = nm_mask(linear.weight.abs() * norms, 2, 4, name)
        assert torch.equal(masks[name], expected), name
        torch.testing.assert_close(dict(in_scope_linears(model))[name].weight,
                                   linear.weight * expected)


def test_sparsegpt_reconstructs_better_than_magnitude(dense, calib):
    inputs = collect_linear_inputs(dense, calib)
    mag, sgpt = copy.deepcopy(dense), copy.deepcopy(dense)
    ONESHOT_PRUNERS["magnitude"](mag, calib, n=2, m=4)
    ONESHOT_PRUNERS["sparsegpt"](sgpt, calib, n=2, m=4, damp=0.01)
    mag_layers, sgpt_layers = dict(in_scope_linears(mag)), dict(in_scope_linears(sgpt))
    for name, linear in in_scope_linears(dense):
        err_mag = layer_reconstruction_error(linear.weight, mag_layers[name].weight, inputs[name])
        err_sgpt = layer_reconstruction_error(linear.weight, sgpt_layers[name].weight, inputs[name])
        assert err_sgpt < err_mag, (name, err_sgpt, err_mag)


def test_reconstruction_error_by_hand():
    w = torch.tensor([[1.0, 2.0]])
    x = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    assert layer_reconstruction_error(w, torch.tensor([[1.0, 0.0]]), x) == pytest.approx(4.0 + 16.0)


def test_calibration_required(dense):
    with pytest.raises(UserError, match="wanda needs calibration"):
        ONESHOT_PRUNERS["wanda"](copy.deepcopy(dense), None)


def test_wanda_later_blocks_see_pruned_earlier_blocks():
    dense2 = build_preset("opt-100k", vocab_size=128, seed=0)  # 2 blocks
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    pruned = copy.deepcopy(dense2)
    masks = ONESHOT_PRUNERS["wanda"](pruned, ids, n=2, m=4)
    expected = copy.deepcopy(dense2)
    for block in ("layers.0.", "layers.1."):
        inputs = collect_linear_inputs(expected, ids)  # from the model pruned so far
        with torch.no_grad():
            for name, linear in in_scope_linears(expected):
                if block in name:
                    mask = nm_mask(linear.weight.abs() * inputs[name].pow(2).sum(0).sqrt(), 2, 4)
                    assert torch.equal(masks[name], mask), name
                    linear.weight.mul_(mask)
