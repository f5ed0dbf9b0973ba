"""Text cleaning: newline normalisation and removal of Project Gutenberg headers and licences.

Gutenberg texts wrap the book in boilerplate that would otherwise be learned (and scored) as if
it were part of the corpus. Three layouts occur in the wild and all are handled here:
- modern: ``*** START OF THE/THIS PROJECT GUTENBERG EBOOK ... ***`` and the matching END line,
  with the licence after the END marker;
- 1990s etexts: a header plus a "small print" licence that closes with
  ``*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*...*END*`` (everything before it is header);
- the World Library Shakespeare etexts, which repeat ``<<THIS ELECTRONIC VERSION ... >>``
  copyright notices between scenes.
No library does this for current Python (the ``gutenberg`` package is unmaintained), so it is
written here as a handful of regular expressions.
"""

from __future__ import annotations

import re

_FLAGS = re.IGNORECASE | re.MULTILINE

# "*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***" and its older "THIS ... ETEXT" spellings.
_START_MARKER = re.compile(
    r"^[ \t]*\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|-BOOK|TEXT)\b.*$", _FLAGS
)
_END_MARKER = re.compile(
    r"^[ \t]*\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|-BOOK|TEXT)\b.*$", _FLAGS
)
# Old etexts: the header and licence end with this line; the book starts after it.
_SMALL_PRINT_END = re.compile(r"^.*\*END\*?[ \t]*THE SMALL PRINT!.*$", _FLAGS)
# Old etexts put the small print at the end instead, opened by this line.
_SMALL_PRINT_START = re.compile(r"^.*\*+[ \t]*START\*+[ \t]*THE SMALL PRINT!.*$", _FLAGS)
# The closing line that precedes the END marker (or replaces it in older texts).
_END_LINE = re.compile(
    r"^[ \t]*(?:\*+[ \t]*)?End of (?:the |this )?Project Gutenberg(?:'s)?\b.*$", _FLAGS
)
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION OF.*?>>", re.DOTALL | re.IGNORECASE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


def normalize_text(text: str) -> str:
    """Drop a BOM, turn CRLF/CR into LF, strip trailing spaces, cap blank runs at one empty line."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers, footers and licence blocks; other text is untouched."""
    start = _START_MARKER.search(text)
    if start:
        text = text[start.end():]
    cuts = [m.start() for m in (_END_MARKER.search(text), _END_LINE.search(text)) if m]
    if cuts:
        text = text[:min(cuts)]
    small_start, small_end = _SMALL_PRINT_START.search(text), _SMALL_PRINT_END.search(text)
    if small_end:
        begin = small_start.start() if small_start and small_start.start() < small_end.start() else 0
        # More text after the licence than before it: it is the header; otherwise a trailer.
        text = text[small_end.end():] if begin < len(text) - small_end.end() else text[:begin]
    elif small_start:
        text = text[:small_start.start()]
    return _WORLD_LIBRARY.sub("", text)


def clean_document(text: str) -> str:
    """The cleaning every corpus document goes through: Gutenberg boilerplate out, then normalise."""
    return normalize_text(strip_gutenberg(normalize_text(text)))
