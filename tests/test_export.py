"""Export: save_pretrained + bit-packed mask; CUDA 2:4 semi-structured check and timing (issue 6)."""

from __future__ import annotations

import json

import pytest
import torch

from castlab.downstream.export import (
    MANIFEST,
    MASK_FILE,
    check_semi_structured,
    export_model,
    time_semi_structured,
)
from castlab.errors import UserError
from castlab.models import build_preset, in_scope_linears, load_pretrained
from castlab.sparsity.masks import load_mask_file, nm_mask, verify_nm

VOCAB = 64
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sparse_model(preset: str = "opt-tiny"):
    model = build_preset(preset, vocab_size=VOCAB, seed=3).eval()
    with torch.no_grad():
        for name, lin in in_scope_linears(model):
            lin.weight.mul_(nm_mask(lin.weight, 2, 4, name))
    return model


def test_export_round_trip(tmp_path):
    model = sparse_model()
    out = export_model(model, tmp_path / "export")
    masks, n, m = load_mask_file(out / MASK_FILE)
    assert (n, m) == (2, 4)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kept"] * 2 == manifest["in_scope"] == 8192
    reloaded = load_pretrained(out)
    verify_nm(reloaded, 2, 4)
    for (name, a), (_, b) in zip(in_scope_linears(model), in_scope_linears(reloaded), strict=True):
        assert torch.equal(a.weight, b.weight)
        # The mask file says exactly where the non-zeros are (random init has no exact zeros).
        assert torch.equal(masks[name], b.weight != 0)
        assert int(masks[name].sum()) * 2 == masks[name].numel()
    # Bit-packed: one bit per in-scope weight plus the header.
    assert (out / MASK_FILE).stat().st_size < 8192 // 8 + 2048


def test_export_refuses_a_dense_model(tmp_path):
    with pytest.raises(UserError, match="cannot export as 2:4: .*more than 2 non-zeros"):
        export_model(build_preset("opt-tiny", vocab_size=VOCAB), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_check_says_it_needs_a_gpu():
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        check_semi_structured(sparse_model())


@needs_cuda
def test_semi_structured_layers_match_masked_dense():
    checks = check_semi_structured(sparse_model("opt-600k"))  # 128x128, 512x128, 128x512
    assert checks and all(c.skipped is None for c in checks), [c.skipped for c in checks]
    for c in checks:
        print(f"{c.name} {c.shape}: max |diff| {c.max_abs_diff:.3g}, rel {c.rel_diff:.3g}")
        assert c.rel_diff < 1e-2  # bf16 accumulation order only


@needs_cuda
def test_time_semi_structured_4096():
    timing = time_semi_structured(4096, tokens=4096)
    print(timing.as_dict())
    assert timing.dense_ms > 0 and timing.sparse_ms > 0


def test_cli_export(tmp_path, capsys, monkeypatch):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from castlab.cli import main

    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")
    src = tmp_path / "src"
    sparse_model().save_pretrained(src)
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(src)
    assert main(["export", str(src), "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / MASK_FILE).is_file() and (tmp_path / "e" / "config.json").is_file()
    assert (tmp_path / "e" / "tokenizer.json").is_file()
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(["export", str(src), "--out", str(tmp_path / "f"), "--check-cuda"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
