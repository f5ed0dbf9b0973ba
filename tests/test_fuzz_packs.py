"""Fuzz-style check of untrusted files: teacher packs, corpus packs, law.json, fit-law tables.

The sibling of ``test_fuzz_inputs.py`` (same verdicts: clean / traceback / accepted-wrong /
multi-line). Every case must end in exit code 2 with one line on stderr, no traceback, and the
watched folder unchanged: for packs that folder holds the cache (``$CASTLAB_CACHE``, with a
prepared corpus and a teacher already in it) and the folders an escaping pack would reach
beside and above it, so a write, move or replace outside the cache is caught, and so is a
partial file left in the cache.

Run as a script (``python tests/test_fuzz_packs.py [GROUP ...]``) to tally the cases against
whichever castlab is importable (compare a checkout before and after a change).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_fuzz_inputs import _isolated, call, classify, tree_hash  # noqa: E402

TEACHER_MANIFEST = "castlab_teachers.json"
CORPUS_MANIFEST = "castlab_pack.json"
ID = "dense-opt-tiny-0123456789ab"


# --- building packs ------------------------------------------------------------------------

def _tar(path: Path, members: list, mode: str = "w:gz") -> Path:
    """``members``: (name, bytes) files, (name, 'dir') folders, (name, ('symlink', target)),
    or (name, (size, reader)) streamed files (a big member without holding it in memory)."""
    with tarfile.open(path, mode) as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            if blob == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(blob, tuple) and blob[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, blob[1]
                tar.addfile(info)
            elif isinstance(blob, tuple):
                info.size = blob[0]
                tar.addfile(info, blob[1]())
            else:
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return path


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read on demand."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _zeros_sha(size: int) -> str:
    digest = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(block)
    digest.update(bytes(size & ((1 << 20) - 1)))
    return digest.hexdigest()


def teacher_files(run_id: str = ID) -> dict[str, bytes]:
    return {f"teachers/{run_id}/model/model.safetensors": b"weights of " + run_id.encode(),
            f"teachers/{run_id}/model/config.json": b"{}",
            f"teachers/{run_id}/result.parquet": b"a row",
            f"teachers/{run_id}/config.yaml": b"method: dense\n"}


def teacher_manifest(files: dict[str, bytes], ids: list) -> dict:
    return {"format": 1, "sweep": "fz",
            "teachers": [{"run_id": i, "model": "opt-tiny", "seed": 0, "tokens": 1000}
                         for i in ids],
            "files": {k: {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                      for k, v in files.items()}}


def teacher_pack(path: Path, manifest, files: dict[str, bytes], raw_manifest: bytes | None = None
                 ) -> Path:
    blob = raw_manifest if raw_manifest is not None else json.dumps(manifest).encode()
    return _tar(path, [(TEACHER_MANIFEST, blob), *files.items()])


def teacher_pack_cases(cases_dir: Path, root: Path) -> list[tuple[str, list[str]]]:
    """(label, argv) malicious or broken teacher packs; ``root`` holds the cache and victims."""
    d = cases_dir
    out: list[tuple[str, Path]] = []
    planted = {"teachers/victim/planted.json": b'{"attacker": true}'}
    # 1. the escape: ids used as paths, one member for all of them
    escape = teacher_manifest(planted, ["victim", "../../victim", "../../../../victim"])
    out.append(("ids with '..' (escape)", teacher_pack(d / "esc.tgz", escape, planted)))
    absolute = teacher_manifest(planted, ["victim", str(root / "absvictim")])
    out.append(("absolute id (escape)", teacher_pack(d / "abs.tgz", absolute, planted)))
    good = teacher_files()
    man = teacher_manifest(good, [ID])
    out.append(("id '..'", teacher_pack(d / "dotdot.tgz", {**man, "teachers": [{"run_id": ".."}]},
                                       good)))
    out.append(("id with newline", teacher_pack(d / "nl.tgz", {**man, "teachers": [
        {"run_id": ID + "\nx"}]}, good)))
    out.append(("id 300 chars", teacher_pack(d / "long.tgz", {**man, "teachers": [
        {"run_id": "a" * 300}]}, good)))
    out.append(("id listed twice", teacher_pack(d / "twice.tgz", {**man, "teachers": [
        {"run_id": ID}, {"run_id": ID}]}, good)))
    out.append(("id with no files", teacher_pack(d / "nofiles.tgz", {**man, "teachers": [
        {"run_id": ID}, {"run_id": "victim"}]}, good)))
    # 4. wrong shapes
    out.append(("manifest [1,2]", teacher_pack(d / "list.tgz", [1, 2], good)))
    out.append(("teachers [1]", teacher_pack(d / "t1.tgz", {**man, "teachers": [1]}, good)))
    out.append(("files []", teacher_pack(d / "f0.tgz", {**man, "files": []}, good)))
    out.append(("file entry a string", teacher_pack(d / "fs.tgz", {**man, "files": {
        k: "abc" for k in man["files"]}}, good)))
    out.append(("format 2", teacher_pack(d / "fmt.tgz", {**man, "format": 2}, good)))
    out.append(("manifest not json", teacher_pack(d / "nj.tgz", None, good, b"not json")))
    deep = b"[" * 200_000 + b"]" * 200_000
    out.append(("manifest 200k-deep", teacher_pack(d / "deep.tgz", None, good, deep)))
    big = 64 * 2**20  # a manifest far past any real one, 64 KiB packed
    out.append(("manifest 64 MiB", _tar(d / "hugeman.tgz", [
        (TEACHER_MANIFEST, (big, lambda: io.BufferedReader(Zeros(big)))), *good.items()])))
    out.append(("manifest a folder", _tar(d / "mdir.tgz", [(TEACHER_MANIFEST, "dir"),
                                                           *good.items()])))
    out.append(("manifest a symlink", _tar(d / "mlink.tgz", [
        (TEACHER_MANIFEST, ("symlink", "/etc/passwd")), *good.items()])))
    out.append(("member before manifest", _tar(d / "late.tgz", [
        *good.items(), (TEACHER_MANIFEST, json.dumps(man).encode())])))
    # 2. sizes
    lie = {**good, f"teachers/{ID}/model/model.safetensors": bytes(3 << 20)}
    small = teacher_manifest(good, [ID])
    out.append(("bytes 100, member 3 MiB", teacher_pack(d / "lie.tgz", small, lie)))
    bomb = 100 * 2**20
    bomb_name = f"teachers/{ID}/model/model.safetensors"
    bomb_man = {**man, "files": {**man["files"], bomb_name: {"bytes": bomb,
                                                             "sha256": _zeros_sha(bomb)}}}
    out.append(("bomb: 100 MiB of zeros", _tar(d / "bomb.tgz", [
        (TEACHER_MANIFEST, json.dumps(bomb_man).encode()),
        *[(k, v) for k, v in good.items() if k != bomb_name],
        (bomb_name, (bomb, lambda: io.BufferedReader(Zeros(bomb))))])))
    many = {f"teachers/{ID}/model/f{i}.json": b"{}" for i in range(12_000)}
    out.append(("12,000 members", teacher_pack(d / "many.tgz", teacher_manifest(
        {**good, **many}, [ID]), {**good, **many})))
    flipped = {**good, f"teachers/{ID}/result.parquet": b"a rov"}
    out.append(("sha256 mismatch", teacher_pack(d / "sha.tgz", man, flipped)))
    out.append(("member outside manifest", teacher_pack(d / "extra.tgz", man, {
        **good, f"teachers/{ID}/model/evil.py": b"import os"})))
    # 6. not packs at all
    (d / "notes.txt").write_text("these are my notes\nnot a pack\n" * 20)
    out.append(("a text file", d / "notes.txt"))
    out.append(("/dev/zero", Path("/dev/zero")))
    out.append(("a folder", d))
    out.append(("missing file", d / "nope.tgz"))
    return [(label, ["teachers", "unpack", str(path)]) for label, path in out]


# --- corpus packs ------------------------------------------------------------------------------

def corpus_documents() -> tuple[bytes, str]:
    """A small documents.json in the default corpus's format, and its fingerprint."""
    from dataclasses import asdict

    from castlab.data.corpus import (
        CACHE_FORMAT,
        CORPUS_SOURCES,
        Document,
        SplitSettings,
        _build,
    )

    docs = [Document(f"doc{i}", "s", f"g{i}", f"text number {i} " * 20) for i in range(30)]
    payload = {"format": CACHE_FORMAT, "sources": list(CORPUS_SOURCES["default"].sources),
               "documents": [asdict(doc) for doc in docs]}
    return json.dumps(payload).encode(), _build("default", docs, SplitSettings()).fingerprint


