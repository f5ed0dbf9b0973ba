"""Data: corpus (registry packages, local files, HF datasets) -> BPE tokenizer -> packed streams.

``load_corpus`` gives cleaned documents split by document; ``get_tokenizer`` trains (or loads
from the cache) the ladder's byte-level BPE; ``split_token_ids`` tokenizes a split once into the
single stream that both training (``PackedStream``) and the perplexity protocol read.
"""

from castlab.data.corpus import CORPUS_SOURCES, Corpus, load_corpus
from castlab.data.packing import PackedStream
from castlab.data.tokenizer import get_tokenizer, split_token_ids, tokenizer_identity

__all__ = [
    "CORPUS_SOURCES",
    "Corpus",
    "PackedStream",
    "get_tokenizer",
    "load_corpus",
    "split_token_ids",
    "tokenizer_identity",
]
