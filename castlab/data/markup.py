"""Markup stripping for documentation sources: reST, Perl POD, dictd text, AsciiDoc, HTML.

The documentation corpora (``castlab.data.docsources``) ship their text as markup. A model
trained on it should see the prose and the code examples, not ``:func:`` roles, section
underlines or ``=head1`` commands, which would otherwise be a large share of the tokens. Full
renderers (docutils, pod2text) need the whole toolchain of each project (Sphinx extensions,
Perl), so these are deliberately small, line-based strippers: they keep every word of text and
every code block, and drop only the markup around them.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# --- reStructuredText ------------------------------------------------------------------------

# A section adornment: a line of one repeated punctuation character (=====, -----, ~~~~, ****).
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+_.:<>])\1{2,}[ \t]*$", re.MULTILINE)
# ":role:`text <target>`" and ":role:`text`" (roles may be namespaced: ":c:func:")
_RST_ROLE_TARGET = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`([^`<]+?)\s*<[^`>]*>`")
_RST_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`~?!?([^`]+)`")
# `text <url>`_ and `text`_ (hyperlink references); ``literal``; *emph*, **strong**.
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_RST_REF = re.compile(r"`([^`]+)`__?")
_RST_LITERAL = re.compile(r"``([^`]+)``")
_RST_INTERPRETED = re.compile(r"`([^`]+)`")
_RST_STRONG = re.compile(r"\*\*([^*\n]+)\*\*")
_RST_EMPH = re.compile(r"(?<![\w*])\*([^*\s][^*\n]*?)\*(?![\w*])")
_RST_SUBSTITUTION = re.compile(r"\|([\w -]+)\|_?")
# ".. directive:: argument" keeps the argument (a function signature, a note's title);
# ".. _label:", ".. |sub| ..." and comments are dropped.
_RST_DIRECTIVE = re.compile(r"^([ \t]*)\.\.[ \t]+[\w:-]+::[ \t]*(.*)$", re.MULTILINE)
_RST_EXPLICIT = re.compile(r"^[ \t]*\.\.(?:[ \t].*)?$", re.MULTILINE)
_RST_FIELD_OPTION = re.compile(r"^[ \t]+:[\w -]+:(?:[ \t].*)?$", re.MULTILINE)


def strip_rst(text: str) -> str:
    """Plain text of a reStructuredText document: roles, links, adornments and directives out.

    Directive arguments (a function signature after ``.. function::``) are kept as text;
    labels, comments, substitution definitions and directive options are dropped; the
    content of every block (prose, literal blocks, code) is kept.
    """
    text = _RST_ADORNMENT.sub("", text)
    text = _RST_DIRECTIVE.sub(lambda m: m.group(1) + m.group(2) if m.group(2) else "", text)
    text = _RST_EXPLICIT.sub("", text)
    text = _RST_FIELD_OPTION.sub("", text)
    text = _RST_ROLE_TARGET.sub(r"\1", text)
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    text = _RST_REF.sub(r"\1", text)
    text = _RST_INTERPRETED.sub(r"\1", text)
    text = _RST_STRONG.sub(r"\1", text)
    text = _RST_EMPH.sub(r"\1", text)
    return _RST_SUBSTITUTION.sub(r"\1", text)


# --- Perl POD --------------------------------------------------------------------------------

_POD_BLOCK = re.compile(r"^=(begin|for)[ \t]+(\S+).*?(?:^=end[ \t]+\2[^\n]*$|\Z)",
                        re.MULTILINE | re.DOTALL)
_POD_HEADING = re.compile(r"^=(?:head\d|item)[ \t]*(.*)$", re.MULTILINE)
_POD_COMMAND = re.compile(r"^=\w+.*$", re.MULTILINE)
# Formatting codes with doubled brackets (C<< $a->b >>) first, then single (B<bold>, L<x|y>).
_POD_CODE_MULTI = re.compile(r"[A-Z]<<+\s(.*?)\s>>+", re.DOTALL)
_POD_LINK = re.compile(r"L<([^<>|]*)\|[^<>]*>")
_POD_DROP = re.compile(r"[XZ]<[^<>]*>")  # index entries and zero-width codes carry no text
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}
_POD_ESCAPE = re.compile(r"E<(\w+)>")
_POD_CODE = re.compile(r"[A-Z]<([^<>]*)>")


def strip_pod(text: str) -> str:
    """Plain text of a POD document: headings and items kept as lines, formatting codes out.

    ``=begin``/``=for`` blocks (HTML, man-page or test directives) and ``=cut`` sections'
    commands are dropped; ``B<x>``, ``C<x>``, ``I<x>`` become ``x``; ``L<text|target>``
    becomes ``text``; ``E<lt>`` and friends become their characters.
    """
    text = _POD_BLOCK.sub("", text)
    text = _POD_HEADING.sub(r"\1", text)
    text = _POD_COMMAND.sub("", text)
    text = _POD_CODE_MULTI.sub(r"\1", text)
    text = _POD_LINK.sub(r"\1", text)
    text = _POD_DROP.sub("", text)
    text = _POD_ESCAPE.sub(lambda m: _POD_ESCAPES.get(m.group(1), ""), text)
    for _ in range(3):  # codes nest (B<C<x>>): peel the innermost layer each pass
        text = _POD_CODE.sub(r"\1", text)
    return text


# --- dictd dictionary entries (GCIDE) --------------------------------------------------------

_DICT_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")  # \A*ban"don\ : pronunciation and accents
_DICT_BRACES = re.compile(r"[{}]")  # {cross-references} and {italic words}


def strip_dict_entry(text: str) -> str:
    """A dictd entry as prose: pronunciation keys and cross-reference braces removed."""
    return _DICT_BRACES.sub("", _DICT_PRONUNCIATION.sub("", text))


# --- AsciiDoc (the Git manual) ---------------------------------------------------------------

_ADOC_TITLE = re.compile(r"^=+[ \t]+", re.MULTILINE)  # "== Section" (one-line titles)
# Block attributes and anchors on their own line: [[anchor]], [verse], [NOTE], [source,c].
_ADOC_BLOCK_LINE = re.compile(r"^\[[^\]\n]*\]\]?[ \t]*$", re.MULTILINE)
# include::x[], ifdef::X[], endif::X[], :attribute: value, a lone "+" (list continuation),
# and table fences (|===).
_ADOC_DIRECTIVE = re.compile(
    r"^(?:(?:include|ifdef|ifndef|ifeval|endif)::.*|:[\w-]+:.*|\+|\|===+)[ \t]*$", re.MULTILINE)
_ADOC_XREF = re.compile(r"<<([^,>\n]+),([^>\n]+)>>")  # <<id,text>> -> text
_ADOC_XREF_BARE = re.compile(r"<<([^>\n]+)>>")  # <<id>> -> id
_ADOC_LINKGIT = re.compile(r"linkgit:([\w.-]+)\[(\d)\]")  # linkgit:git-log[1] -> git-log(1)
_ADOC_MACRO = re.compile(r"\b(?:link|https?|mailto|footnote|image):([^\s\[]*)\[([^\]\n]*)\]")
_ADOC_LABEL = re.compile(r"^([^\n]*?)(?::::?|;;)[ \t]*$", re.MULTILINE)  # "--quiet::" terms
_ADOC_MONO = re.compile(r"`([^`\n]+)`")
_ADOC_EMPH = re.compile(r"(?<![\w'])'([^'\s][^'\n]*?)'(?![\w'])")
_ADOC_STRONG = re.compile(r"(?<![\w*])\*([^*\s][^*\n]*?)\*(?![\w*])")
_ADOC_ATTRIBUTES = {"{litdd}": "--", "{caret}": "^", "{tilde}": "~", "{startsb}": "[",
                    "{endsb}": "]", "{apostrophe}": "'", "{backtick}": "`", "{plus}": "+",
                    "{empty}": "", "{nbsp}": " ", "{sp}": " "}


def strip_asciidoc(text: str) -> str:
    """Plain text of an AsciiDoc page: titles, anchors, block fences and inline markup out.

    Section titles keep their words; block delimiters (----, ...., ====) and the setext
    underlines go, their content stays; ``linkgit:git-log[1]`` reads ``git-log(1)``;
    cross-references keep their text; labelled-list terms (``--quiet::``) keep the term.
    """
    text = _RST_ADORNMENT.sub("", text)  # same line-of-punctuation shapes as reST
    text = _ADOC_TITLE.sub("", text)
    text = _ADOC_BLOCK_LINE.sub("", text)
    text = _ADOC_DIRECTIVE.sub("", text)
    text = _ADOC_XREF.sub(r"\2", text)
    text = _ADOC_XREF_BARE.sub(r"\1", text)
    text = _ADOC_LINKGIT.sub(r"\1(\2)", text)
    text = _ADOC_MACRO.sub(lambda m: m.group(2) or m.group(1), text)
    text = _ADOC_LABEL.sub(r"\1", text)
    text = _ADOC_MONO.sub(r"\1", text)
    text = _ADOC_EMPH.sub(r"\1", text)
    text = _ADOC_STRONG.sub(r"\1", text)
    for attribute, value in _ADOC_ATTRIBUTES.items():
        text = text.replace(attribute, value)
    return text


# --- HTML (DocBook output: the PostgreSQL manual) --------------------------------------------

# Elements that end a line of text; everything else is inline.
_HTML_BLOCKS = frozenset({
    "p", "div", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr", "table",
    "blockquote", "br", "hr", "ul", "ol", "dl", "title", "caption", "section", "figure"})
# Elements whose content is not prose (scripts, styles, the page head).
_HTML_SKIP = frozenset({"head", "script", "style", "svg"})
_HTML_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr"})
_WHITESPACE = re.compile(r"\s+")


class _HtmlText(HTMLParser):
    """Collects text: whitespace collapsed outside ``<pre>``, a line break after each block."""

    def __init__(self, skip_classes: frozenset[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_classes = skip_classes
        self.lines: list[str] = []
        self.line: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # (tag, opened a skipped region)
        self.skipping = 0
        self.pre = 0
        self.line_pre = False  # the pending line holds <pre> text: keep its indentation

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in _HTML_SKIP or bool(classes & self.skip_classes)
        if tag in _HTML_BLOCKS:
            self.flush()
        if tag in _HTML_VOID:
            return
        self.stack.append((tag, skip))
        self.skipping += skip
        self.pre += tag == "pre"
        if tag in ("td", "th") and self.line:
            self.line.append(" ")  # cells of a row read as one line

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_VOID or not any(t == tag for t, _ in self.stack):
            return  # stray end tag: ignore rather than unbalance the stack
        while self.stack:
            open_tag, skip = self.stack.pop()
            self.skipping -= skip
            self.pre -= open_tag == "pre"
            if open_tag == tag:
                break
        if tag in _HTML_BLOCKS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.pre:
            self.line.append(data)
            self.line_pre = True
        else:
            self.line.append(_WHITESPACE.sub(" ", data))

    def flush(self) -> None:
        text, pre = "".join(self.line), self.line_pre
        self.line, self.line_pre = [], False
        if text.strip():
            self.lines.append(text.strip("\n") if pre else text.strip())


def strip_html(text: str, skip_classes: tuple[str, ...] = ()) -> str:
    """Plain text of an HTML page: tags out, one block (paragraph, item, row) per paragraph.

    Inline whitespace is collapsed except inside ``<pre>`` (code keeps its layout); the page
    head, scripts, styles and elements with a class in ``skip_classes`` (navigation bars) are
    dropped; character references are decoded.
    """
    parser = _HtmlText(frozenset(skip_classes))
    parser.feed(text)
    parser.close()
    parser.flush()
    return "\n\n".join(parser.lines)