def corpus_pack_cases(cases_dir: Path, root: Path) -> list[tuple[str, list[str]]]:
    d = cases_dir
    docs, fingerprint = corpus_documents()
    key = "0123456789abcdef"
    man = {"corpus": "default", "fingerprint": fingerprint, "tokenizer": f"tokenizers/{key}"}
    tok = {f"tokenizers/{key}/tokenizer.json": b"{}",
           f"tokenizers/{key}/castlab_tokenizer.json": json.dumps(
               {"corpus_fingerprint": fingerprint, "vocab_size": 300, "min_frequency": 2,
                "actual_vocab_size": 300}).encode(),
           f"tokenizers/{key}/tokenizer_config.json": b"{}"}

    def pack(name, manifest, members, raw=None, first=True):
        blob = raw if raw is not None else json.dumps(manifest).encode()
        items = [(CORPUS_MANIFEST, blob)] if first else []
        items += list(members.items()) + ([] if first else [(CORPUS_MANIFEST, blob)])
        return _tar(d / name, items, "w:xz")

    base = {"corpus/default/documents.json": docs, **tok}
    out = [
        ("overwrite corpus, wrong fingerprint", pack("ow.txz", {**man, "fingerprint": "0" * 64},
                                                     base)),
        ("tokenizer of another corpus (key)", pack("tk.txz", man, base)),
        ("manifest {}", pack("e.txz", {}, base)),
        ("manifest [1] last", pack("l.txz", [1], base, first=False)),
        ("manifest not json", pack("nj.txz", None, base, raw=b"not json")),
        ("manifest corpus '../../x'", pack("cx.txz", {**man, "corpus": "../../x"}, base)),
        ("manifest tokenizer escapes", pack("tx.txz", {**man, "tokenizer": "tokenizers/../../x"},
                                            base)),
        ("member tokenizers/../x", pack("mx.txz", man, {**base, "tokenizers/../x": b"x"})),
        ("member corpus/other/documents.json", pack("co.txz", man, {
            **base, "corpus/other/documents.json": docs})),
        ("member a .py file", pack("py.txz", man, {**base, f"tokenizers/{key}/evil.py": b"x"})),
        ("manifest a symlink", _tar(d / "ml.txz", [(CORPUS_MANIFEST, ("symlink", "/etc/passwd")),
                                                   *base.items()], "w:xz")),
        ("manifest a folder", _tar(d / "md.txz", [(CORPUS_MANIFEST, "dir"), *base.items()],
                                   "w:xz")),
        ("documents not json", pack("dj.txz", man, {**base, "corpus/default/documents.json":
                                                    b"nope"})),
    ]
    bomb = 100 * 2**20  # over the 64 MiB floor of the unpack budget
    out.append(("bomb: 100 MiB documents", _tar(d / "bomb.txz", [
        (CORPUS_MANIFEST, json.dumps(man).encode()),
        ("corpus/default/documents.json", (bomb, lambda: io.BufferedReader(Zeros(bomb))))],
        "w:xz")))
    (d / "notes.txt").write_text("not a pack\n" * 50)
    out += [("a text file", d / "notes.txt"), ("/dev/zero", Path("/dev/zero")),
            ("a folder", d)]
    return [(label, ["data", "unpack", str(path)]) for label, path in out]


