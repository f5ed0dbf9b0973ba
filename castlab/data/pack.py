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
import os
import re
import sys
import tarfile
import time
from pathlib import Path

from castlab.config import content_hash
from castlab.data.corpus import CORPUS_SOURCES, PackageCorpus, corpus_cache_dir, load_corpus
from castlab.errors import UserError
from castlab.paths import (
    cache_dir,
    check_pack_output,
    pack_size,
    remove_tree,
    staging_dir,
    stream_pack,
)


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
    out = check_pack_output(out, "--out")
    from castlab.data.tokenizer import get_tokenizer  # transformers: only when packing

    corpus = load_corpus(name)  # fetches and cleans on first use
    _, tok_dir = get_tokenizer(corpus, vocab_size)
    root = cache_dir()
    docs = corpus_cache_dir(name) / "documents.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with tarfile.open(tmp, "w:xz") as tar:
            manifest = json.dumps({"corpus": name, "fingerprint": corpus.fingerprint,
                                   "tokenizer": str(tok_dir.relative_to(root))}).encode()
            info = tarfile.TarInfo(MANIFEST)  # first: unpack checks it before the documents
            info.size, info.mtime = len(manifest), int(time.time())
            tar.addfile(info, io.BytesIO(manifest))
            tar.add(docs, arcname=str(docs.relative_to(root)))
            tar.add(tok_dir, arcname=str(tok_dir.relative_to(root)))
        tmp.replace(out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--out: cannot write {out} ({err.strerror or err})") from None
    return out


MANIFEST = "castlab_pack.json"
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "castlab_tokenizer.json"}
MAX_DOCUMENTS_BYTES = 4 * 2**30
_HEX = re.compile(r"[0-9a-f]+")


def _check_manifest(manifest: object, file: Path) -> dict:
    """The manifest's three fields, each checked: a named package corpus, a 64-hex fingerprint,
    and ``tokenizers/<16 hex>``."""
    where = f"{file}: {MANIFEST}"
    if not isinstance(manifest, dict):
        raise UserError(f"{where}: got {type(manifest).__name__}, allowed an object with "
                        "corpus, fingerprint, tokenizer")
    name, fingerprint, tok = (manifest.get(k) for k in ("corpus", "fingerprint", "tokenizer"))
    if not isinstance(name, str) or not isinstance(CORPUS_SOURCES.get(name), PackageCorpus):
        packable = [k for k, v in CORPUS_SOURCES.items() if isinstance(v, PackageCorpus)]
        raise UserError(f"{where}: corpus: got {str(name)[:60]!r}, allowed a named package "
                        f"corpus of this castlab ({', '.join(packable)})")
    if not isinstance(fingerprint, str) or len(fingerprint) != 64 or not _HEX.fullmatch(fingerprint):
        raise UserError(f"{where}: fingerprint: allowed 64 hex digits")
    parts = tok.split("/") if isinstance(tok, str) else []
    if len(parts) != 2 or parts[0] != "tokenizers" or len(parts[1]) != 16 \
            or not _HEX.fullmatch(parts[1]):
        raise UserError(f"{where}: tokenizer: got {str(tok)[:60]!r}, allowed 'tokenizers/<16 "
                        "hex digits>'")
    return manifest


def _check_member(member: tarfile.TarInfo, file: Path, seen_manifest: bool) -> None:
    parts = member.name.split("/")
    ok = (parts[0] == "corpus" and (len(parts) <= 2 and member.isdir()
                                    or len(parts) == 3 and parts[2] == "documents.json"
                                    and member.isfile() and member.size <= MAX_DOCUMENTS_BYTES)) \
        or (parts[0] == "tokenizers" and (len(parts) <= 2 and member.isdir()
                                          or len(parts) == 3 and parts[2] in TOKENIZER_FILES
                                          and member.isfile()))
    if not ok and not seen_manifest:
        raise UserError(f"{file}: not a castlab corpus pack (no {MANIFEST} before member "
                        f"'{member.name[:120]}')")
    if not ok:
        raise UserError(f"{file}: unexpected member '{member.name[:120]}' in a corpus pack "
                        "(allowed corpus/NAME/documents.json and tokenizers/KEY/ with "
                        f"{', '.join(sorted(TOKENIZER_FILES))})")


