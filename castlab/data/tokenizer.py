"""The ladder's byte-level BPE tokenizer (trained once per corpus, cached) and token streams.

HF models keep their own tokenizer (``AutoTokenizer.from_pretrained(name)``); everything here
that takes a tokenizer accepts either kind. ``split_token_ids`` is the single source of token
ids for a split: training packs it, the perplexity protocol cuts it into windows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from castlab.config import content_hash
from castlab.data.corpus import SPLITS, Corpus
from castlab.errors import UserError
from castlab.paths import cache_dir

EOS, PAD = "</s>", "<pad>"  # </s> is also the BOS: it sits between documents
MIN_VOCAB = 256 + 2  # the byte alphabet plus the two special tokens
TOKENIZER_FORMAT = 1  # part of the cache key: bump when training settings change meaning
STREAM_FORMAT = 1


def train_bpe(texts: list[str], vocab_size: int, min_frequency: int = 2,
              progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` with ``tokenizers`` (ids: </s>=0, <pad>=1)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
        # every byte is in the vocabulary, so any text encodes (no unknown token needed)
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress)
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    return tokenizer


def tokenizer_dir(corpus: Corpus, vocab_size: int, min_frequency: int = 2) -> Path:
    """Cache directory of the tokenizer for this corpus content and these settings."""
    key = content_hash({"corpus": corpus.fingerprint, "vocab_size": vocab_size,
                        "min_frequency": min_frequency, "kind": "byte-bpe",
                        "format": TOKENIZER_FORMAT}, length=16)
    return cache_dir() / "tokenizers" / key


def get_tokenizer(corpus: Corpus, vocab_size: int = 8192, *,
                  min_frequency: int = 2,
                  progress: bool = False) -> tuple[PreTrainedTokenizerFast, Path]:
    """The BPE for ``corpus`` (trained on its train split) and its directory; cached by content.

    The directory loads with ``transformers.AutoTokenizer.from_pretrained(path)``. A second
    call with the same corpus content and settings loads it without training.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise UserError(f"vocab_size: got {vocab_size!r}, allowed an integer >= {MIN_VOCAB}")
    path = tokenizer_dir(corpus, vocab_size, min_frequency)
    if not (path / "tokenizer.json").exists():
        started = time.perf_counter()
        trained = train_bpe(corpus.splits["train"], vocab_size, min_frequency, progress)
        wrapped = PreTrainedTokenizerFast(tokenizer_object=trained, bos_token=EOS, eos_token=EOS,
                                          pad_token=PAD, model_max_length=int(1e30))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".train-"))
        wrapped.save_pretrained(tmp)
        (tmp / "castlab_tokenizer.json").write_text(json.dumps({
            "corpus": corpus.name, "corpus_fingerprint": corpus.fingerprint,
            "vocab_size": vocab_size, "actual_vocab_size": len(wrapped),
            "min_frequency": min_frequency, "train_seconds": time.perf_counter() - started,
        }, indent=2))
        try:
            os.replace(tmp, path)  # atomic: a concurrent trainer's identical result may win
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(path), path


def tokenizer_identity(tokenizer) -> str:
    """A hash that changes whenever the tokenizer would produce different ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    described = backend.to_str() if backend is not None else json.dumps(
        [type(tokenizer).__name__, tokenizer.name_or_path, sorted(tokenizer.get_vocab().items())])
    extra = f"{tokenizer.bos_token_id}|{tokenizer.eos_token_id}"
    return hashlib.sha256((described + extra).encode("utf-8")).hexdigest()[:16]


def _document_separator(tokenizer) -> int:
    separator = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (
        tokenizer.eos_token_id)
    if separator is None:
        raise UserError(f"tokenizer {tokenizer.name_or_path!r} has neither a bos nor an eos "
                        "token to put between documents")
    return separator


def encode_documents(texts: list[str], tokenizer, separator: int, progress: bool = True,
                     chunk: int = 16) -> np.ndarray:
    """Batched encoding of ``texts`` into one int32 stream, each document preceded by ``separator``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = []
    for start in tqdm(range(0, len(texts), chunk), desc="tokenizing", unit="chunk",
                      disable=not progress or len(texts) <= chunk):
        batch = texts[start:start + chunk]
        if backend is not None:  # Rust batch encoding, parallel, no length warnings
            ids = [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]
        else:
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for doc_ids in ids:
            parts.append(np.asarray([separator], dtype=np.int32))
            parts.append(np.asarray(doc_ids, dtype=np.int32))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)


def stream_path(corpus: Corpus, split: str, tokenizer) -> Path:
    """Cache file of the token stream of one split under one tokenizer."""
    key = content_hash({"corpus": corpus.fingerprint, "tokenizer": tokenizer_identity(tokenizer),
                        "split": split, "format": STREAM_FORMAT}, length=16)
    return cache_dir() / "tokens" / f"{key}.npy"


def split_token_ids(corpus: Corpus, split: str, tokenizer, *,
                    progress: bool = True) -> torch.Tensor:
    """The 1-D LongTensor of a split: documents in order, each preceded by bos (else eos).

    With castlab's BPE the bos is </s>, the eos, so eos sits between documents. Tokenized once
    and cached as .npy keyed by (corpus fingerprint, tokenizer identity, split).
    """
    if split not in SPLITS:
        raise UserError(f"split: got {split!r}, allowed {', '.join(SPLITS)}")
    path = stream_path(corpus, split, tokenizer)
    if path.exists():
        ids = np.load(path, allow_pickle=False)  # a cache file: data only, never objects
    else:
        ids = encode_documents(corpus.splits[split], tokenizer, _document_separator(tokenizer),
                               progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(tmp, ids)
        os.replace(tmp, path)
    return torch.from_numpy(ids.astype(np.int64))