def make_cache(root: Path) -> Path:
    """A cache four folders below ``root`` holding a prepared corpus and a done teacher, plus
    the folders an escaping pack would reach (``victim`` at each level, ``absvictim``)."""
    cache = root / "a" / "b" / "c" / "cache"
    (cache / "corpus" / "default").mkdir(parents=True)
    (cache / "corpus" / "default" / "documents.json").write_text('{"mine": true}')
    (cache / "teachers" / "victim").mkdir(parents=True)
    (cache / "teachers" / "victim" / "my_work.txt").write_text("unfinished teacher")
    for folder in (root, root / "a", root / "a" / "b", root / "a" / "b" / "c"):
        (folder / "victim").mkdir(exist_ok=True)
        (folder / "victim" / "precious.txt").write_text("the user's file")
    (root / "absvictim").mkdir()
    (root / "absvictim" / "precious.txt").write_text("the user's file")
    return cache


# --- law files --------------------------------------------------------------------------------

def fitted_law(folder: Path) -> Path:
    """A real law.json from fit-law on a small synthetic table (loglinear, 3 seeds)."""
    rng = np.random.default_rng(0)
    rows = [{"N": n, "D": dd, "L": 6.0 * dd ** -0.05 * n ** -0.02 * np.exp(rng.normal(0, .003))}
            for n in (1e6, 2e6, 4e6) for dd in (1e6, 2e6, 4e6, 8e6) for _ in range(3)]
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    code, _, err, escaped = call(["fit-law", str(folder / "runs.csv"), "--n-col", "N",
                                  "--d-col", "D", "--loss-col", "L", "--form", "power_d",
                                  "--out", str(folder / "law"), "--no-plots", "--draws", "100",
                                  "--heldout-draws", "0"])
    assert code == 0 and escaped is None, err
    return folder / "law" / "law.json"


