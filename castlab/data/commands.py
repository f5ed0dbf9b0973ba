"""`castlab data prepare` (fetch, clean, split, train the tokenizer, tokenize) and `castlab data info`."""

from __future__ import annotations

import argparse
import json
import sys

from castlab.argtypes import nonnegative_int, positive_int
from castlab.config import MAX_VOCAB
from castlab.data.corpus import (
    CORPUS_SOURCES,
    SPLITS,
    PackageCorpus,
    corpus_cache_dir,
    load_corpus,
)
from castlab.data.pack import register_pack
from castlab.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `castlab data prepare` and `castlab data info`."""
    data = subparsers.add_parser("data", help="prepare and inspect corpora and tokenizers",
                                 description="Prepare and inspect corpora and tokenizers.")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    prepare = commands.add_parser(
        "prepare", help="fetch and clean a corpus, train its tokenizer, tokenize every split",
        description="Fetch, clean and split a corpus, train (or load) its byte-level BPE, "
                    "tokenize every split, and print their sizes. Everything is cached, so "
                    "later commands work offline.")
    prepare.add_argument("--corpus", default="default",
                         help=f"named corpus ({', '.join(CORPUS_SOURCES)}), hf:DATASET[:CONFIG], "
                              "a directory of .txt files or a glob (default: default)")
    prepare.add_argument("--vocab-size", type=positive_int, default=8192,
                         help="BPE vocabulary size including 2 special tokens (default: 8192)")
    prepare.add_argument("--seed", type=nonnegative_int, default=0,
                         help="seed of the document split (default: 0)")
    prepare.set_defaults(func=run_prepare)
    info = commands.add_parser("info", help="list the named corpora and whether they are cached",
                               description="List the named corpora and whether they are cached.")
    info.set_defaults(func=run_info)
    register_pack(commands)


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare one corpus end to end and print documents / characters / tokens per split."""
    from castlab.data.tokenizer import get_tokenizer, split_token_ids, tokenizer_dir

    if args.vocab_size > MAX_VOCAB:
        raise UserError(f"--vocab-size: got {args.vocab_size:,}, allowed at most {MAX_VOCAB:,}")
    print(f"corpus {args.corpus}: loading (downloads and cleans on first use)", file=sys.stderr)
    corpus = load_corpus(args.corpus, seed=args.seed)
    cached = (tokenizer_dir(corpus, args.vocab_size) / "tokenizer.json").exists()
    if not cached:
        print(f"training byte-level BPE (vocab {args.vocab_size}) on "
              f"{corpus.num_characters('train'):,} characters", file=sys.stderr)
    tokenizer, path = get_tokenizer(corpus, args.vocab_size, progress=True)
    meta = json.loads((path / "castlab_tokenizer.json").read_text())
    tokens = {split: split_token_ids(corpus, split, tokenizer).numel() for split in SPLITS}
    print(f"corpus {corpus.name}  fingerprint {corpus.fingerprint[:16]}  seed {args.seed}")
    print(f"tokenizer {path}  (vocab {len(tokenizer)}, "
          f"{'loaded from cache' if cached else 'trained now'}; training took "
          f"{meta['train_seconds']:.1f} s)")
    print(f"{'split':<12}{'documents':>10}{'characters':>14}{'tokens':>12}")
    for split in SPLITS:
        print(f"{split:<12}{len(corpus.splits[split]):>10}"
              f"{corpus.num_characters(split):>14,}{tokens[split]:>12,}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print every named corpus with its description and cache state."""
    print(f"{'corpus':<16}{'cached':<8}description")
    for name, spec in CORPUS_SOURCES.items():
        if isinstance(spec, PackageCorpus):
            cached = "yes" if (corpus_cache_dir(name) / "documents.json").exists() else "no"
        else:
            cached = "hf"  # kept by the datasets library's own cache
        print(f"{name:<16}{cached:<8}{spec.description}")
    return 0
