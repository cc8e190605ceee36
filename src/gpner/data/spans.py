"""The two types every reader produces and everything downstream consumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Span:
    """An entity mention as half-open character offsets: ``text[start:end]``."""

    start: int
    end: int
    label: str

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end):
            raise ValueError(f"invalid span offsets [{self.start}, {self.end})")

    def overlaps(self, other: Span) -> bool:
        """Whether the two spans share at least one character (labels ignored)."""
        return self.start < other.end and other.start < self.end


@dataclass
class Example:
    """A text and its (possibly nested or overlapping) entity spans."""

    text: str
    spans: list[Span] = field(default_factory=list)


class SpanError(ValueError):
    """An entity annotation that does not fit its text; the message names the item and why."""


def _is_int(x: Any) -> bool:
    # bool is an int subclass; true/false as offsets is a data bug, not 1/0.
    return isinstance(x, int) and not isinstance(x, bool)


def same_words(a: str, b: str) -> bool:
    """Equal up to whitespace: how annotation tools' stored mentions are compared to the text
    (they collapse newlines and runs of spaces)."""
    return a.split() == b.split()


def checked_span(
    text: str,
    start: Any,
    end: Any,
    label: Any,
    who: str,
    *,
    mention: Any = None,
    inclusive_end: bool = False,
    mention_name: str = "mention",
    same: Callable[[str, str], bool] = str.__eq__,
) -> Span:
    """The :class:`Span` an annotation of ``text`` names, after every check a reader makes.

    ``start``/``end`` must be integers (not bools) inside the text, non-empty, ``end`` exclusive
    unless ``inclusive_end``; ``label`` a non-empty string; ``mention``, when given, must equal
    (by ``same``) the text at those offsets. Raises :class:`SpanError` whose message starts
    with ``who`` (e.g. ``"entity 3"``) and the label.
    """
    if not (_is_int(start) and _is_int(end)):
        raise SpanError(f"{who}: start/end missing or not integers: {start!r}, {end!r}")
    if not isinstance(label, str) or not label:
        raise SpanError(f"{who}: missing or empty label")
    stop = end + 1 if inclusive_end else end
    where = f"[{start}, {end}] (inclusive end)" if inclusive_end else f"[{start}, {end})"
    if not 0 <= start < stop <= len(text):
        raise SpanError(
            f"{who} ({label}): offsets {where} outside the text of {len(text)} characters, or empty"
        )
    if mention is not None and not (isinstance(mention, str) and same(mention, text[start:stop])):
        raise SpanError(
            f"{who} ({label}): {mention_name} {mention!r} differs from the text at {where}: "
            f"{text[start:stop]!r}"
        )
    return Span(start, stop, label)