def _checksummed(d: dict) -> dict:
    body = {k: v for k, v in d.items() if k != "checksum"}
    d = dict(body)
    d["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True)
                                   .encode()).hexdigest()
    return d


def law_cases(folder: Path, law_path: Path) -> list[tuple[str, list[str]]]:
    law = json.loads(law_path.read_text())
    size = next(iter(law["sizes"]))
    cases: list[tuple[str, dict | bytes | Path, list[str]]] = []

    def edit(label, change, resum=True, extra=None):
        d = json.loads(json.dumps(law))
        change(d)
        cases.append((label, _checksummed(d) if resum else d, extra or []))

    edit("no checksum, edited parameter",
         lambda d: (d.pop("checksum"), d["fit"]["theta"][0].__setitem__(0, d["fit"]["theta"][0][0]
                                                                       + 0.5)), resum=False)
    edit("level 5", lambda d: d.__setitem__("level", 5))
    edit("level 'high'", lambda d: d.__setitem__("level", "high"))
    edit("sizes a list", lambda d: d.__setitem__("sizes", [1, 2]))
    edit("size n 'big'", lambda d: d["sizes"][size].__setitem__("n", "big"))
    edit("sigma 'x'", lambda d: d["bootstrap"].__setitem__("sigma", "x"))
    edit("scales.n0 = 0", lambda d: d["fit"]["scales"].__setitem__("n0", 0))
    edit("theta NaN", lambda d: d["fit"]["theta"][0].__setitem__(0, float("nan")))
    edit("bootstrap thetas ragged", lambda d: d["bootstrap"]["thetas"][0][0].pop())
    edit("bootstrap seed -1", lambda d: d["bootstrap"].__setitem__("seed", -1))
    edit("fit a string", lambda d: d.__setitem__("fit", "fit"))
    edit("form unknown", lambda d: (d.__setitem__("form", "cubic"),
                                    d["fit"].__setitem__("form", "cubic")))
    cases.append(("a JSON list", [1, 2], []))
    cases.append(("200k-deep nesting", b"[" * 200_000 + b"]" * 200_000, []))
    cases.append(("/dev/zero", Path("/dev/zero"), []))
    cases.append(("a folder", folder, []))
    big = folder.parent / "big_law.json"  # outside the watched folder: hashing it is slow
    with open(big, "wb") as handle:  # sparse: 200 MB on paper, nothing on disk
        handle.truncate(200 * 2**20)
    cases.append(("200 MB file", big, []))
    argv_cases: list[tuple[str, list[str]]] = []
    for i, (label, content, extra) in enumerate(cases):
        if isinstance(content, Path):
            path = content
        else:
            path = folder / f"law{i}.json"
            path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        argv_cases.append((label, ["predict", "--law", str(path), "--model", size, "--tokens",
                                   "5M", *extra]))
    argv_cases += [
        ("predict --seed -1", ["predict", "--law", str(law_path), "--model", size, "--tokens",
                               "5M", "--seed", "-1"]),
        ("predict --target-ppl inf", ["predict", "--law", str(law_path), "--model", size,
                                      "--target-ppl", "inf"]),
    ]
    return argv_cases


