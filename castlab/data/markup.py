"""Markup stripping for documentation sources: reStructuredText, Perl POD, dictd dictionary text.

The documentation corpora (``castlab.data.docsources``) ship their text as markup. A model
trained on it should see the prose and the code examples, not ``:func:`` roles, section
underlines or ``=head1`` commands, which would otherwise be a large share of the tokens. Full
renderers (docutils, pod2text) need the whole toolchain of each project (Sphinx extensions,
Perl), so these are deliberately small, line-based strippers: they keep every word of text and
every code block, and drop only the markup around them.
"""

from __future__ import annotations

import re

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