def _verify(staging: Path, manifest: dict, file: Path) -> None:
    """The staged documents hash to the manifest's fingerprint, and the staged tokenizer is the
    one castlab trains for that corpus (its folder key and recorded fingerprint agree, it loads)."""
    from transformers import PreTrainedTokenizerFast

    from castlab.data.corpus import CACHE_FORMAT, Document, SplitSettings, _build
    from castlab.data.tokenizer import TOKENIZER_FORMAT

    name, fingerprint = manifest["corpus"], manifest["fingerprint"]
    extra = [p for p in (staging / "corpus").iterdir() if p.name != name] \
        if (staging / "corpus").is_dir() else []
    docs_file = staging / "corpus" / name / "documents.json"
    if extra or not docs_file.is_file():
        raise UserError(f"{file}: holds {'corpus/' + extra[0].name if extra else 'no'} documents "
                        f"where the manifest names corpus '{name}'")
    try:
        data = json.loads(docs_file.read_bytes())
        if data.get("format") != CACHE_FORMAT or data.get("sources") != list(
                CORPUS_SOURCES[name].sources):
            raise ValueError("written by another castlab version or for other sources")
        docs = [Document(**{k: str(v) for k, v in d.items()}) for d in data["documents"]]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        raise UserError(f"{file}: corpus/{name}/documents.json is not a castlab corpus "
                        f"({str(err)[:80]}); nothing installed") from None
    got = _build(name, docs, SplitSettings()).fingerprint
    if got != fingerprint:
        raise UserError(f"{file}: corpus/{name}/documents.json has fingerprint {got[:16]}, the "
                        f"manifest says {fingerprint[:16]}; nothing installed")
    tok_dirs = [p.name for p in (staging / "tokenizers").iterdir()] \
        if (staging / "tokenizers").is_dir() else []
    key = manifest["tokenizer"].split("/")[1]
    if tok_dirs != [key]:
        raise UserError(f"{file}: holds tokenizer(s) {', '.join(tok_dirs) or 'none'}, the "
                        f"manifest names {manifest['tokenizer']}")
    tok_dir = staging / "tokenizers" / key
    try:
        info = json.loads((tok_dir / "castlab_tokenizer.json").read_bytes())
        config = json.loads((tok_dir / "tokenizer_config.json").read_bytes())
        expected = content_hash({"corpus": fingerprint, "vocab_size": info["vocab_size"],
                                 "min_frequency": info["min_frequency"], "kind": "byte-bpe",
                                 "format": TOKENIZER_FORMAT}, length=16)
        if info.get("corpus_fingerprint") != fingerprint or expected != key:
            raise ValueError("trained for another corpus or settings")
        if "auto_map" in config or config.get("tokenizer_class") not in (
                None, "PreTrainedTokenizerFast", "TokenizersBackend"):
            raise ValueError("asks for a tokenizer class castlab does not write")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
        if len(tokenizer) != info["actual_vocab_size"]:
            raise ValueError(f"{len(tokenizer)} tokens, recorded {info['actual_vocab_size']}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError, Exception) as err:  # noqa: BLE001
        raise UserError(f"{file}: {manifest['tokenizer']} is not the tokenizer of corpus "
                        f"{fingerprint[:16]} ({str(err).splitlines()[0][:80] if str(err) else err!r}"
                        "); nothing installed") from None


def _install(staging: Path, manifest: dict) -> None:
    """Move the verified files into the cache by renames: a tokenizer folder already there is
    kept (it is content-addressed); prepared documents with another fingerprint are kept aside
    as documents.json.replaced-<time>, never overwritten in place."""
    from castlab.data.corpus import package_documents

    name = manifest["corpus"]
    root = cache_dir()
    tok_target = root / manifest["tokenizer"]
    if not (tok_target / "tokenizer.json").is_file():
        tok_target.parent.mkdir(parents=True, exist_ok=True)
        if tok_target.exists():
            tok_target.rename(tok_target.with_name(
                f"{tok_target.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
        (staging / manifest["tokenizer"]).rename(tok_target)
    docs = corpus_cache_dir(name) / "documents.json"
    if docs.is_file():
        try:
            from castlab.data.corpus import SplitSettings, _build

            same = _build(name, package_documents(name), SplitSettings()).fingerprint == \
                manifest["fingerprint"]
        except (UserError, ValueError, TypeError, KeyError, OSError):
            same = False
        if same:
            return
        docs.rename(docs.with_name(f"documents.json.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
    docs.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / "corpus" / name / "documents.json", docs)


def unpack_corpus(file: Path) -> dict:
    """Check a corpus pack completely, then install it into the cache; returns its manifest.

    Members stream into a staging folder inside the cache (names, count and total size bounded
    while reading), the documents are checked against the manifest's fingerprint and the
    tokenizer against the corpus, and only then are they moved into place. A refused pack
    leaves the cache as it was."""
    staging = staging_dir(cache_dir())
    try:
        holder: dict = {}
        try:
            manifest, _ = stream_pack(file, staging, MANIFEST,
                                      lambda m: holder.update(m=_check_manifest(m, file)),
                                      lambda m: _check_member(m, file, "m" in holder), kind="corpus pack",
                                      max_members=64)
        except OSError as err:
            raise UserError(f"{file}: cannot unpack into {cache_dir()} "
                            f"({err.strerror or err}); nothing installed") from None
        if "m" not in holder:
            raise UserError(f"{file}: not a castlab corpus pack (no {MANIFEST})")
        _verify(staging, holder["m"], file)
        try:
            _install(staging, holder["m"])
        except OSError as err:
            raise UserError(f"cannot install the corpus into {cache_dir()} "
                            f"({err.strerror or err})") from None
        return holder["m"]
    finally:
        remove_tree(staging)


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