# --- fit-law tables -------------------------------------------------------------------------

def table_cases(folder: Path) -> list[tuple[str, list[str]]]:
    """(label, argv) tables fit-law must refuse; every fit is kept small (100 draws)."""
    rng = np.random.default_rng(1)
    grid = [(n, dd) for n in (1e6, 2e6, 4e6) for dd in (1e6, 2e6, 4e6, 8e6)]
    base = pd.DataFrame([{"N": n, "D": dd, "L": 5.0 * dd ** -0.05 * n ** -0.02} for n, dd in grid])
    quick = ["--no-plots", "--draws", "100", "--heldout-draws", "0", "--out", str(folder / "out")]
    mapped = ["--n-col", "N", "--d-col", "D", "--loss-col", "L"]
    cases = []

    def table(label, df, extra=(), name=None, text=None):
        path = folder / (name or f"t{len(cases)}.csv")
        if text is not None:
            path.write_text(text)
        else:
            df.to_csv(path, index=False)
        form = [] if "--form" in extra else ["--form", "loglinear"]  # fits these 12 runs
        cases.append((label, ["fit-law", str(path), *mapped, *quick, *form, *extra]))

    big = pd.DataFrame({"N": rng.choice([1e6, 2e6, 4e6], 200_000),
                        "D": rng.choice([1e6, 2e6, 4e6, 8e6], 200_000)})
    big["L"] = 5.0 * big.D ** -0.05 * big.N ** -0.02 + rng.normal(0, 0.01, len(big))
    table("200k rows", big, ("--form", "power_d"))
    ppl = base.copy()
    ppl.loc[[1, 5], "L"] = np.exp(ppl.loc[[1, 5], "L"])
    ppl.loc[[1, 5], "L"] = ppl.loc[[1, 5], "L"] ** 2  # two PPL-looking cells among losses
    table("2 PPL cells among losses", ppl)
    header = "N,D,L,L\n" + "".join(f"{n},{dd},{lo},{lo + 1}\n" for n, dd, lo in base.itertuples(
        index=False))
    table("duplicated loss header", None, text=header)
    labelled = base.assign(size="one")
    table("one size label, three N", labelled, ("--size-col", "size"))
    huge = base.copy()
    huge["N"] = huge["N"] * 1e300
    table("N x 1e300", huge)
    nan = base.copy()
    nan.loc[3, "D"] = np.inf
    table("D inf", nan)
    methods = pd.concat([base.assign(method=m, L=base.L * f) for m, f in
                         (("cast", 1), ("dense", .9), ("srste", 1.1), ("magnitude", 1.3))])
    table("4 methods mapped, --method nope", methods, ("--method", "nope"))
    sparse = base.assign(S=[0.0, 0.5, 1.0, 1.5] * 3)
    table("sparsity 1.5 (s-col)", sparse, ("--s-col", "S", "--form", "frantar"))
    text = base.astype(object)
    text.loc[2, "L"] = "3.9 nats"
    table("loss cell text", text)
    negative = base.copy()
    negative.loc[0, "N"] = -1e6
    table("N negative", negative)
    table("fit-law --seed -1", base, ("--seed", "-1"))
    table("fit-law --draws 10^9", base, ("--draws", str(10**9)))
    # a store whose rows say sparsity 1.0 and 1.5 under --form frantar
    from castlab import store

    results = folder / "store"
    for i, (n, dd) in enumerate(grid):
        s = [0.0, 0.5, 1.0, 1.5][i % 4]
        store.write_row(results / f"r{i}", {
            "run_id": f"r{i}", "status": "ok", "method": "cast", "model": f"m{n:g}",
            "params_non_embedding": n, "tokens": dd, "sparsity": s, "seed": 0,
            "eval_loss": 5.0 * dd ** -0.05 * n ** -0.02 * (1 + s),
            "ppl": float(np.exp(5.0 * dd ** -0.05 * n ** -0.02 * (1 + s)))})
    cases.append(("store sparsity 1.0/1.5 --form frantar",
                  ["fit-law", str(results), "--form", "frantar", *quick]))
    return cases


