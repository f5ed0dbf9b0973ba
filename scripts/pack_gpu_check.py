"""Pack what an offline GPU node needs from castlab's cache into one file.

The node has torch and transformers but no network: the prepared corpus (documents.json), the
trained BPE tokenizers and the tokenized splits are copied here from ``$CASTLAB_CACHE``
(default ``~/.cache/castlab``; run ``castlab data prepare`` first), without the downloaded
source archives. ``scripts/gpu_check.sh BUNDLE OUT`` unpacks it there.

    python scripts/pack_gpu_check.py [--out .gpu/castlab_cache.tar.gz] [--corpus default]
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path


def bundle_members(cache: Path, corpora: list[str]) -> list[Path]:
    """Cache files the bundle holds: each corpus's documents.json, every tokenizer and token file."""
    files = []
    for name in corpora:
        docs = cache / "corpus" / name / "documents.json"
        if not docs.is_file():
            sys.exit(f"pack_gpu_check: {docs} is missing; run `castlab data prepare --corpus "
                     f"{name}` first (or set CASTLAB_CACHE)")
        files.append(docs)
    for sub in ("tokenizers", "tokens"):
        files += sorted(p for p in (cache / sub).rglob("*") if p.is_file()
                        and ".tmp" not in p.name)
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the bundle and print its size and file count."""
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".gpu/castlab_cache.tar.gz", type=Path)
    parser.add_argument("--corpus", action="append", default=None,
                        help="named corpus to include (repeatable; default: default)")
    args = parser.parse_args(argv)
    cache = Path(os.environ.get("CASTLAB_CACHE", Path.home() / ".cache" / "castlab")).expanduser()
    files = bundle_members(cache, args.corpus or ["default"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"files": [str(p.relative_to(cache)) for p in files]}
    with tarfile.open(args.out, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(cache)))
        info = tarfile.TarInfo("castlab_bundle.json")
        blob = json.dumps(manifest, indent=1).encode()
        info.size = len(blob)
        import io

        tar.addfile(info, io.BytesIO(blob))
    print(f"{args.out}: {len(files)} files, {args.out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
