import pytest

from castlab.errors import UserError
from castlab.models import build_preset, count_parameters, in_scope_linears, opt_config_for


def test_parameter_counts_match_a_hand_count_for_opt_100k():
    vocab = 1000
    counts = count_parameters(build_preset("opt-100k", vocab_size=vocab))
    h, ffn, layers, positions = 64, 256, 2, 512 + 2  # OPT keeps 2 extra position rows
    attention = 4 * (h * h + h)
    mlp = (h * ffn + ffn) + (ffn * h + h)
    norms = 2 * 2 * h
    non_embedding = layers * (attention + mlp + norms) + 2 * h  # + final layer norm
    assert counts.non_embedding == non_embedding == 100_096
    assert counts.total == non_embedding + vocab * h + positions * h  # LM head tied
    assert counts.in_scope == layers * (4 * h * h + 2 * h * ffn) == 98_304
    assert counts.nonzero_in_scope == counts.in_scope


def test_in_scope_layers_are_the_block_linears_only():
    names = [n for n, _ in in_scope_linears(build_preset("opt-tiny", vocab_size=64))]
    assert names == [f"model.decoder.layers.0.{p}" for p in
                     ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                      "self_attn.out_proj", "fc1", "fc2")]


def test_unknown_preset_is_a_user_error_naming_the_allowed_ones():
    with pytest.raises(UserError, match=r"unknown model preset 'opt-7b'.*opt-100k"):
        opt_config_for("opt-7b", vocab_size=100)