# --- tally / tests ---------------------------------------------------------------------------

def groups(work: Path) -> dict[str, tuple[list[tuple[str, list[str]]], Path]]:
    """{group: (cases, folder whose tree must not change)} for the four families."""
    root = work / "root"
    root.mkdir()
    cache = make_cache(root)
    os.environ["CASTLAB_CACHE"] = str(cache)
    cases_dir = work / "cases"
    (cases_dir / "teacher").mkdir(parents=True)
    (cases_dir / "corpus").mkdir()
    (work / "law").mkdir()
    (work / "tables").mkdir()
    law = fitted_law(work / "law")
    return {"teacher packs": (teacher_pack_cases(cases_dir / "teacher", root), root),
            "corpus packs": (corpus_pack_cases(cases_dir / "corpus", root), root),
            "law files": (law_cases(work / "law", law), work / "law"),
            "fit-law tables": (table_cases(work / "tables"), work / "tables")}


def tally() -> dict[str, dict[str, int]]:
    """Every case in a forked child against the importable castlab; one line each, then counts."""
    import tempfile
    from collections import Counter

    work = Path(tempfile.mkdtemp(prefix="fuzz_packs_"))
    os.chdir(work)
    os.environ.update({"CASTLAB_TCMALLOC": "0", "HF_HUB_OFFLINE": "1"})
    only = sys.argv[1:]
    counts: dict[str, dict[str, int]] = {}
    for group, (cases, watched) in groups(work).items():
        if only and group not in only:
            continue
        tallies: Counter = Counter()
        for label, argv in cases:
            verdict, code, why = _isolated(argv, watched)
            tallies[verdict] += 1
            print(f"{group:<14} {verdict:<15} {label:<36} exit={code} {why}", flush=True)
        counts[group] = dict(tallies)
    for group, tallies in counts.items():
        print(f"{group}: {sum(tallies.values())} cases: {tallies}")
    print(f"(cases and cache in {work})")
    return counts


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz_packs")
    old = os.environ.get("CASTLAB_CACHE")
    here = os.getcwd()
    os.chdir(work)
    try:
        yield groups(work)
    finally:
        os.chdir(here)
        if old is None:
            os.environ.pop("CASTLAB_CACHE", None)
        else:
            os.environ["CASTLAB_CACHE"] = old


@pytest.mark.parametrize("group", ["teacher packs", "corpus packs", "law files",
                                   "fit-law tables"])
def test_untrusted_files_are_refused_in_one_line(family, group, monkeypatch):
    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases, watched = family[group]
    assert len(cases) >= 12
    for label, argv in cases:
        before = tree_hash(watched)
        code, out, err, escaped = call(argv)
        verdict = classify(code, err, escaped, tree_hash(watched) != before)
        assert verdict == "clean", (group, label, verdict, code, out[-300:], err[-600:], escaped)
        assert err.startswith("castlab"), (label, err)
        assert len(err) < 600, (label, err)


