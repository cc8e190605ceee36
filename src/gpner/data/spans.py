"""The two types every reader produces and everything downstream consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def contains(self, other: Span) -> bool:
        """Whether ``other`` lies within this span (equal extents count; labels ignored)."""
        return self.start <= other.start and other.end <= self.end


@dataclass
class Example:
    """A text and its (possibly nested or overlapping) entity spans."""

    text: str
    spans: list[Span] = field(default_factory=list)

    def mention(self, span: Span) -> str:
        return self.text[span.start : span.end]
