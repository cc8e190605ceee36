"""Character offsets: what gpner counts, and the UTF-16 units some annotation tools count.

gpner's offsets are Python string indices: **code points**, half-open (``text[start:end]``, the
end exclusive). So are brat's (a Python server slicing the ``.txt``) and Label Studio's (its text
regions store code points; it fixed the JavaScript-length offsets of texts with emoji). doccano's
web UI counts **UTF-16 code units**, JavaScript's string length, unless a project counts grapheme
clusters: there a character outside the Basic Multilingual Plane (most emoji, rare CJK
ideographs such as 𠀋) counts 2, and every later offset is one larger per such character than
gpner's. Texts made of BMP characters only (all of CLUENER, for example) have the same offsets
both ways.

These functions convert between the two; an offset that falls between the two halves of a
surrogate pair, or past the text, is a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["OFFSET_UNITS", "from_utf16", "to_utf16", "utf16_length"]

OFFSET_UNITS = ("codepoints", "utf16")


def _is_bmp(text: str) -> bool:
    return not text or max(text) <= "\uffff"


def utf16_length(text: str) -> int:
    """The text's length in UTF-16 code units (JavaScript's ``text.length``)."""
    return len(text) + sum(1 for ch in text if ch > "\uffff")


def _units_before(text: str) -> list[int]:
    """``units[k]`` = UTF-16 units before code point ``k``, for ``k`` in ``0..len(text)``."""
    units = [0] * (len(text) + 1)
    total = 0
    for k, ch in enumerate(text):
        units[k] = total
        total += 2 if ch > "\uffff" else 1
    units[len(text)] = total
    return units


def to_utf16(text: str, offsets: Sequence[int]) -> list[int]:
    """Code-point offsets into ``text`` -> UTF-16 code-unit offsets."""
    n = len(text)
    for x in offsets:
        if not 0 <= x <= n:
            raise ValueError(f"offset {x} outside the text of {n} code points")
    if _is_bmp(text):
        return list(offsets)
    units = _units_before(text)
    return [units[x] for x in offsets]


def from_utf16(text: str, offsets: Sequence[int]) -> list[int]:
    """UTF-16 code-unit offsets into ``text`` -> code-point offsets.

    Raises ``ValueError`` for an offset inside a surrogate pair (it splits a character) or
    outside the text.
    """
    if _is_bmp(text):
        n = len(text)
        for x in offsets:
            if not 0 <= x <= n:
                raise ValueError(f"offset {x} outside the text of {n} UTF-16 units")
        return list(offsets)
    units = _units_before(text)
    index = {u: k for k, u in enumerate(units)}
    result = []
    for x in offsets:
        if x not in index:
            if 0 <= x <= units[-1]:
                raise ValueError(
                    f"UTF-16 offset {x} splits the surrogate pair of a character outside the "
                    "BMP (are these offsets code points, not UTF-16 units?)"
                )
            raise ValueError(f"offset {x} outside the text of {units[-1]} UTF-16 units")
        result.append(index[x])
    return result