def test_valid_teacher_pack_installs_and_keeps_an_unfinished_local_attempt(tmp_path,
                                                                           monkeypatch):
    cache = make_cache(tmp_path)
    monkeypatch.setenv("CASTLAB_CACHE", str(cache))
    files = {**teacher_files(ID), **teacher_files("victim")}
    pack = teacher_pack(tmp_path / "ok.tgz", teacher_manifest(files, [ID, "victim"]), files)
    code, out, err, escaped = call(["teachers", "unpack", str(pack)])
    assert code == 0 and escaped is None, err
    assert "2 teachers installed, 0 already done" in out
    for rel, blob in files.items():
        assert (cache / rel).read_bytes() == blob
    aside = [p for p in (cache / "teachers").iterdir() if p.name.startswith("victim.replaced-")]
    assert len(aside) == 1 and (aside[0] / "my_work.txt").read_text() == "unfinished teacher"
    assert not [p for p in cache.iterdir() if p.name.startswith(".unpack-")]


def test_escape_pack_leaves_every_folder_as_it_was(tmp_path, monkeypatch):
    cache = make_cache(tmp_path)
    monkeypatch.setenv("CASTLAB_CACHE", str(cache))
    planted = {"teachers/victim/planted.json": b"{}"}
    ids = ["victim", "../../victim", "../../../../victim", str(tmp_path / "absvictim")]
    before = tree_hash(tmp_path)
    for i, run_id in enumerate(ids):
        pack = teacher_pack(tmp_path.parent / f"{tmp_path.name}-esc{i}.tgz",
                            teacher_manifest(planted, ["victim", run_id]), planted)
        code, _, err, escaped = call(["teachers", "unpack", str(pack)])
        assert code == 2 and escaped is None and "teachers[1].run_id" in err, err
    assert tree_hash(tmp_path) == before
    assert sorted(p.name for p in (cache / "teachers").iterdir()) == ["victim"]
    assert [p.name for p in (cache / "teachers" / "victim").iterdir()] == ["my_work.txt"]


def test_full_disk_while_unpacking_leaves_the_cache_as_it_was(tmp_path, monkeypatch):
    import errno

    from castlab import paths

    cache = make_cache(tmp_path)
    monkeypatch.setenv("CASTLAB_CACHE", str(cache))
    files = teacher_files(ID)
    pack = teacher_pack(tmp_path.parent / f"{tmp_path.name}.tgz", teacher_manifest(files, [ID]),
                        files)
    real_open = open

    class Full(io.RawIOBase):
        def __init__(self, path):
            self.handle = real_open(path, "xb")

        def writable(self):
            return True

        def write(self, block):
            self.handle.write(block[:4])  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.handle.close()

    monkeypatch.setattr(paths, "open", lambda path, mode: Full(path), raising=False)
    before = tree_hash(tmp_path)
    code, _, err, escaped = call(["teachers", "unpack", str(pack)])
    assert code == 2 and escaped is None and "disk full while unpacking" in err, err
    assert tree_hash(tmp_path) == before  # staging and its partial file removed


def test_method_filters_a_mapped_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = [(n, dd) for n in (1e6, 2e6, 4e6) for dd in (1e6, 2e6, 4e6, 8e6)]
    base = pd.DataFrame([{"N": n, "D": dd, "L": 5.0 * dd ** -0.05 * n ** -0.02} for n, dd in grid])
    both = pd.concat([base.assign(method="cast"), base.assign(method="dense", L=base.L * 0.9)])
    both.to_csv(tmp_path / "t.csv", index=False)
    argv = ["fit-law", str(tmp_path / "t.csv"), "--n-col", "N", "--d-col", "D", "--loss-col",
            "L", "--form", "loglinear", "--no-plots", "--draws", "100", "--heldout-draws", "0"]
    for method in ("cast", "dense"):
        code, out, err, _ = call([*argv, "--method", method, "--out", str(tmp_path / method)])
        assert code == 0, err
        assert "12 points (mapped columns)" in out  # not 24: the other method's rows are left out
        law = json.loads((tmp_path / method / "law.json").read_text())
        assert law["data"]["runs"] == 12
    cast = json.loads((tmp_path / "cast" / "law.json").read_text())["params"]
    dense = json.loads((tmp_path / "dense" / "law.json").read_text())["params"]
    assert cast != dense


if __name__ == "__main__":
    tally()
