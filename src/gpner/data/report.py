"""What a read left out, counted, so that a lenient run can say it in its log and metrics.

Readers report through ``ReadWarning``s (one per file: bad items skipped with ``strict=False``,
annotations of kinds gpner does not model). ``collect_read_report`` adds them up.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from gpner.data.records import ReadWarning

__all__ = ["ReadReport", "collect_read_report", "warn_ignored"]


@dataclass
class ReadReport:
    """Counts from the ``ReadWarning``s of one or more reads."""

    skipped: int = 0  # bad items dropped (strict=False)
    skipped_by_path: dict[str, int] = field(default_factory=dict)
    ignored: Counter = field(default_factory=Counter)  # kind -> annotations not modelled
    messages: list[str] = field(default_factory=list)

    def add(self, warning: ReadWarning) -> None:
        self.messages.append(str(warning))
        if warning.skipped:
            self.skipped += warning.skipped
            key = warning.path or "?"
            self.skipped_by_path[key] = self.skipped_by_path.get(key, 0) + warning.skipped
        self.ignored.update(warning.ignored)

    def as_dict(self) -> dict:
        return {
            "skipped_items": self.skipped,
            "skipped_by_file": dict(self.skipped_by_path),
            "ignored_annotations": dict(self.ignored),
        }


@contextmanager
def collect_read_report() -> Iterator[ReadReport]:
    """Count the ``ReadWarning``s raised inside the block into a ``ReadReport``.

    Every warning caught (of any kind) is issued again when the block ends, so nothing that would
    have been shown is hidden. Not thread-safe (``warnings.catch_warnings`` is not).
    """
    report = ReadReport()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield report
    for item in caught:
        if isinstance(item.message, ReadWarning):
            report.add(item.message)
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def warn_ignored(path: str | os.PathLike[str], counts: Mapping[str, int], what: str) -> None:
    """One ``ReadWarning`` for annotations that were read past (``counts``: kind -> number)."""
    counts = {kind: n for kind, n in counts.items() if n}
    if not counts:
        return
    listed = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    warnings.warn(
        ReadWarning(f"{path}: ignored {listed} ({what})", path=path, ignored=counts),
        stacklevel=3,
    )
