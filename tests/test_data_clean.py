"""Gutenberg boilerplate removal and text normalisation on hand-made texts."""

from castlab.data.clean import clean_document, normalize_text, strip_gutenberg

BODY = """HAMLET, PRINCE OF DENMARK

by William Shakespeare

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself."""
# Old etexts: the header is short next to the play, which is how the header licence is told
# apart from a trailing one.
LONG_BODY = BODY + "".join(f"\n\nBer.\nLong live the king! ({i})" for i in range(60))

MODERN = f"""\ufeffThe Project Gutenberg EBook of Hamlet, by William Shakespeare\r
\r
This eBook is for the use of anyone anywhere at no cost and with\r
almost no restrictions whatsoever.  You may copy it, give it away or\r
re-use it under the terms of the Project Gutenberg License included\r
with this eBook or online at www.gutenberg.org\r
\r
Title: Hamlet\r
Release Date: November 25, 2008 [EBook #1524]\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r
\r
\r
\r
{BODY.replace(chr(10), chr(13) + chr(10))}\r
\r
End of the Project Gutenberg EBook of Hamlet, by William Shakespeare\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r
\r
***** This file should be named 1524.txt or 1524.zip *****\r
\r
THE FULL PROJECT GUTENBERG LICENSE\r
Section 1.  General Terms of Use and Redistributing Project Gutenberg-tm\r
electronic works\r
"""

OLD_SMALL_PRINT = f"""**The Project Gutenberg Etext of Hamlet, by Shakespeare**
#9 in our series by William Shakespeare

Copyright laws are changing all over the world, be sure to check
the copyright laws for your country before posting these files!!

**Welcome To The World of Free Plain Vanilla Electronic Texts**

**Etexts Readable By Both Humans and By Computers, Since 1971**

*****These Etexts Were Prepared By Thousands of Volunteers!*****

Hamlet

May, 1998  [Etext #1524]

***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***
Why is this "Small Print!" statement here?  You know: lawyers.
They tell us you might sue us if there is something wrong with
your copy of this etext, even if you got it for free from
someone other than us, and even if what's wrong is not our
fault.
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

{LONG_BODY}

End of Project Gutenberg Etext of Hamlet by Shakespeare
"""

WORLD_LIBRARY = """Ber.
Who's there?

<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM
SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC., AND IS
PROVIDED BY PROJECT GUTENBERG ETEXT OF ILLINOIS BENEDICTINE COLLEGE
WITH PERMISSION.>>

Fran.
Nay, answer me: stand, and unfold yourself."""


def test_modern_header_footer_and_license_removed():
    assert clean_document(MODERN) == BODY


def test_old_small_print_header_and_end_line_removed():
    assert clean_document(OLD_SMALL_PRINT) == LONG_BODY


def test_small_print_at_the_end_is_cut():
    licence = ("***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\nlawyers\n"
               "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n")
    assert clean_document(LONG_BODY + "\n\n" + licence) == LONG_BODY
    # an unterminated trailing small print is cut as well
    assert clean_document(LONG_BODY + "\n\n" + licence.splitlines()[0]) == LONG_BODY


def test_world_library_notices_removed():
    cleaned = clean_document(WORLD_LIBRARY)
    assert "ELECTRONIC VERSION" not in cleaned and "Gutenberg" not in cleaned.title()
    assert cleaned == "Ber.\nWho's there?\n\nFran.\nNay, answer me: stand, and unfold yourself."


def test_text_without_boilerplate_is_left_alone():
    # Words like "pretext" or a line about the end of something must not trigger a cut.
    text = "The end of the play.\nAnd my pretext to strike at him admits\n\nA good construction."
    assert strip_gutenberg(text) == text
    assert clean_document(BODY) == BODY


def test_normalize_newlines_bom_trailing_space_and_blank_runs():
    assert normalize_text("\ufeffa  \r\nb\rc\n\n\n\n\nd\n\n") == "a\nb\nc\n\nd"
