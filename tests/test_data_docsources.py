"""default-xl sources on synthetic inputs: markup stripping, .deb reading, GCIDE entries,
document-level splits, apt errors and checksum refusal, pack/unpack for an offline node.
The real download is one slow test."""

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from castlab.data import corpus as corpus_mod
from castlab.data import docsources, sources
from castlab.data.corpus import PackageCorpus, load_corpus
from castlab.data.markup import strip_asciidoc, strip_dict_entry, strip_html, strip_pod, strip_rst
from castlab.data.pack import pack_corpus, unpack_corpus
from castlab.errors import UserError

RST = """.. _intro:

Getting started
===============

Call :func:`os.path.join` or :ref:`the guide <guide-label>` with ``a, b``; see
`Python <https://python.org>`_ and *emphasis* or **strong** text.

.. note:: Remember this.

   Indented body stays.

.. code-block:: python
   :linenos:

   print("hi")
"""


def test_strip_rst_keeps_words_drops_markup():
    text = strip_rst(RST)
    assert "=====" not in text and ":func:" not in text and ".. " not in text
    assert "Getting started" in text
    assert "Call os.path.join or the guide with a, b; see" in text
    assert "Python and emphasis or strong text." in text
    assert "Remember this." in text and "Indented body stays." in text
    assert 'print("hi")' in text and ":linenos:" not in text and "_intro" not in text


POD = """=head1 NAME

perlfake - B<Bold> and C<< $a->b >> and I<it>

=begin html

<p>drop me</p>

=end html

=item L<the manual|perlfunc> says E<lt>okE<gt> X<index>

=cut
"""


def test_strip_pod_keeps_text_drops_commands():
    lines = [ln for ln in strip_pod(POD).splitlines() if ln.strip()]
    assert lines == ["NAME", "perlfake - Bold and $a->b and it", "the manual says <ok> "]


def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = alphabet[n % 64] + out
        n //= 64
        if not n:
            return out


def test_gcide_entries_by_index_shared_headwords_once():
    entries = [b"00-database-info\n licence text\n", b"Apple \\Ap\"ple\\, n. A {fruit}.\n",
               b"Caf\xc3\xa9 \\Ca*f\xc3\xa9\"\\, n. A coffee house.\n"]
    data = b"".join(entries)
    offsets = [0, len(entries[0]), len(entries[0]) + len(entries[1])]
    index = "\n".join([f"00-database-info\t{_b64(offsets[0])}\t{_b64(len(entries[0]))}",
                       f"apple\t{_b64(offsets[1])}\t{_b64(len(entries[1]))}",
                       f"apples\t{_b64(offsets[1])}\t{_b64(len(entries[1]))}",  # same entry
                       f"cafe\t{_b64(offsets[2])}\t{_b64(len(entries[2]))}"])
    docs = docsources.gcide_documents(data, index, entries_per_doc=1)
    assert [d.text for d in docs] == ["Apple , n. A fruit.", "Café , n. A coffee house."]
    assert strip_dict_entry("{x} \\y\\ z") == "x  z"


def make_deb(path: Path, files: dict[str, str]) -> Path:
    """A minimal .deb: ar archive with debian-binary, control.tar.xz and data.tar.xz."""
    def tar_xz(members: dict[str, str]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            for name, text in members.items():
                raw = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return buf.getvalue()

    out = bytearray(b"!<arch>\n")
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({})),
                       ("data.tar.xz", tar_xz(files))):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


PODS = {f"./usr/share/perl/5.36.0/pod/perl{i:02d}.pod": f"=head1 PAGE {i}\n\n" + "Text C<x>. " * 40
        for i in range(12)}


