"""doccano sequence-labeling JSONL: ``{"text": str, "label": [[start, end, "TYPE"], ...]}``.

One record per line (a JSON array of records is read too); other keys (``id``, ``Comments``, ...)
are ignored. Offsets are end-exclusive and counted in **UTF-16 code units** by default, because
that is what doccano's web UI counts (JavaScript string indices; see ``gpner.data.offsets``):
``offsets="codepoints"`` reads and writes Python string indices instead. The two agree on texts
without characters outside the BMP. A UTF-16 offset that splits a surrogate pair is a bad record.

doccano's record has no field for a confidence score, so predictions are written without scores
(``label-studio`` keeps them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpner.data.offsets import OFFSET_UNITS, from_utf16, to_utf16, utf16_length
from gpner.data.records import (
    BadRecord,
    Problems,
    checked_record_span,
    load_text,
    read_records,
    record_object,
    record_text,
)
from gpner.data.spans import Example, Span

__all__ = ["doccano_record", "read_doccano", "read_doccano_text"]


def _check_units(offsets: str) -> None:
    if offsets not in OFFSET_UNITS:
        raise ValueError(f"offsets must be one of {OFFSET_UNITS}, got {offsets!r}")


def _example(obj: Any, offsets: str) -> Example:
    obj = record_object(obj)
    text = record_text(obj)
    items = obj.get("label")
    if items is None:
        return Example(text, [])
    if not isinstance(items, list):
        raise BadRecord('"label" must be a list of [start, end, "TYPE"]')
    # Offsets are checked in the file's own units (UTF-16 ones are converted below).
    units = " " * utf16_length(text) if offsets == "utf16" else text
    raw = []
    for k, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 3):
            raise BadRecord(f'label {k}: {item!r} is not [start, end, "TYPE"]')
        checked_record_span(units, *item, f"label {k}", note=f"{offsets} offsets")
        raw.append(item)
    bounds = [x for item in raw for x in item[:2]]
    if offsets == "utf16":
        try:
            bounds = from_utf16(text, bounds)
        except ValueError as e:
            raise BadRecord(f"label offsets: {e}") from None
    spans = [Span(bounds[2 * k], bounds[2 * k + 1], item[2]) for k, item in enumerate(raw)]
    return Example(text, sorted(set(spans)))


def read_doccano_text(
    text: str, path: Path, strict: bool = True, offsets: str = "utf16"
) -> list[Example]:
    """Examples from the content ``text`` of the doccano file ``path`` (errors name its lines)."""
    _check_units(offsets)
    problems = Problems(path, strict, "record")
    examples = read_records(text, path, problems, lambda obj: _example(obj, offsets))
    problems.finish()
    return examples


def read_doccano(
    path: str | os.PathLike[str], strict: bool = True, offsets: str = "utf16"
) -> list[Example]:
    """Read a doccano JSONL file (``offsets``: ``"utf16"``, doccano's, or ``"codepoints"``)."""
    p = Path(path)
    return read_doccano_text(load_text(p), p, strict, offsets)


def doccano_record(text: str, spans: Sequence[Span], offsets: str = "utf16") -> dict[str, Any]:
    """The doccano record of a text and its spans (code-point spans, converted to ``offsets``)."""
    _check_units(offsets)
    spans = sorted(spans)
    bounds = [x for s in spans for x in (s.start, s.end)]
    if offsets == "utf16":
        bounds = to_utf16(text, bounds)
    return {
        "text": text,
        "label": [[bounds[2 * k], bounds[2 * k + 1], s.label] for k, s in enumerate(spans)],
    }
