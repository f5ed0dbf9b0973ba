"""Where castlab keeps cached data, tokenizers and teachers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $CASTLAB_CACHE, else ~/.cache/castlab. Created on first use."""
    root = Path(os.environ.get("CASTLAB_CACHE", Path.home() / ".cache" / "castlab")).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in its place, an unwritable parent, a symlink loop
        from castlab.errors import UserError

        raise UserError(f"CASTLAB_CACHE: cannot use {root} as the cache folder "
                        f"({err.strerror or err}); allowed a writable directory") from None
    return root


def teachers_root() -> Path:
    """Where sweeps keep dense teachers: ``$CASTLAB_CACHE/teachers/<run id>``."""
    return cache_dir() / "teachers"


def check_pack_output(out: Path, where: str) -> Path:
    """``out`` as a pack file to (over)write: not a folder or device, its folder writable;
    checked before a corpus is fetched or a teacher read."""
    from castlab.errors import UserError

    out = Path(out).expanduser()
    if out.is_dir() or (out.exists() and not out.is_file()):
        raise UserError(f"{where}: {out} is {'a directory' if out.is_dir() else 'not a file'}, "
                        "allowed a file path to write the pack to")
    check_output_dir(out.parent, where)
    return out


def check_output_dir(path: str | Path, where: str) -> Path:
    """``path`` as a directory castlab may create or write into, else a one-line UserError.

    Checked before any work starts, so `--out /dev/null/x` fails in a second, not after training.
    """
    from castlab.errors import UserError

    path = Path(path).expanduser()
    try:
        path.resolve(strict=False)
    except (RuntimeError, OSError) as err:  # 'Symlink loop from ...' (ELOOP on newer Pythons)
        raise UserError(f"{where}: {path} cannot be resolved ({str(err)[:120]}); allowed a "
                        "directory path without a symlink loop") from None
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


# --- untrusted packs (teacher and corpus packs share these checks) -----------------------------
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # one path part, no '/', no '..'
MAX_MANIFEST_BYTES = 4 * 2**20  # a real manifest is a few KiB
MAX_JSON_DEPTH = 32
MAX_PACK_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 16 * 2**30  # whatever a pack declares, never more than this on disk
MAX_EXPANSION = 100  # unpacked bytes per packed byte (text packs ~5x, weights ~1x)


def is_plain_name(name: object) -> bool:
    """A single path component of letters, digits, '_', '.', '-' (not starting with '.' or '-')."""
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None


def unpack_budget(file: Path) -> int:
    """Most bytes a pack of this size may unpack to: a decompression bomb stops there."""
    return min(MAX_UNPACKED_BYTES, max(64 * 2**20, MAX_EXPANSION * Path(file).stat().st_size))


def json_depth(text: bytes) -> int:
    """Deepest [ / { nesting of a JSON text (strings skipped), without recursing."""
    import numpy as np

    bare = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', text)
    arr = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(arr, (ord("["), ord("{"))).astype(np.int64) - np.isin(arr, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def loads_bounded(text: bytes, where: str, max_bytes: int = MAX_MANIFEST_BYTES):
    """json.loads for untrusted bytes: size and nesting bounded, every failure a UserError."""
    from castlab.errors import UserError

    if len(text) > max_bytes:
        raise UserError(f"{where}: {len(text):,} bytes, allowed at most {max_bytes:,}")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise UserError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise UserError(f"{where}: not valid JSON ({str(err)[:80]})") from None


def read_regular_file(path: Path, where: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (devices, FIFOs and folders refused
    before any read, so `/dev/zero` is refused at once)."""
    from castlab.errors import UserError

    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK)) as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise UserError(f"{where}: {path} is a directory, allowed a file")
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{where}: {path} is not a regular file (a device, FIFO or "
                                "socket), allowed a file")
            if info.st_size > max_bytes:
                raise UserError(f"{where}: {path} is {info.st_size:,} bytes, allowed at most "
                                f"{max_bytes:,}")
            return handle.read(max_bytes + 1)[:max_bytes + 1]
    except IsADirectoryError:
        raise UserError(f"{where}: {path} is a directory, allowed a file") from None
    except FileNotFoundError:
        raise UserError(f"{where}: {path} does not exist") from None
    except OSError as err:
        raise UserError(f"{where}: cannot read {path} ({err.strerror or err})") from None


def disk_full(err: BaseException) -> bool:
    """Whether an OSError (or a torch error wrapping one) means the disk or quota is full."""
    text = str(err)
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
        "No space left on device" in text or "Disk quota exceeded" in text


def staging_dir(parent: Path) -> Path:
    """A fresh hidden folder inside ``parent`` (same file system: installs are renames)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=".unpack-"))


