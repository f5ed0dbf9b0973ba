"""`castlab data pack` / `castlab data unpack`: a prepared corpus as one file for an offline node.

The file is an xz-compressed tar of what a warm cache holds for the corpus: its cleaned
documents (``corpus/NAME/documents.json``) and its trained tokenizer (``tokenizers/KEY/``).
Token streams are left out: they are a pure function of the two and cost more to ship
(4 bytes per token) than to rebuild on the node, which tokenizes them on first use. Unpacking
writes the same paths under the node's ``$CASTLAB_CACHE``, so every castlab command there finds
the corpus and its tokenizer cached, with the same fingerprint and tokenizer identity.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

from castlab.data.corpus import CORPUS_SOURCES, PackageCorpus, corpus_cache_dir, load_corpus
from castlab.errors import UserError
from castlab.paths import cache_dir, extract_members, pack_size


def register_pack(commands: argparse._SubParsersAction) -> None:
    """Add `castlab data pack` and `castlab data unpack` to the `castlab data` group."""
    pack = commands.add_parser(
        "pack", help="write a prepared corpus and its tokenizer into one .tar.xz file",
        description="Pack the cleaned documents and the tokenizer of a named package corpus "
                    "into one xz-compressed file to copy to a machine without registry access.")
    pack.add_argument("--corpus", default="default", help="named package corpus (default: default)")
    pack.add_argument("--vocab-size", type=int, default=8192,
                      help="tokenizer vocabulary size (default: 8192)")
    pack.add_argument("--out", type=Path, required=True, help="file to write (.tar.xz)")
    pack.set_defaults(func=run_pack)
    unpack = commands.add_parser(
        "unpack", help="install a packed corpus into this machine's castlab cache",
        description="Extract a file written by `castlab data pack` into $CASTLAB_CACHE.")
    unpack.add_argument("file", type=Path, help="file written by `castlab data pack`")
    unpack.set_defaults(func=run_unpack)


def pack_corpus(name: str, vocab_size: int, out: Path) -> Path:
    """Write ``out`` holding the cached documents of corpus ``name`` and its tokenizer."""
    if not isinstance(CORPUS_SOURCES.get(name), PackageCorpus):
        packable = [k for k, v in CORPUS_SOURCES.items() if isinstance(v, PackageCorpus)]
        raise UserError(f"--corpus: '{name}' is not a named package corpus, allowed "
                        f"{', '.join(packable)}")
    from castlab.data.tokenizer import get_tokenizer  # transformers: only when packing

    corpus = load_corpus(name)  # fetches and cleans on first use
    _, tok_dir = get_tokenizer(corpus, vocab_size)
    root = cache_dir()
    docs = corpus_cache_dir(name) / "documents.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:xz") as tar:
        tar.add(docs, arcname=str(docs.relative_to(root)))
        tar.add(tok_dir, arcname=str(tok_dir.relative_to(root)))
        manifest = json.dumps({"corpus": name, "fingerprint": corpus.fingerprint,
                               "tokenizer": str(tok_dir.relative_to(root))}).encode()
        info = tarfile.TarInfo("castlab_pack.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    tmp.replace(out)
    return out


def unpack_corpus(file: Path) -> dict:
    """Extract a pack into the cache; returns its manifest. Refuses files castlab did not write."""
    try:
        with tarfile.open(file, "r:xz") as tar:
            names = tar.getnames()
            if "castlab_pack.json" not in names:
                raise UserError(f"{file}: not a castlab corpus pack (no castlab_pack.json)")
            bad = [n for n in names if n != "castlab_pack.json"
                   and not n.startswith(("corpus/", "tokenizers/"))]
            if bad:
                raise UserError(f"{file}: unexpected member '{bad[0]}' in a corpus pack")
            manifest = json.loads(tar.extractfile("castlab_pack.json").read())
            extract_members(tar, cache_dir(), [m for m in tar.getmembers()
                                               if m.name != "castlab_pack.json"])
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{file}: cannot read the corpus pack ({err})") from None
    return manifest


def run_pack(args: argparse.Namespace) -> int:
    """Pack a corpus; print the file, its size and whether it fits the 50 MB target."""
    out = pack_corpus(args.corpus, args.vocab_size, args.out)
    print(f"{out}  {pack_size(out)}")
    return 0


def run_unpack(args: argparse.Namespace) -> int:
    """Unpack into the cache and say what is now available offline."""
    manifest = unpack_corpus(args.file)
    print(f"corpus {manifest['corpus']} (fingerprint {manifest['fingerprint'][:16]}) and its "
          f"tokenizer are in {cache_dir()}; token streams are built on first use", file=sys.stderr)
    return 0
