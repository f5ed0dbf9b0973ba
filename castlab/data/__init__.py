"""Data: corpus (registry packages, local files, HF datasets) -> BPE tokenizer -> packed streams.

``load_corpus`` gives cleaned documents split by document; ``get_tokenizer`` trains (or loads
from the cache) the ladder's byte-level BPE; ``split_token_ids`` tokenizes a split once into the
single stream that both training (``PackedStream``) and the perplexity protocol read.

The names are imported on first use (PEP 562), so ``castlab.data.corpus`` and the command line
load without torch and transformers.
"""

from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "CORPUS_SOURCES": "corpus", "Corpus": "corpus", "load_corpus": "corpus",
    "PackedStream": "packing",
    "get_tokenizer": "tokenizer", "split_token_ids": "tokenizer", "tokenizer_identity": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the submodule defining ``name`` on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'castlab.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"castlab.data.{_EXPORTS[name]}"), name)
