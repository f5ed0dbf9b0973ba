"""The report as one self-contained HTML file (`castlab report --html`).

The HTML is the rendered REPORT.md (Markdown through ``markdown-it-py``, tables included) with
every figure embedded as a base64 PNG ``data:`` URI and the style inline: one file that opens in a
browser, can be mailed or attached, and fetches nothing. Raw HTML and links in the Markdown are
not rendered (text stays text), so the file has no external reference.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from castlab.errors import UserError

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.88em; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; white-space: nowrap; }
th { background: #f3f4f6; }
tr:nth-child(even) td { background: #f8f9fa; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
code { background: #f3f4f6; padding: 0 .25em; border-radius: 3px; }
"""


def embed_images(markdown: str, base_dir: Path) -> str:
    """``![alt](file.png)`` links relative to ``base_dir`` replaced by ``data:image/png`` URIs;
    a missing or non-PNG file is a UserError naming it (the HTML would show a broken image)."""

    def inline(match: re.Match) -> str:
        alt, target = match.group(1), match.group(2)
        if target.startswith("data:"):
            return match.group(0)
        path = base_dir / target
        data = path.read_bytes() if path.is_file() else b""
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise UserError(f"{path}: figure missing or not a PNG, cannot embed it in the HTML")
        return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"

    return IMAGE.sub(inline, markdown)


def to_html(markdown: str, base_dir: Path, title: str) -> str:
    """One HTML document of ``markdown`` (images relative to ``base_dir`` embedded)."""
    from markdown_it import MarkdownIt

    # 'js-default': tables on, raw HTML off; links off too, so nothing points outside the file
    md = MarkdownIt("js-default").disable(["link", "autolink", "linkify"], ignoreInvalid=True)
    body = md.render(embed_images(markdown, base_dir))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def write_html(report_md: Path) -> Path:
    """``REPORT.html`` next to ``report_md``, from its text and figures; returns its path."""
    text = report_md.read_text()
    first = next((ln[2:] for ln in text.splitlines() if ln.startswith("# ")), "castlab report")
    out = report_md.with_suffix(".html")
    out.write_text(to_html(text, report_md.parent, first))
    return out
