"""What every reader shares: its errors, the text of a file, JSON records and their checks.

``gpner.data.readers`` and the annotation-tool format modules (``brat``, ``doccano``,
``labelstudio``) read through these; none of them imports another to get them.

A reader converts one record at a time and raises :class:`BadRecord` for a record that does not
fit; :class:`Problems` turns that into a ``ReadError`` (``strict=True``) or collects it for one
summary ``ReadWarning`` (``strict=False``). :func:`read_records` is that loop for JSON formats.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gpner.data.paths import not_found
from gpner.data.spans import Span, SpanError, checked_span

__all__ = [
    "BadRecord",
    "Problems",
    "ReadError",
    "ReadWarning",
    "checked_record_span",
    "json_records",
    "load_text",
    "read_records",
    "record_object",
    "record_text",
]

T = TypeVar("T")

# How many reasons a summary warning lists.
MAX_REASONS = 5


class ReadError(ValueError):
    """Bad input: ``str(err)`` is ``"<path>:<line>: <reason>"``; fields kept on the instance."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ReadWarning(UserWarning):
    """Something was read with a guess or skipped (``strict=False``); the message says what.

    ``skipped`` counts the bad items dropped, ``ignored`` the annotations of kinds gpner does not
    model (e.g. brat relations), by kind; both are zero/empty for a warning about a guess.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        skipped: int = 0,
        ignored: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.skipped = skipped
        self.ignored = dict(ignored or {})


class BadRecord(Exception):
    """A record-level problem; ``entity`` is the index of the offending entity, if any."""

    def __init__(self, reason: str, entity: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entity = entity


class Problems:
    """Raises at the first bad item (strict) or collects them for one summary warning."""

    def __init__(self, path: Path, strict: bool, unit: str) -> None:
        self.path = path
        self.strict = strict
        self.unit = unit
        self.items: list[tuple[int | None, str, Path | None]] = []

    def bad(self, line: int | None, reason: str, path: Path | None = None) -> None:
        """A bad item at ``line`` of ``path`` (default: the path being read)."""
        if self.strict:
            raise ReadError(path or self.path, line, reason)
        self.items.append((line, reason, path))

    def finish(self, stacklevel: int = 4) -> None:
        """Warn once about the items collected (nothing when there are none)."""
        if not self.items:
            return
        items = sorted(self.items, key=lambda item: (str(item[2] or ""), item[0] or 0))
        first = "; ".join(
            f"{p.name + ':' if p else 'line '}{ln}: {why}" for ln, why, p in items[:MAX_REASONS]
        )
        more = " ..." if len(self.items) > MAX_REASONS else ""
        warnings.warn(
            ReadWarning(
                f"{self.path}: skipped {len(self.items)} bad {self.unit}(s) (strict=False); "
                f"first: {first}{more}",
                path=self.path,
                skipped=len(self.items),
            ),
            stacklevel=stacklevel,
        )


def load_text(path: Path, keep_bom: bool = False) -> str:
    """The UTF-8 content of a data file; a leading byte-order mark is dropped unless ``keep_bom``
    (brat counts it as a character of the text). Bad bytes are a ``ReadError`` naming the line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such data file: {not_found(path)}") from None
    try:
        return raw.decode("utf-8" if keep_bom else "utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ReadError(path, line, f"not valid UTF-8 (byte {e.start}: {e.reason})") from None


# --------------------------------------------------------------------------------------------
# JSON records
# --------------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


def json_records(
    text: str, path: Path, problems: Problems | None
) -> Iterator[tuple[int, Any, tuple[int, int]]]:
    """Yield ``(line, record, (begin, end))`` from JSON lines or a JSON array.

    ``begin:end`` is the record's source in ``text`` (for locating an entity's line on error).
    Invalid JSON lines go to ``problems`` (skipped when not strict); ``problems=None`` stops at
    them.
    Broken array syntax always raises: after it nothing can be trusted to line up.
    """
    start = _WS.match(text).end()
    if text.startswith("[", start):
        yield from _json_array(text, path, start)
        return
    pos = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        begin, pos = pos, pos + len(line) + 1
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if problems is None:
                return
            problems.bad(lineno, f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        yield lineno, obj, (begin, begin + len(line))


def _json_array(text: str, path: Path, start: int) -> Iterator[tuple[int, Any, tuple[int, int]]]:
    decoder = json.JSONDecoder()
    i = _WS.match(text, start + 1).end()
    line, counted = 1, 0
    if text.startswith("]", i):
        return
    while True:
        line += text.count("\n", counted, i)
        counted = i
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ReadError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        yield line, obj, (i, end)
        i = _WS.match(text, end).end()
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
            continue
        if text.startswith("]", i):
            rest = _WS.match(text, i + 1).end()
            if rest != len(text):
                bad_line = text.count("\n", 0, rest) + 1
                raise ReadError(path, bad_line, "invalid JSON: extra data after the array")
            return
        bad_line = text.count("\n", 0, i) + 1
        raise ReadError(path, bad_line, "invalid JSON: expected ',' or ']' after an array element")


def read_records(
    text: str,
    path: Path,
    problems: Problems,
    convert: Callable[[Any], T],
    locate: Callable[[int, tuple[int, int], int], int] | None = None,
) -> list[T]:
    """``convert`` every JSON record of ``text``; a record it rejects with :class:`BadRecord`
    goes to ``problems`` at its line, or at ``locate(line, (begin, end), entity)`` when the
    rejection names an entity. The caller calls ``problems.finish()``."""
    out = []
    for line, obj, where in json_records(text, path, problems):
        try:
            out.append(convert(obj))
        except BadRecord as e:
            at = line
            if e.entity is not None and locate is not None:
                at = locate(line, where, e.entity)
            problems.bad(at, e.reason)
    return out


# --------------------------------------------------------------------------------------------
# Record checks
# --------------------------------------------------------------------------------------------


def record_object(obj: Any, what: str = "JSON object") -> dict:
    """``obj`` itself when it is a JSON object, else a :class:`BadRecord` ("expected a <what>")."""
    if not isinstance(obj, dict):
        raise BadRecord(f"expected a {what}, got {type(obj).__name__}")
    return obj


def record_text(record: dict, key: str = "text", name: str | None = None) -> str:
    """The string under ``key`` of a record, else a :class:`BadRecord` naming it (``name``,
    default ``key``)."""
    text = record.get(key)
    if not isinstance(text, str):
        raise BadRecord(f'missing or non-string "{name or key}"')
    return text


def checked_record_span(
    text: str,
    start: Any,
    end: Any,
    label: Any,
    who: str,
    entity: int | None = None,
    note: str = "",
    **options: Any,
) -> Span:
    """:func:`gpner.data.spans.checked_span` (``options`` passed on), its error as this record's
    :class:`BadRecord` about ``entity``, with `` (<note>)`` after the reason when given."""
    try:
        return checked_span(text, start, end, label, who, **options)
    except SpanError as error:
        reason = f"{error} ({note})" if note else str(error)
        raise BadRecord(reason, entity) from None
