"""BPE tokenizer cache and round trip, token-stream cache, and `castlab data prepare` output."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from castlab import cli
from castlab.data import tokenizer as tok_mod
from castlab.data.corpus import load_corpus
from castlab.errors import UserError

WORDS = ["the", "king", "queen", "crown", "sword", "honour", "night", "day", "love", "death",
         "speak", "thou", "thee", "art", "doth", "England", "France", "battle", "grace", "lord",
         "lady", "heaven", "earth", "father", "son"]


@pytest.fixture
def small_corpus(tmp_path, monkeypatch):
    """A 10-document local corpus under a fresh cache root."""
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    docs_dir = tmp_path / "docs"
    docs_dir.mkdir()
    for i in range(10):
        lines = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."
                 for _ in range(40)]
        (docs_dir / f"doc{i}.txt").write_text(f"Act {i}.\n\n" + "\n".join(lines))
    return load_corpus(str(docs_dir))


def test_tokenizer_trains_once_then_loads_from_cache(small_corpus, monkeypatch):
    calls = []
    real_train = tok_mod.train_bpe
    monkeypatch.setattr(tok_mod, "train_bpe", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    tokenizer, path = tok_mod.get_tokenizer(small_corpus, vocab_size=300)
    assert calls == [1]
    mtime = (path / "tokenizer.json").stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("second prepare retrained the tokenizer")

    monkeypatch.setattr(tok_mod, "train_bpe", must_not_train)
    again, again_path = tok_mod.get_tokenizer(small_corpus, vocab_size=300)
    assert again_path == path and (path / "tokenizer.json").stat().st_mtime_ns == mtime
    assert again.get_vocab() == tokenizer.get_vocab()
    # other settings are another cache entry
    monkeypatch.setattr(tok_mod, "train_bpe", real_train)
    _, other = tok_mod.get_tokenizer(small_corpus, vocab_size=320)
    assert other != path


def test_tokenizer_loads_with_autotokenizer_and_round_trips(small_corpus):
    _, path = tok_mod.get_tokenizer(small_corpus, vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == 300
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == ("</s>", "</s>", "<pad>")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1)
    for text in ["The king doth speak.", "  two  spaces\tand tabs\nnew line ",
                 "Übermäßig naïve café — 😀 ‘quotes’", "</s> literal"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # trained merges make frequent words short: "the" is one token
    assert len(tokenizer(" the", add_special_tokens=False)["input_ids"]) == 1


def test_bad_vocab_size_is_a_user_error(small_corpus):
    with pytest.raises(UserError, match=r"vocab_size: got 100, allowed an integer >= 258"):
        tok_mod.get_tokenizer(small_corpus, vocab_size=100)


def test_split_stream_matches_per_document_encoding_and_is_cached(small_corpus, monkeypatch):
    tokenizer, _ = tok_mod.get_tokenizer(small_corpus, vocab_size=300)
    stream = tok_mod.split_token_ids(small_corpus, "train", tokenizer, progress=False)
    expected = []
    for text in small_corpus.splits["train"]:  # independent reference: one document at a time
        expected += [tokenizer.eos_token_id] + tokenizer.encode(text, add_special_tokens=False)
    assert stream.dtype.is_floating_point is False and stream.dim() == 1
    assert stream.tolist() == expected
    assert int((stream == 0).sum()) == len(small_corpus.splits["train"])
    path = tok_mod.stream_path(small_corpus, "train", tokenizer)
    assert np.load(path).tolist() == expected

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the cached stream was tokenized again")

    monkeypatch.setattr(tok_mod, "encode_documents", must_not_encode)
    reloaded = AutoTokenizer.from_pretrained(tok_mod.tokenizer_dir(small_corpus, 300))
    assert tok_mod.split_token_ids(small_corpus, "train", reloaded).tolist() == expected
    with pytest.raises(UserError, match="split: got 'dev'"):
        tok_mod.split_token_ids(small_corpus, "dev", tokenizer)


def test_prepare_cli_prints_sizes_per_split(small_corpus, capsys):
    docs_dir = small_corpus.name
    assert cli.main(["data", "prepare", "--corpus", docs_dir, "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    tokenizer, _ = tok_mod.get_tokenizer(small_corpus, vocab_size=300)
    for split in ("train", "validation", "test"):
        row = re.search(rf"^{split}\s+(\d+)\s+([\d,]+)\s+([\d,]+)$", out, re.MULTILINE)
        assert row, out
        docs, chars, tokens = (int(g.replace(",", "")) for g in row.groups())
        assert docs == len(small_corpus.splits[split])
        assert chars == small_corpus.num_characters(split)
        assert tokens == tok_mod.split_token_ids(small_corpus, split, tokenizer).numel()