def stream_pack(file: Path, staging: Path, manifest_name: str,
                on_manifest: Callable[[object], None],
                check_member: Callable[[tarfile.TarInfo], None], kind: str = "pack",
                max_members: int = MAX_PACK_MEMBERS) -> tuple[object, dict[str, str]]:
    """Read a pack once, in order, writing its files under ``staging`` only.

    The manifest (at most MAX_MANIFEST_BYTES, parsed with bounded nesting) goes to
    ``on_manifest`` as soon as it is read; every other member to ``check_member`` before a byte
    of it is written. Only regular files and folders with plain relative names are accepted;
    member count and total size are bounded while streaming (``unpack_budget``), so a
    decompression bomb stops at its first header past the budget. Returns (manifest, {member
    name: sha256}); raises UserError (staging then holds only partial files to remove) or
    OSError.
    """
    import lzma
    import zlib

    from castlab.errors import UserError

    try:
        mode = os.stat(file).st_mode
    except OSError as err:
        raise UserError(f"{file}: cannot read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{file}: not a regular file, allowed a {kind} written by castlab")
    budget, total, count = unpack_budget(file), 0, 0
    manifest, hashes = None, {}
    try:
        tar = tarfile.open(file, "r|*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{file}: cannot read the {kind} ({str(err)[:100]})") from None
    with tar:
        try:
            for member in tar:
                count += 1
                if count > max_members:
                    raise UserError(f"{file}: more than {max_members:,} members, not a castlab pack")
                name = member.name
                parts = Path(name).parts
                if (not (member.isfile() or member.isdir()) or name.startswith("/")
                        or ".." in parts or not parts or len(name) > 1024
                        or any(not is_plain_name(p) for p in parts)):
                    raise UserError(f"{file}: unsafe member {name[:120]!r} (links, devices, "
                                    "absolute paths, '..' and names beyond letters, digits, "
                                    "'_.-' are refused)")
                if name == manifest_name:
                    if manifest is not None or not member.isfile():
                        raise UserError(f"{file}: {manifest_name} is not one regular file")
                    if member.size > MAX_MANIFEST_BYTES:
                        raise UserError(f"{file}: {manifest_name} is {member.size:,} bytes, "
                                        f"allowed at most {MAX_MANIFEST_BYTES:,}")
                    manifest = loads_bounded(tar.extractfile(member).read(), f"{file}: "
                                             f"{manifest_name}")
                    on_manifest(manifest)
                    continue
                check_member(member)
                target = staging.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if name in hashes:
                    raise UserError(f"{file}: member '{name}' appears twice")
                total += member.size
                if total > budget:
                    raise UserError(f"{file}: unpacks to more than {budget / 2**20:,.0f} MiB "
                                    f"(at most {MAX_EXPANSION}x the pack's size; a "
                                    "decompression bomb?); nothing installed")
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with tar.extractfile(member) as src, open(target, "xb") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        dst.write(block)
                hashes[name] = digest.hexdigest()
        except (tarfile.TarError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
            raise UserError(f"{file}: cannot read the {kind}, damaged ({str(err)[:100]}); nothing "
                            "installed") from None
        except OSError as err:
            if disk_full(err):
                raise UserError(f"{file}: disk full while unpacking into {staging.parent} "
                                "(nothing installed, partial files removed)") from None
            if isinstance(err, (FileExistsError,)):
                raise UserError(f"{file}: member written twice ({err.filename})") from None
            if err.errno is None or "compressed" in str(err).lower() or "gzip" in str(err).lower():
                raise UserError(f"{file}: cannot read the {kind}, damaged ({str(err)[:100]}); nothing "
                                "installed") from None
            raise
    return manifest, hashes


def remove_tree(path: Path) -> None:
    """Remove a staging folder; never follows links out of it."""
    shutil.rmtree(path, ignore_errors=True)
