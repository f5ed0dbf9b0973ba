"""`castlab report --html`: one self-contained file (every table and figure inside it, nothing
fetched from elsewhere), and, where Debian's chromium is installed, what a browser shows of it
(issue 24)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile

import matplotlib.image
import numpy as np
import pytest
from test_report_cmd import synthetic_rows

from castlab import store
from castlab.cli import main
from castlab.errors import UserError
from castlab.report.html import to_html

TABLE_RULE = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
DATA_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    for i, row in enumerate(synthetic_rows().to_dict("records")):
        store.write_row(root / "runs" / f"r{i:04d}", {**row, "run_id": f"r{i:04d}"})
    code = main(["report", str(root / "runs"), "--out", str(root / "out"), "--html",
                 "--draws", "30", "--heldout-draws", "10"])
    assert code == 0
    return root / "out"


def test_every_table_and_figure_is_in_the_one_file(report):
    md = (report / "REPORT.md").read_text()
    page = (report / "REPORT.html").read_text()
    tables = sum(bool(TABLE_RULE.match(line)) for line in md.splitlines())
    assert tables >= 5 and page.count("<table>") == tables
    figures = MD_IMAGE.findall(md)
    assert len(figures) == 3
    embedded = DATA_IMG.findall(page)
    assert len(embedded) == len(figures)
    for name, data in zip(figures, embedded, strict=True):
        assert base64.b64decode(data) == (report / name).read_bytes()
    # the law's formula is code, not Markdown emphasis (C*N^-gamma*D^-beta lost its stars)
    assert "<em>" not in page and "Chosen form: <strong>" in page
    # the headline numbers are the Markdown's cells
    first_row = next(ln for ln in md.splitlines() if ln.startswith("| s1m | cast |"))
    for cell in first_row.strip("|").split("|")[2:]:
        assert f"<td>{cell.strip()}</td>" in page or not cell.strip()


def test_nothing_outside_the_file_is_referenced(report):
    page = (report / "REPORT.html").read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    for needle in ("http://", "https://", "<script", "<link", "<iframe", "@import", "url("):
        assert needle not in page
    assert page.startswith("<!DOCTYPE html>") and "<meta charset=\"utf-8\">" in page


def test_markup_and_links_in_the_text_stay_text(tmp_path):
    page = to_html("# t\n\n<script>alert(1)</script> [docs](https://example.org) "
                   "<https://example.org>", tmp_path, "t <x>")
    assert "<script>" not in page and "href" not in page
    assert "&lt;script&gt;" in page and "<title>t &lt;x&gt;</title>" in page


def test_a_missing_figure_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="gone.png: figure missing or not a PNG"):
        to_html("![a](gone.png)", tmp_path, "t")


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_headless_chromium_shows_tables_and_figures(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
         f"--screenshot={shot}", "--window-size=1280,2000",
         (report / "REPORT.html").resolve().as_uri()],
        capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    # CAST's red (tab:red) is only in the embedded figure: it rendered, not a broken image
    red = np.all(np.abs(pixels - np.array([0.839, 0.153, 0.157])) < 0.08, axis=-1)
    assert red.sum() > 200
    # table borders and text: the page is not blank
    assert pixels.std() > 0.05
