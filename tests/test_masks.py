"""N:M masks: hand-computed cases, ties, errors naming the layer, verifier, mask file round trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from castlab.errors import UserError
from castlab.models import build_preset, in_scope_linears
from castlab.sparsity.masks import (
    NMVerificationError,
    load_mask_file,
    nm_mask,
    nm_violations,
    save_mask_file,
    verify_nm,
)


def test_hand_computed_2_4():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, -4.0, 0.0, 1.0],
                      [-2.0, 1.0, -3.0, 0.5, 0.0, 0.0, 0.0, -1e-3]])
    expected = torch.tensor([[False, True, True, False, True, True, False, False],
                             [True, False, True, False, True, False, False, True]])  # tie: index 4
    assert torch.equal(nm_mask(w, 2, 4), expected)


def test_ties_keep_exactly_n_lowest_index_first():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, -1.0, 2.0]])
    mask = nm_mask(w, 2, 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False],
                             [True, False, False, True]]
    assert torch.equal(nm_mask(w, 1, 4).sum(1), torch.tensor([1, 1, 1]))
    assert nm_mask(w, 1, 4)[2].tolist() == [True, False, False, False]


def test_nan_never_breaks_exact_n():
    w = torch.tensor([[float("nan"), 1.0, float("nan"), 2.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, False, True]]


@settings(max_examples=40, deadline=None)
# m <= 6 goes through the look-up table (uint8 codes up to m = 4, int16 at 5-6), m = 8 counts ranks
@given(st.integers(1, 6), st.sampled_from([(1, 2), (1, 4), (2, 4), (3, 4), (3, 6), (2, 8), (4, 8)]),
       st.integers(0, 2**31 - 1), st.booleans())
def test_matches_sorted_reference(rows, nm, seed, ties):
    n, m = nm
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randint(-2, 3, (rows, 2 * m), generator=gen).float() if ties
         else torch.randn(rows, 2 * m, generator=gen))
    mask = nm_mask(w, n, m)
    assert torch.equal(nm_mask(w, n, m, pruned=True), ~mask)
    for r in range(rows):
        for g in range(0, 2 * m, m):
            order = sorted(range(g, g + m), key=lambda c, r=r: (-abs(float(w[r, c])), c))
            assert sorted(order[:n]) == [c for c in range(g, g + m) if mask[r, c]]


def test_non_divisible_input_dim_names_the_layer():
    with pytest.raises(UserError, match=r"layer 'decoder.layers.0.fc2'.*input dimension 6.*M=4"):
        nm_mask(torch.randn(3, 6), 2, 4, name="decoder.layers.0.fc2")
    with pytest.raises(UserError, match="0 < N <= M"):
        nm_mask(torch.randn(3, 8), 5, 4)


def test_verifier_lists_offending_layers():
    model = build_preset("opt-tiny", vocab_size=64)
    layers = in_scope_linears(model)
    with torch.no_grad():
        for name, linear in layers:
            linear.weight.mul_(nm_mask(linear.weight, 2, 4, name))
    verify_nm(model, 2, 4)
    assert nm_violations(model, 2, 4) == []
    name, linear = layers[1]
    with torch.no_grad():
        linear.weight[0, :4] = 1.0  # one group with 4 non-zeros
    problems = nm_violations(model, 2, 4)
    assert len(problems) == 1 and problems[0].startswith(f"{name}: 1 of ")
    with pytest.raises(NMVerificationError, match=name):
        verify_nm(model, 2, 4)


def test_mask_file_round_trip_is_exact_and_bit_packed(tmp_path):
    gen = torch.Generator().manual_seed(0)
    masks = {"a.q_proj": nm_mask(torch.randn(16, 64, generator=gen), 2, 4),
             "b.fc1": nm_mask(torch.randn(7, 12, generator=gen), 1, 4)}  # 84 bits: not a byte multiple
    path = save_mask_file(tmp_path / "mask.safetensors", masks, 2, 4)
    loaded, n, m = load_mask_file(path)
    assert (n, m) == (2, 4) and set(loaded) == set(masks)
    for key in masks:
        assert loaded[key].dtype == torch.bool and torch.equal(loaded[key], masks[key])
    assert path.stat().st_size < 16 * 64 // 8 + 11 + 1024  # ~1 bit per weight plus a header


def test_mask_file_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_mask_file(tmp_path / "missing.safetensors")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="bogus.safetensors"):
        load_mask_file(bogus)