def test_deb_extraction_and_document_splits(tmp_path):
    deb = make_deb(tmp_path / docsources.PERL_DOC.filename,
                   {**PODS, "./usr/share/doc/perl-doc/copyright": "not a pod"})
    docs = docsources.extract_perl_docs({docsources.PERL_DOC.filename: deb})
    assert [d.name for d in docs] == [f"perl-docs/perl{i:02d}" for i in range(12)]
    assert docs[3].text.startswith("PAGE 3\n\nText x. Text x.")
    built = corpus_mod._build("t", [corpus_mod.Document(d.name, "perl-docs", d.group, d.text)
                                    for d in docs], corpus_mod.SplitSettings())
    placed = [n for s in corpus_mod.SPLITS for n in built.doc_names[s]]
    assert sorted(placed) == sorted(d.name for d in docs)  # each document whole, in one split
    assert all(built.doc_names[s] for s in corpus_mod.SPLITS)


def test_not_a_deb_is_refused(tmp_path):
    bad = tmp_path / "x.deb"
    bad.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(sources.FetchError, match="not a Debian package"):
        docsources.deb_data(bad)


def test_apt_missing_is_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(sources.FetchError, match="needs apt-get, which is not on PATH"):
        sources.client_command(docsources.LINUX_DOC, tmp_path)


def test_apt_archive_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.shutil, "which", lambda name: "/usr/bin/apt-get")

    def fake_apt(command, cwd, **kwargs):  # the archive serves a different file
        assert command[1:3] == ["download", docsources.GCIDE.requirement]
        (Path(cwd) / docsources.GCIDE.filename).write_bytes(b"tampered")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_apt)
    with pytest.raises(sources.FetchError, match="pinned 7b0af5cf"):
        sources.fetch_archive(docsources.GCIDE, tmp_path / "archives")
    assert not (tmp_path / "archives" / docsources.GCIDE.filename).exists()


def test_pack_then_unpack_works_offline(tmp_path, monkeypatch):
    deb = make_deb(tmp_path / "fake.deb", PODS)
    pin = sources.Archive("apt", "perl-doc=fake", docsources.PERL_DOC.filename,
                          sources.sha256_file(deb))
    monkeypatch.setitem(corpus_mod.ALL_SOURCES, "fake-perl",
                        sources.TextSource((pin,), docsources.extract_perl_docs, "fake"))
    monkeypatch.setitem(corpus_mod.CORPUS_SOURCES, "tiny-xl", PackageCorpus(("fake-perl",), "t"))
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "online"))
    archives = corpus_mod.archive_cache_dir()
    archives.mkdir(parents=True)
    (archives / pin.filename).write_bytes(deb.read_bytes())
    fingerprint = load_corpus("tiny-xl").fingerprint
    packed = pack_corpus("tiny-xl", 300, tmp_path / "tiny.tar.xz")
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "offline"))  # no archives here
    manifest = unpack_corpus(packed)
    assert manifest["fingerprint"] == fingerprint
    assert load_corpus("tiny-xl").fingerprint == fingerprint  # read from the cache, no fetch
    assert (tmp_path / "offline" / manifest["tokenizer"] / "tokenizer.json").exists()
    with pytest.raises(UserError, match="not a castlab corpus pack"):
        bad = tmp_path / "bad.tar.xz"
        with tarfile.open(bad, "w:xz") as tar:
            tar.add(deb, arcname="corpus/x")
        unpack_corpus(bad)


HTML = """<?xml version="1.0"?><html><head><title>2.6. Joins</title><style>p {x}</style></head>
<body><div class="navheader"><table><tr><td><a href="a.html">Prev</a></td></tr></table></div>
<div class="sect1"><h2 class="title">2.6. Joins   Between
   Tables</h2><div class="toc"><dl><dt>2.6.1. Skip me</dt></dl></div><p>
    Queries that access <em class="firstterm">several</em> tables
    are called <code>join</code> queries &amp; use &lt;ON&gt;.</p></span>
<pre class="programlisting">
SELECT *
    FROM weather;
</pre><table><tr><th>Name</th><th>Type</th></tr><tr><td>city</td><td>text</td></tr></table>
<ul><li><p>First item.</p></li><li>Second<br/>line.</li></ul></div>
<div class="navfooter"><a href="b.html">Next</a></div></body></html>"""


