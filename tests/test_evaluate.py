import math

import pytest
import torch

from castlab.errors import UserError
from castlab.evaluate import perplexity
from castlab.models import build_preset


def uniform_model(vocab: int):
    """A model whose logits are all zero: zeroing the final layer norm zeroes every hidden state."""
    model = build_preset("opt-tiny", vocab_size=vocab)
    norm = model.model.decoder.final_layer_norm
    torch.nn.init.zeros_(norm.weight)
    torch.nn.init.zeros_(norm.bias)
    return model


def test_uniform_logits_give_vocab_size_perplexity():
    vocab = 317
    tokens = torch.randint(0, vocab, (5 * 64 + 17,), generator=torch.Generator().manual_seed(0))
    result = perplexity(uniform_model(vocab), tokens, seq_len=64, batch_size=2)
    assert result.ppl == pytest.approx(vocab, rel=1e-4)
    assert result.loss == pytest.approx(math.log(vocab), rel=1e-6)
    # 5 full windows, 63 scored shifted positions each; the 17-token tail is dropped
    assert result.tokens == 5 * 63
    assert (result.seq_len, result.dtype) == (64, "fp32")


def test_perplexity_matches_hf_loss_on_one_window():
    model = build_preset("opt-tiny", vocab_size=101, seed=3).eval()
    tokens = torch.randint(0, 101, (32,), generator=torch.Generator().manual_seed(1))
    hf_loss = model(input_ids=tokens[None], labels=tokens[None]).loss.item()
    assert perplexity(model, tokens, seq_len=32).loss == pytest.approx(hf_loss, rel=1e-5)


def test_seq_len_beyond_positions_is_a_user_error():
    model = build_preset("opt-tiny", vocab_size=50)
    with pytest.raises(UserError, match="at most 256 positions"):
        perplexity(model, torch.zeros(1000, dtype=torch.long), seq_len=512)
