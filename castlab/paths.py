"""Where castlab keeps cached data, tokenizers and teachers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $CASTLAB_CACHE, else ~/.cache/castlab. Created on first use."""
    root = Path(os.environ.get("CASTLAB_CACHE", Path.home() / ".cache" / "castlab")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_output_dir(path: str | Path, where: str) -> Path:
    """``path`` as a directory castlab may create or write into, else a one-line UserError.

    Checked before any work starts, so `--out /dev/null/x` fails in a second, not after training.
    """
    from castlab.errors import UserError

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{where}: {path} is a file, allowed a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        what = "is a file, not a directory" if parent.is_file() else "is not a directory"
        raise UserError(f"{where}: cannot create {path}: {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{where}: cannot create or write {path}: {parent} is not writable")
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
