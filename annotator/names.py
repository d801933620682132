"""Which characters a user name or a class name may hold, so that two different names never look alike.

- ``invisible``: characters that render as nothing or change how the text around them renders: control and
  format characters (bidi overrides such as U+202E, zero-width spaces and joiners), unassigned and private-use
  code points, line and paragraph separators, and Unicode's other default-ignorable code points (combining
  grapheme joiner U+034F, variation selectors U+FE00-FE0F, Hangul fillers U+3164 / U+115F / U+1160 / U+FFA0,
  Mongolian free variation selectors, ...). Neither user names nor class names may contain them; ``visible``
  writes them out where older data still holds some.
- ``user_name_problem``: user names are letters (with combining marks after them) and digits, with single
  spaces and ``.`` ``_`` ``-`` ``@`` between them, and their letters come from one script (Latin, Cyrillic,
  Greek, ...; Japanese may mix Han, Hiragana, Katakana and Latin, Korean Han, Hangul and Latin, Chinese Han,
  Bopomofo and Latin). So ``аdmin`` with a Cyrillic ``а``, or the braille blank U+2800, are refused.
- ``skeleton``: a name with its Cyrillic and Greek letters that look like Latin ones replaced by those, case
  folded; two user names with the same skeleton look alike (``ѕаm`` in Cyrillic letters and ``sam``).
"""
from __future__ import annotations

import unicodedata

SEPARATORS = frozenset(" ._-@")
_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
              (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
              (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
              (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
# scripts that may share one name (besides a name in a single script)
_MIXES = (frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}), frozenset({"LATIN", "CJK", "HANGUL"}),
          frozenset({"LATIN", "CJK", "BOPOMOFO"}))
# lower-case Cyrillic and Greek letters that look like a Latin letter (after case folding)
_LOOKALIKE = str.maketrans("авеёкмнорстухіїјѕһԁԛԝӏαβεικνορτυχ", "abeekmhopctyxiijshdqwlabeiknoptux")


def invisible(text: str) -> list[str]:
    """The characters of ``text`` that render as nothing or change the rendering around them (in order)."""
    return [c for c in text if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
            or any(lo <= ord(c) <= hi for lo, hi in _IGNORABLE)]


def visible(text: str) -> str:
    """``text`` with each invisible character written out as ``[U+XXXX]`` (for names stored before they were
    refused: a bidi override must not reverse the text shown after it)."""
    bad = set(invisible(text))
    return "".join(f"[U+{ord(c):04X}]" if c in bad else c for c in text) if bad else text


def _script(c: str) -> str:
    """The script of a letter, from its Unicode name ('LATIN SMALL LETTER A' -> 'LATIN')."""
    return unicodedata.name(c, "UNKNOWN").split()[0].split("-")[0]


def user_name_problem(name: str) -> str | None:
    """Why ``name`` (already NFKC-normalised and stripped) cannot be a user name, or None."""
    if invisible(name):
        return "user names must not contain control or invisible characters"
    scripts: set[str] = set()
    previous = ""
    for c in name:
        kind = unicodedata.category(c)
        if kind[0] == "L":
            scripts.add(_script(c))
        elif kind[0] == "M":
            if not previous or unicodedata.category(previous)[0] not in "LM":
                return "a combining mark in a user name must follow a letter"
        elif kind == "Nd":
            if not c.isascii():
                scripts.add(_script(c))
        elif c in SEPARATORS:
            if previous in SEPARATORS and (c == " " or previous == " "):
                return "user names have single spaces, not next to . _ - @"
        else:
            return "user names may hold only letters, digits, single spaces and . _ - @"
        previous = c
    if not any(unicodedata.category(c)[0] in "LN" for c in name):
        return "user names need a letter or a digit"
    if len(scripts) > 1 and not any(scripts <= mix for mix in _MIXES):
        return f"user names must not mix scripts ({', '.join(sorted(s.title() for s in scripts))})"
    return None


def skeleton(name: str) -> str:
    """What ``name`` looks like: NFKC, case folded, Cyrillic and Greek look-alikes of Latin letters as Latin."""
    return unicodedata.normalize("NFKC", name).strip().casefold().translate(_LOOKALIKE)
