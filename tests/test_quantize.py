"""Weight-only RTN quantization of 2:4 models: error bound, exact zeros, storage, PPL (issue 6)."""

from __future__ import annotations

import json

import pytest
import torch

from castlab.downstream.quantize import QuantConfig, quantize_model, quantize_tensor, storage_report
from castlab.errors import UserError
from castlab.evaluate import perplexity
from castlab.models import build_preset, in_scope_linears, load_pretrained
from castlab.sparsity.masks import group_nonzeros, nm_mask, verify_nm

VOCAB = 64
SETTINGS = [(bits, scheme) for bits in (8, 4) for scheme in ("symmetric", "asymmetric")]


def sparse_tiny(seed: int = 0):
    """opt-tiny with every in-scope weight pruned to 2:4 (what finalize leaves)."""
    model = build_preset("opt-tiny", vocab_size=VOCAB, seed=seed).eval()
    with torch.no_grad():
        for name, lin in in_scope_linears(model):
            lin.weight.mul_(nm_mask(lin.weight, 2, 4, name))
    return model


def token_stream(n: int = 2048) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(1))


def test_symmetric_int4_hand_case():
    w = torch.tensor([[0.1, -0.35, 0.0, 0.7]])
    qt = quantize_tensor(w, QuantConfig(bits=4, group_size=4))
    # scale 0.7/7 = 0.1, rounded up to the next fp16 value 0.10003662109375.
    s = 0.10003662109375
    assert float(qt.scale) == s
    assert qt.q.tolist() == [[1, -3, 0, 7]]
    assert qt.dequantize()[0].tolist() == pytest.approx([s, -3 * s, 0.0, 7 * s], abs=1e-7)


@pytest.mark.parametrize(("bits", "scheme"), SETTINGS)
def test_error_within_half_scale_and_zeros_exact(bits, scheme):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 256, generator=gen) * torch.logspace(-3, 1, 256)  # varied group scales
    w[3, :64] = 0.0  # an all-zero group
    w[5, 70] = 40.0  # an outlier
    w = w * nm_mask(w, 2, 4)
    g = 64
    qt = quantize_tensor(w, QuantConfig(bits=bits, group_size=g, scheme=scheme))
    deq = qt.dequantize()
    half = (qt.scale.float() / 2).repeat_interleave(g, dim=1)
    assert torch.all((deq - w).abs() <= half * (1 + 1e-6))
    assert torch.all(deq[w == 0] == 0)
    assert int(group_nonzeros(deq, 4).max()) <= 2
    levels = 2 ** bits
    assert int(qt.q.max()) - int(qt.q.min()) < levels  # codes fit in `bits` bits
    assert torch.all(deq[3, :64] == 0)


@pytest.mark.parametrize(("bits", "scheme"), SETTINGS)
def test_quantize_model_keeps_2_4_and_reports_ppl(bits, scheme):
    model = sparse_tiny()
    stream = token_stream()
    before = perplexity(model, stream, seq_len=128)
    originals = {n: lin.weight.detach().clone() for n, lin in in_scope_linears(model)}
    result = quantize_model(model, QuantConfig(bits=bits, group_size=32, scheme=scheme))
    after = perplexity(model, stream, seq_len=128)
    verify_nm(model, 2, 4)
    assert result.zeros_preserved and result.nm_violations == []
    assert result.max_error_over_half_scale <= 1 + 1e-6
    for name, lin in in_scope_linears(model):
        assert torch.all(lin.weight[originals[name] == 0] == 0)
        # int4 may also round a small kept weight to zero; never the other way round.
        assert int((lin.weight != 0).sum()) <= int((originals[name] != 0).sum())
        assert not torch.equal(lin.weight, originals[name])  # it did quantize
    change = abs(after.ppl - before.ppl) / before.ppl
    print(f"int{bits} {scheme}: PPL {before.ppl:.4f} -> {after.ppl:.4f} ({change:.2e})")
    assert change < (2e-3 if bits == 8 else 2e-2)


def test_int4_perturbs_more_than_int8():
    errors = {}
    for bits in (8, 4):
        errors[bits] = quantize_model(sparse_tiny(), QuantConfig(bits=bits, group_size=32)
                                      ).max_abs_error
    assert errors[4] > 8 * errors[8]


def test_storage_report_counts_metadata():
    model = sparse_tiny()
    # opt-tiny in scope: q,k,v,o 32x32 + fc1 64x32 + fc2 32x64 = 8192 weights.
    st = storage_report(model, QuantConfig(bits=4, group_size=32), sparse=True)
    assert st.in_scope_params == 8192
    assert st.values_bits == 4096 * 4
    assert st.nm_metadata_bits == 4096 * 2
    assert st.group_bits == 256 * 16
    assert st.in_scope_ratio == pytest.approx((16384 + 8192 + 4096) / (16 * 8192))
    asym = storage_report(model, QuantConfig(bits=4, group_size=32, scheme="asymmetric"))
    assert asym.group_bits == 256 * 32
    dense8 = storage_report(model, QuantConfig(bits=8, group_size=32), sparse=False)
    assert dense8.nm_metadata_bits == 0 and dense8.values_bits == 8192 * 8
    assert st.model_ratio > st.in_scope_ratio  # embeddings stay fp16


def test_dense_model_is_quantized_without_pattern_check():
    model = build_preset("opt-tiny", vocab_size=VOCAB)
    result = quantize_model(model, QuantConfig(bits=8, group_size=32))
    assert result.storage.nm_metadata_bits == 0


def test_config_and_shape_errors():
    with pytest.raises(UserError, match="bits: got 3, allowed 4, 8"):
        QuantConfig(bits=3)
    with pytest.raises(UserError, match="scheme: got 'nf4'"):
        QuantConfig(scheme="nf4")
    with pytest.raises(UserError, match=r"layer '.*_proj': input dimension 32 is not divisible "
                                        r"by group_size 128"):
        quantize_model(sparse_tiny(), QuantConfig(bits=4, group_size=128))


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="</s>")


def test_cli_quantize_writes_model_and_report(tmp_path, capsys, monkeypatch):
    from castlab.cli import main

    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")  # main() would otherwise re-exec this process
    src, out = tmp_path / "src", tmp_path / "q"
    model = sparse_tiny()
    model.save_pretrained(src)
    _tokenizer().save_pretrained(src)
    code = main(["quantize", str(src), "--bits", "4", "--group-size", "16", "--out", str(out),
                 "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "quantization.json").read_text())
    assert printed["config"] == saved["config"] == {"bits": 4, "group_size": 16,
                                                     "scheme": "symmetric"}
    reloaded = load_pretrained(out)
    verify_nm(reloaded, 2, 4)
    reference = sparse_tiny()
    quantize_model(reference, QuantConfig(bits=4, group_size=16))
    for (_, a), (_, b) in zip(in_scope_linears(reloaded), in_scope_linears(reference), strict=True):
        assert torch.equal(a.weight, b.weight)
    assert main(["quantize", str(src), "--bits", "4", "--group-size", "24"]) == 2
    assert "input dimension 32 is not divisible by group_size 24" in capsys.readouterr().err