def test_strip_html_keeps_prose_and_code_drops_chrome():
    assert strip_html(HTML, ("navheader", "navfooter", "toc")).split("\n\n") == [
        "2.6. Joins Between Tables",
        "Queries that access several tables are called join queries & use <ON>.",
        "SELECT *\n    FROM weather;",  # <pre> keeps its line breaks and indentation
        "Name Type", "city text", "First item.", "Second", "line."]
    # without skip classes the navigation text and the table of contents stay
    assert "Prev" in strip_html(HTML) and "Skip me" in strip_html(HTML)


ADOC = """git-fake(1)
===========

NAME
----
git-fake - Do 'nothing' with `<paths>`

[[options]]
== Options

--quiet::
\tBe quiet; see linkgit:git-log[1] and <<options,the options>>.
+
include::diff-options.txt[]

[NOTE]
A *strong* note{litdd}it's fine.

------------
$ git fake --all
------------
"""


def test_strip_asciidoc_keeps_words_drops_markup():
    lines = [ln for ln in strip_asciidoc(ADOC).splitlines() if ln.strip()]
    assert lines == ["git-fake(1)", "NAME", "git-fake - Do nothing with <paths>", "Options",
                     "--quiet", "\tBe quiet; see git-log(1) and the options.",
                     "A strong note--it's fine.", "$ git fake --all"]


def test_postgresql_git_astropy_extraction_from_debs(tmp_path):
    html = "./usr/share/doc/postgresql-doc-15/html/"
    pg = make_deb(tmp_path / docsources.POSTGRESQL_DOC.filename, {
        html + "tutorial-join.html": HTML, html + "bookindex.html": "<p>A, B, C</p>",
        html + "stylesheet.css": "p {}"})
    docs = docsources.extract_postgresql_docs({docsources.POSTGRESQL_DOC.filename: pg})
    assert [d.name for d in docs] == ["postgresql-docs/tutorial-join"]  # index and css skipped
    assert docs[0].text.startswith("2.6. Joins Between Tables\n\nQueries") and "Prev" not in docs[0].text
    git = "./usr/share/doc/git-doc/"
    gd = make_deb(tmp_path / docsources.GIT_DOC.filename, {
        git + "git-fake.txt": ADOC, git + "git-fake.html": "<p>rendered copy</p>",
        git + "technical/notes.txt": "= Notes\n\nPlain `text`.\n"})
    docs = docsources.extract_git_docs({docsources.GIT_DOC.filename: gd})
    assert [d.name for d in docs] == ["git-docs/git-fake", "git-docs/technical/notes"]
    assert docs[1].text.strip() == "Notes\n\nPlain text."
    src = "./usr/share/doc/python-astropy-doc/html/_sources/"
    ad = make_deb(tmp_path / docsources.ASTROPY_DOC.filename, {
        src + "units/index.rst.txt": "Units\n=====\n\nUse :class:`Quantity`.\n",
        src + "api/astropy.units.Quantity.rst.txt": "Quantity\n========\n",
        src + "generated/examples/plot.rst.txt": "Click here\n", src + "license.rst.txt": "BSD"})
    docs = docsources.extract_astropy_docs({docsources.ASTROPY_DOC.filename: ad})
    assert [(d.name, d.text) for d in docs] == [("astropy-docs/units/index",
                                                 "Units\n\n\nUse Quantity.\n")]


@pytest.mark.slow
def test_default_xl_real_fetch_has_30m_training_tokens():
    from castlab.data.tokenizer import get_tokenizer, split_token_ids

    corpus = load_corpus("default-xl")
    tokenizer, _ = get_tokenizer(corpus, 8192)
    assert split_token_ids(corpus, "train", tokenizer, progress=False).numel() >= 30_000_000
