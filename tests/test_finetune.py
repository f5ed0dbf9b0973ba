"""Fine-tuning a 2:4 model with its mask held fixed, vs dense, with optional KD (issue 6)."""

from __future__ import annotations

import copy

import pytest
import torch

from castlab.downstream.finetune import eval_loss, finetune, masks_from_model
from castlab.errors import UserError
from castlab.models import build_preset, in_scope_linears
from castlab.sparsity.masks import nm_mask, nm_violations

VOCAB = 64
SEQ = 33


def sparse_tiny(seed: int = 0):
    model = build_preset("opt-tiny", vocab_size=VOCAB, seed=seed)
    with torch.no_grad():
        for name, lin in in_scope_linears(model):
            lin.weight.mul_(nm_mask(lin.weight, 2, 4, name))
    return model


def chain_batches(starts: list[int], batch: int = 8) -> list[torch.Tensor]:
    """Sequences that follow a fixed random successor table: learnable in a few dozen steps."""
    succ = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(7))
    rows = []
    for s in starts:
        row = [s % VOCAB]
        for _ in range(SEQ - 1):
            row.append(int(succ[row[-1]]))
        rows.append(row)
    ids = torch.tensor(rows)
    return list(ids.split(batch))


TRAIN = chain_batches(list(range(0, 64, 2)))  # 4 batches of 8
EVAL = chain_batches(list(range(1, 64, 4)))  # other starting points


def test_sparse_finetune_keeps_exact_mask_and_lowers_loss():
    model = sparse_tiny()
    masks = masks_from_model(model)
    before = {n: lin.weight.detach().clone() for n, lin in in_scope_linears(model)}
    result = finetune(model, TRAIN, masks, steps=25, lr=5e-3, eval_batches=EVAL)
    assert result.exact_nm is True and nm_violations(model, 2, 4) == []
    for name, lin in in_scope_linears(model):
        assert torch.all(lin.weight[~masks[name]] == 0)  # pruned stay exactly zero
        kept = masks[name]
        assert not torch.equal(lin.weight[kept], before[name][kept])  # kept ones trained
    assert result.eval_loss_after < result.eval_loss_before - 0.5
    assert result.train_losses[-1] < result.train_losses[0]
    assert result.eval_loss_after == pytest.approx(eval_loss(model, EVAL))
    print(f"sparse: eval loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}")


def test_dense_finetune_same_way_fills_the_zeros():
    model = sparse_tiny()
    zeros = {n: lin.weight.detach() == 0 for n, lin in in_scope_linears(model)}
    result = finetune(model, TRAIN, None, steps=25, lr=5e-3, eval_batches=EVAL)
    assert result.exact_nm is None and not result.sparse
    assert result.eval_loss_after < result.eval_loss_before - 0.5
    # Without the mask the pruned positions move: the mask is what keeps them at zero.
    assert any(bool((lin.weight[zeros[n]] != 0).any()) for n, lin in in_scope_linears(model))
    print(f"dense: eval loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}")


def test_finetune_with_kd_from_dense_teacher():
    pytest.importorskip("castlab.sparsity.distill")
    teacher = build_preset("opt-tiny", vocab_size=VOCAB, seed=0)
    finetune(teacher, TRAIN, None, steps=20, lr=5e-3)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name, lin in in_scope_linears(student):
            lin.weight.mul_(nm_mask(lin.weight, 2, 4, name))
    result = finetune(student, TRAIN, masks_from_model(student), steps=10, lr=3e-3,
                      teacher=teacher, eta=0.5, eval_batches=EVAL)
    assert result.distilled and result.exact_nm
    assert result.eval_loss_after < result.eval_loss_before
    assert all(not p.requires_grad for p in teacher.parameters())


def test_errors_name_the_problem():
    dense = build_preset("opt-tiny", vocab_size=VOCAB)
    with pytest.raises(UserError, match="model is not 2:4 sparse, so it has no mask to hold fixed"):
        masks_from_model(dense)
    model = sparse_tiny()
    masks = masks_from_model(model)
    name = next(iter(masks))
    with pytest.raises(UserError, match="masks: no mask for in-scope layer"):
        finetune(model, TRAIN, {k: v for k, v in masks.items() if k != name}, steps=1, lr=1e-3)
    bad = dict(masks, **{name: masks[name].float()})
    with pytest.raises(UserError, match=f"masks: '{name}' must be a bool tensor"):
        finetune(model, TRAIN, bad, steps=1, lr=1e-3)
    with pytest.raises(UserError, match="steps: got 0"):
        finetune(model, TRAIN, masks, steps=0, lr=1e-3)
    with pytest.raises(UserError, match="eta: got 2"):
        finetune(model, TRAIN, masks, steps=1, lr=1e-3, eta=2)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="</s>")


def test_cli_finetune_on_a_local_corpus(tmp_path, capsys, monkeypatch):
    import json

    from castlab.cli import main
    from castlab.models import load_pretrained

    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")  # main() would otherwise re-exec this process
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for doc, batch in enumerate(chain_batches(list(range(3, 63, 3)), batch=1)):
        ids = [t if t >= 3 else t + 3 for t in batch[0].tolist()] * 4
        (corpus / f"doc{doc:02d}.txt").write_text(" ".join(f"w{t}" for t in ids) + "\n")
    src, out = tmp_path / "src", tmp_path / "ft"
    sparse_tiny().save_pretrained(src)
    _word_tokenizer().save_pretrained(src)
    code = main(["finetune", str(src), "--corpus", str(corpus), "--steps", "15", "--lr", "5e-3",
                 "--batch-size", "4", "--seq-len", "32", "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["exact_nm"] is True and report["steps"] == 15
    assert report["eval_loss_after"] < report["eval_loss_before"]
    assert nm_violations(load_pretrained(out), 2, 4) == []
    assert main(["finetune", str(src), "--corpus", str(tmp_path / "nothing_here")]) == 2
    assert "castlab finetune: error: corpus" in capsys.readouterr().err
