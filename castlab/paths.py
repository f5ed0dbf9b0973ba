"""Where castlab keeps cached data, tokenizers and teachers."""

from __future__ import annotations

import hashlib
import os
import tarfile
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


def extract_members(tar: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo]) -> None:
    """Extract ``members`` under ``dest``, refusing links, devices, absolute paths and '..'
    (tarfile.TarError). Pythons before 3.10.12 / 3.11.4 lack tarfile's "data" filter, which
    also guards this; the checks here hold on every supported Python (>= 3.10)."""
    for member in members:
        parts = Path(member.name).parts
        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
            raise tarfile.TarError(f"unsafe member '{member.name}' (links, devices, absolute "
                                   "paths and '..' are refused)")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
    else:
        tar.extractall(dest, members=members)


MAX_PACK_BYTES = 50 * 2**20  # what a pack is meant to fit: one file copied to an offline node


def pack_size(path: Path) -> str:
    """'27.0 MiB' for a corpus or teacher pack, flagged when over MAX_PACK_BYTES."""
    size = Path(path).stat().st_size
    return f"{size / 2**20:.1f} MiB" + ("" if size <= MAX_PACK_BYTES
                                        else "  (over the 50 MiB meant for one copy)")
