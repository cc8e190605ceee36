"""Readers: every supported source format becomes ``list[Example]`` here, once.

Nothing downstream knows where an example came from. All offsets are half-open character offsets
into ``Example.text`` (see ``Span``).

Formats (``read(path, format=...)``):

- ``cluener``: JSON lines, ``{"text": str, "label": {type: {mention: [[start, end], ...]}}}``
  with an inclusive ``end``. ``label`` may be absent or null (no entities).
- ``cmeee``: a JSON array of ``{"text": str, "entities": [{"start_idx", "end_idx", "type",
  "entity"}]}`` with an inclusive ``end_idx``; entities may nest. ``entity`` is optional (checked
  against the text when present).
- ``conll``: word-level columns, token first and tag last, blank line between sentences,
  ``-DOCSTART-`` lines skipped. ``text`` is the tokens joined by single spaces.
- ``conll-chars``: character-level columns, ``<char> <tag>`` or ``<char>\\t<tag>``; ``text`` is the
  characters joined with nothing. A space character is written as ``"  O"`` (space, separator, tag).
- ``weibo``: ``conll-chars`` whose first column is ``<char><position>``, the position of the char
  inside its jieba word (``科0``, ``技1``, ..., ``t10``). All the position digits are split off, not
  just the last one, because positions reach two digits (``t10`` is ``t``, ``110`` is ``1``).
- ``jsonl``: the project's own format, JSON lines ``{"text": str, "spans": [{"start", "end",
  "label"}]}`` with half-open offsets; written by ``write_jsonl``. A record without ``spans`` has
  no entities.
- Annotation-tool formats, each in its own module (read and written there): ``brat`` (a directory
  of ``.txt``/``.ann`` pairs, ``gpner.data.brat``), ``doccano`` (JSONL ``{"text", "label":
  [[start, end, type]]}``, ``gpner.data.doccano``) and ``label-studio`` (JSON tasks,
  ``gpner.data.labelstudio``). Offset conventions: ``gpner.data.offsets``.

The JSON readers accept both layouts (JSON lines or one JSON array).

Tag schemes for the column formats (``scheme=``): ``IOB1``, ``IOB2`` (alias ``BIO``), ``BIOES``
(aliases ``IOBES``, ``BILOU``: L=E, U=S) and ``BMES``. See ``detect_scheme`` for the rules used when
``scheme=None``.

Errors: with ``strict=True`` any bad item raises ``ReadError`` naming the file, the 1-based line and
the reason. With ``strict=False`` the bad item (a JSON line or array element, a column sentence) is
skipped, and one ``ReadWarning`` at the end gives the count (``.skipped``) and the first reasons
(``gpner.data.report.collect_read_report`` adds them up for a run's log). Problems that leave no
item to skip (undecodable bytes, broken JSON array syntax, an undetectable format or scheme) raise
in both modes.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpner.data.paths import not_found, resolve
from gpner.data.spans import Example, Span, SpanError, checked_span
from gpner.data.tagging import (
    SCHEMES,
    TagError,
    decode,
    detect_scheme,
    detect_scheme_parsed,
    normalize_scheme,
    parse_tag,
    spans_to_tags,
    tags_to_spans,
)
from gpner.registry import Registry

__all__ = [
    "FORMATS",
    "READERS",
    "Reader",
    "SCHEMES",
    "ReadError",
    "ReadWarning",
    "convert",
    "detect_format",
    "detect_scheme",
    "read",
    "spans_to_tags",
    "tags_to_spans",
    "write_jsonl",
]

# Which key marks which JSON format, for detection (a list under "label" is doccano's).
_JSON_KEYS = {"spans": "jsonl", "entities": "cmeee", "label": "cluener", "data": "label-studio"}
# How much of a file format detection looks at.
_DETECT_LINES = 1000
_MAX_REASONS = 5


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


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def read(
    path: str | os.PathLike[str],
    format: str | None = None,
    scheme: str | None = None,
    strict: bool = True,
) -> list[Example]:
    """Read a data file into examples.

    Args:
        path: file to read; relative paths that do not exist are taken under ``data_root()``.
        format: a name in ``READERS`` (case-insensitive, aliases too), or ``None`` to detect it
            (``detect_format``).
        scheme: tag scheme for column formats (one of ``SCHEMES`` or an alias), ``None`` to detect
            it (``detect_scheme``). When the detected IOB1 rests on a few stray ``I-`` tags in
            otherwise IOB2 data (Weibo), a ``ReadWarning`` lists their lines. Passing a scheme for
            a JSON format is a ``ValueError``.
        strict: raise ``ReadError`` on the first bad item (``True``), or skip bad items and warn
            once with a summary (``False``).

    Returns:
        One ``Example`` per sentence/record, in file order, each with its spans sorted and exact
        duplicates ``(start, end, label)`` removed (a mention listed twice at the same offsets is
        one entity; the same offsets with two labels are two).
    """
    p = resolve(path)
    fmt = READERS.canonical(format) if format is not None else None
    if fmt is None and _is_brat_path(p):
        fmt = "brat"
    text = None
    if fmt is None or not READERS[fmt].directory:
        text = _load_text(p)
        fmt = fmt or _detect_format_text(text, p)
    reader = READERS[fmt]
    if not reader.columns:
        _no_scheme(scheme, fmt)
    return reader.load(p, text, normalize_scheme(scheme), strict)


def _no_scheme(scheme: str | None, fmt: str) -> None:
    if scheme is not None:
        raise ValueError(f"scheme={scheme!r} only applies to column formats, not {fmt!r}")


def _is_brat_path(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".ann"


def write_jsonl(examples: Iterable[Example], path: str | os.PathLike[str]) -> int:
    """Write examples as the project's JSON lines format; returns the number written.

    Each line is ``{"text": str, "spans": [{"start": int, "end": int, "label": str}, ...]}`` with
    half-open offsets and spans in sorted order; non-ASCII text is written as is (UTF-8).
    """
    from gpner.data.writers import write

    return write(examples, path, "jsonl")


def convert(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    from_format: str | None = None,
    scheme: str | None = None,
    strict: bool = True,
    to_format: str = "jsonl",
) -> int:
    """Read ``in_path`` (``read(in_path, from_format, scheme, strict)``) and write it in
    ``to_format`` (one of ``gpner.data.writers.WRITE_FORMATS``).

    Returns the number of examples written. This is what ``gpner convert IN OUT [--from FMT]
    [--to FMT] [--scheme S] [--lenient]`` runs.
    """
    from gpner.data.writers import write

    examples = read(in_path, format=from_format, scheme=scheme, strict=strict)
    return write(examples, out_path, to_format)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a file's format from its content (the file name is not used).

    Rules, in order:

    1. Content starting with ``[`` or ``{`` that parses as JSON records: the first record with a
       key ``spans`` decides ``jsonl``, ``entities`` ``cmeee``, ``label`` ``cluener`` (within the
       first 1000 records; a record with two of these keys is an error). Records with only
       ``text`` carry no entities, so a file of those is ``jsonl``, which reads them the same as
       the other JSON formats would.
    2. Otherwise column data (the first 1000 non-blank, non ``-DOCSTART-`` lines, each needing a
       token and a tag): every token one character -> ``conll-chars``; every token a character plus
       position digits (``科0``, ``技1``; at least 90% single characters once the digits are
       off) -> ``weibo``; else ``conll``. A word-level file whose first 1000 tokens are all single
       characters is taken for ``conll-chars``: pass ``format="conll"`` for it.

    A directory (or a ``.ann`` file) is ``brat``. JSON records whose ``label`` is a list are
    ``doccano``, records with a ``data`` object are ``label-studio`` tasks.

    Raises ``ReadError`` when none of these fits (empty file, one-column lines, last column not a
    tag, ...); pass ``format=`` explicitly then.
    """
    p = resolve(path)
    if _is_brat_path(p):
        return "brat"
    return _detect_format_text(_load_text(p), p)


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A record-level problem; ``entity`` is the index of the offending entity, if any."""

    def __init__(self, reason: str, entity: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entity = entity


class _Problems:
    """Raises at the first bad item (strict) or collects them for one summary warning."""

    def __init__(self, path: Path, strict: bool, unit: str) -> None:
        self.path = path
        self.strict = strict
        self.unit = unit
        self.items: list[tuple[int | None, str]] = []

    def bad(self, line: int | None, reason: str, path: Path | None = None) -> None:
        """A bad item at ``line`` of ``path`` (default: the path being read)."""
        if self.strict:
            raise ReadError(path or self.path, line, reason)
        self.items.append((line, reason, path))

    def finish(self) -> None:
        if not self.items:
            return
        items = sorted(self.items, key=lambda item: (str(item[2] or ""), item[0] or 0))
        first = "; ".join(
            f"{p.name + ':' if p else 'line '}{ln}: {why}" for ln, why, p in items[:_MAX_REASONS]
        )
        more = " ..." if len(self.items) > _MAX_REASONS else ""
        warnings.warn(
            ReadWarning(
                f"{self.path}: skipped {len(self.items)} bad {self.unit}(s) (strict=False); "
                f"first: {first}{more}",
                path=self.path,
                skipped=len(self.items),
            ),
            stacklevel=4,
        )


def _load_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such data file: {not_found(path)}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ReadError(path, line, f"not valid UTF-8 (byte {e.start}: {e.reason})") from None


def _finish(text: str, spans: list[Span]) -> Example:
    return Example(text, sorted(set(spans)))


# --------------------------------------------------------------------------------------------
# JSON formats
# --------------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


def _json_records(
    text: str, path: Path, problems: _Problems | None
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


def _entity_line(text: str, where: tuple[int, int], line: int, key: str, k: int) -> int:
    """The line of the ``k``-th ``"key"`` inside a record's source, or the record's line."""
    begin, end = where
    needle = f'"{key}"'
    pos = begin
    for _ in range(k + 1):
        pos = text.find(needle, pos, end)
        if pos < 0:
            return line
        pos += len(needle)
    return line + text.count("\n", begin, pos)


def _text_of(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise _Bad('missing or non-string "text"')
    return text


def _cluener_record(obj: Any) -> Example:
    text = _text_of(obj)
    label = obj.get("label")
    if label is None:
        return Example(text, [])
    if not isinstance(label, dict):
        raise _Bad('"label" must be an object {type: {mention: [[start, end], ...]}}')
    spans = []
    for typ, mentions in label.items():
        if not typ:
            raise _Bad("empty entity type")
        if not isinstance(mentions, dict):
            raise _Bad(f"label {typ!r} must map mentions to [[start, end], ...]")
        for mention, offsets in mentions.items():
            if not isinstance(offsets, list):
                raise _Bad(f"{typ} {mention!r}: offsets must be a list of [start, end]")
            for pair in offsets:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise _Bad(f"{typ} {mention!r}: offsets {pair!r} are not [start, end]")
                spans.append(
                    _checked(text, *pair, typ, f"{mention!r}", mention, inclusive_end=True)
                )
    return _finish(text, spans)


def _cmeee_record(obj: Any) -> Example:
    text = _text_of(obj)
    entities = obj.get("entities")
    if entities is None:
        return Example(text, [])
    if not isinstance(entities, list):
        raise _Bad('"entities" must be a list')
    spans = []
    for k, ent in enumerate(entities):
        if not isinstance(ent, dict):
            raise _Bad(f"entity {k} is not an object", k)
        s, e, typ, mention = (ent.get(x) for x in ("start_idx", "end_idx", "type", "entity"))
        spans.append(_checked(text, s, e, typ, f"entity {k}", mention, k, inclusive_end=True))
    return _finish(text, spans)


def _jsonl_record(obj: Any) -> Example:
    text = _text_of(obj)
    raw = obj.get("spans")
    if raw is None:
        return Example(text, [])
    if not isinstance(raw, list):
        raise _Bad('"spans" must be a list')
    spans = []
    for k, sp in enumerate(raw):
        if not isinstance(sp, dict):
            raise _Bad(f"span {k} is not an object", k)
        s, e, label, mention = (sp.get(x) for x in ("start", "end", "label", "mention"))
        spans.append(_checked(text, s, e, label, f"span {k}", mention, k))
    return _finish(text, spans)


def _checked(text, start, end, label, who, mention, entity=None, **options) -> Span:
    """:func:`gpner.data.spans.checked_span`, its error as this record's ``_Bad``."""
    try:
        return checked_span(text, start, end, label, who, mention=mention, **options)
    except SpanError as error:
        raise _Bad(str(error), entity) from None


_JSON_READERS = {"cluener": _cluener_record, "cmeee": _cmeee_record, "jsonl": _jsonl_record}
# The key each record's entity list lives under: used to find an entity's line for errors.
_ENTITY_KEY = {"cmeee": "start_idx", "jsonl": "start"}


def _read_json(text: str, path: Path, fmt: str, strict: bool) -> list[Example]:
    problems = _Problems(path, strict, "record")
    convert_record = _JSON_READERS[fmt]
    examples = []
    for line, obj, where in _json_records(text, path, problems):
        try:
            examples.append(convert_record(obj))
        except _Bad as e:
            at = line
            if e.entity is not None and fmt in _ENTITY_KEY:
                at = _entity_line(text, where, line, _ENTITY_KEY[fmt], e.entity)
            problems.bad(at, e.reason)
    problems.finish()
    return examples


# --------------------------------------------------------------------------------------------
# Column formats
# --------------------------------------------------------------------------------------------


def _char_columns(line: str) -> tuple[str, str]:
    """``(token, tag)`` of a character-column line; ``("", "")`` when malformed.

    Tab-separated lines split at the first tab. Space-separated lines split at the first space
    after the first character, so a space character itself can be a token (``"  O"``).
    """
    if "\t" in line:
        token, _, rest = line.partition("\t")
    else:
        cut = line.find(" ", 1)
        if cut < 0:
            return "", ""
        token, rest = line[:cut], line[cut + 1 :]
    fields = rest.split()
    return (token, fields[-1]) if token and fields else ("", "")


def _split_weibo_token(token: str) -> str | None:
    """The character of a ``<char><position>`` token, or ``None`` if it has no position digits.

    Positions reach two digits and characters can be digits, so the split is: first character plus
    an all-digit rest (``"t10"`` -> ``"t"``, ``"110"`` -> ``"1"``); failing that, everything before
    the trailing digits (the data has ``"\ufffd\ufffd0"``, two replacement characters). The
    positions are not checked against each other: the data breaks their 0, 1, 2, ... order.
    """
    if len(token) >= 2 and token[1:].isdecimal():
        return token[0]
    char = token.rstrip("0123456789")
    return char if char and len(char) < len(token) else None


class _Sentence:
    __slots__ = ("tokens", "tags", "lines", "error")

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.lines: list[int] = []
        self.error: tuple[int, str] | None = None


def _column_sentences(text: str, fmt: str, limit: int | None = None) -> list[_Sentence]:
    """Split column text into sentences; malformed lines mark their sentence's ``error``.

    ``limit`` stops after that many token lines (format detection).
    """
    sentences: list[_Sentence] = []
    cur = _Sentence()
    seen = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip() or line.startswith("-DOCSTART-"):
            if cur.tokens or cur.error:
                sentences.append(cur)
                cur = _Sentence()
            continue
        if limit is not None:
            seen += 1
            if seen > limit:
                break
        if cur.error:
            continue
        if fmt == "conll":
            # Tabs, when present, are the only separator: a tab-separated token may hold spaces.
            fields = [f for f in line.split("\t") if f.strip()] if "\t" in line else line.split()
            if len(fields) < 2:
                cur.error = (lineno, f"expected a token and a tag, got {line!r}")
                continue
            token, tag = fields[0].strip(), fields[-1].strip()
        else:
            token, tag = _char_columns(line)
            if not token:
                cur.error = (lineno, f"expected a character and a tag, got {line!r}")
                continue
            if fmt == "weibo":
                char = _split_weibo_token(token)
                if char is None:
                    cur.error = (lineno, f"weibo token {token!r} is not <char><position digits>")
                    continue
                token = char
        cur.tokens.append(token)
        cur.tags.append(tag)
        cur.lines.append(lineno)
    if cur.tokens or cur.error:
        sentences.append(cur)
    return sentences


def _read_columns(
    text: str, path: Path, fmt: str, scheme: str | None, strict: bool
) -> list[Example]:
    problems = _Problems(path, strict, "sentence")
    sentences = _column_sentences(text, fmt)
    cache: dict[str, tuple[str, str]] = {}
    parsed = [_sentence_tags(sent, cache) for sent in sentences]

    if scheme is None:
        good = [k for k, tags in enumerate(parsed) if tags is not None]
        try:
            scheme, orphans = detect_scheme_parsed([parsed[k] for k in good])
        except ValueError as e:
            raise ReadError(path, None, f"{e}; pass scheme= explicitly") from None
        if orphans:
            lines = [sentences[good[s]].lines[i] for s, i in orphans]
            _warn_orphans(path, lines)

    # One pass in file order, so that strict mode stops at the first bad line.
    joiner = " " if fmt == "conll" else ""
    examples = []
    for sent, tags in zip(sentences, parsed):
        if tags is None:
            problems.bad(*sent.error)
            continue
        try:
            chunks = decode(tags, scheme, drop=False)
        except TagError as e:
            problems.bad(sent.lines[e.index], f"{e.reason} ({scheme})")
            continue
        examples.append(_column_example(sent.tokens, chunks, joiner))
    problems.finish()
    return examples


def _sentence_tags(
    sent: _Sentence, cache: dict[str, tuple[str, str]]
) -> list[tuple[str, str]] | None:
    """The sentence's parsed tags, or ``None`` with ``sent.error`` set."""
    if sent.error:
        return None
    tags = []
    for tag, line in zip(sent.tags, sent.lines):
        pt = cache.get(tag)
        if pt is None:
            try:
                pt = cache[tag] = parse_tag(tag)
            except TagError as e:
                sent.error = (line, e.reason)
                return None
        tags.append(pt)
    return tags


def _column_example(tokens: list[str], chunks: list[tuple[int, int, str]], joiner: str) -> Example:
    starts = []
    pos = 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok) + len(joiner)
    spans = [Span(starts[s], starts[e - 1] + len(tokens[e - 1]), label) for s, e, label in chunks]
    return Example(joiner.join(tokens), sorted(set(spans)))


def _warn_orphans(path: Path, lines: list[int]) -> None:
    shown = ", ".join(map(str, lines[:_MAX_REASONS]))
    more = " ..." if len(lines) > _MAX_REASONS else ""
    warnings.warn(
        f"{path}: tags look like IOB2 (BIO) but {len(lines)} I- tag(s) begin an entity "
        f"(lines {shown}{more}); read as IOB1, where such an I- begins an entity. "
        "Pass scheme='IOB1' to accept this quietly or scheme='IOB2' to reject those sentences.",
        ReadWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"^(O|[BIESLUM]-.+)$")


def _detect_format_text(text: str, path: Path) -> str:
    head = text.lstrip()
    if not head:
        raise ReadError(path, None, "empty file: cannot detect its format; pass format=")
    json_error = None
    if head[0] in "[{":
        try:
            fmt = _detect_json(text, path)
        except ReadError as e:
            fmt, json_error = None, e
        if fmt is not None:
            return fmt
    try:
        return _detect_columns(text, path)
    except ReadError:
        # Content that opens like JSON and is not columns either was meant as JSON.
        if json_error is not None:
            raise json_error from None
        raise


def _detect_json(text: str, path: Path) -> str | None:
    """The JSON format by record keys; ``None`` if no record parses (not JSON records at all)."""
    n = 0
    for line, obj, _ in _json_records(text, path, None):
        if not isinstance(obj, dict):
            raise ReadError(path, line, f"JSON record is a {type(obj).__name__}, not an object")
        hits = {
            "doccano" if key == "label" and isinstance(obj[key], list) else fmt
            for key, fmt in _JSON_KEYS.items()
            if key in obj
        }
        if len(hits) > 1:
            raise ReadError(
                path, line, f"JSON record has keys of several formats ({', '.join(sorted(hits))})"
            )
        n += 1
        if hits:
            return hits.pop()
        if n >= _DETECT_LINES:
            break
    return "jsonl" if n else None


def _detect_columns(text: str, path: Path) -> str:
    # Character-column parsing also reads word columns (the token is the first field), and unlike
    # whitespace splitting it keeps a space character as a token.
    sentences = _column_sentences(text, "conll-chars", limit=_DETECT_LINES)
    for sent in sentences:
        if sent.error:
            raise ReadError(
                path, sent.error[0], f"cannot detect the format: {sent.error[1]}; pass format="
            )
        for tag, line in zip(sent.tags, sent.lines):
            if not _TAG_RE.match(tag):
                raise ReadError(
                    path,
                    line,
                    f"cannot detect the format: last column {tag!r} is not a tag; pass format=",
                )
    tokens = [t for s in sentences for t in s.tokens]
    if not tokens:
        raise ReadError(path, None, "no data lines: cannot detect the format; pass format=")
    if all(len(t) == 1 for t in tokens):
        return "conll-chars"
    weibo = _column_sentences(text, "weibo", limit=_DETECT_LINES)
    if not any(s.error for s in weibo):
        chars = [t for s in weibo for t in s.tokens]
        # Word tokens can end in digits too ("1996-08-22"); weibo's become single characters.
        if sum(len(c) == 1 for c in chars) >= 0.9 * len(chars):
            return "weibo"
    return "conll"


# --------------------------------------------------------------------------------------------
# The registry of formats
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """How one format is read: ``load(path, text, scheme, strict) -> examples``.

    ``text`` is the file's decoded content (None for a ``directory`` format, which reads
    ``path`` itself); ``scheme`` is the canonical tag scheme or None, and only ``columns``
    formats accept one. ``load`` may name ``"module:function"`` taking ``(text, path, strict)``
    (``(path, strict=...)`` for a directory format), imported on first use.
    """

    load_target: Callable[..., list[Example]] | str
    columns: bool = False
    directory: bool = False

    def load(self, path: Path, text: str | None, scheme: str | None, strict: bool):
        target = self.load_target
        if isinstance(target, str):
            module, _, name = target.partition(":")
            target = getattr(importlib.import_module(module), name)
            if self.directory:
                return target(path, strict=strict)
            return target(text, path, strict)
        return target(path, text, scheme, strict)


def _json_reader(fmt: str) -> Reader:
    return Reader(lambda path, text, scheme, strict: _read_json(text, path, fmt, strict))


def _column_reader(fmt: str) -> Reader:
    return Reader(
        lambda path, text, scheme, strict: _read_columns(text, path, fmt, scheme, strict),
        columns=True,
    )


# Formats by name (case-insensitive, with aliases). Other modules may register more; detection
# (``detect_format``) knows the ones below.
READERS: Registry[Reader] = Registry("format", normalize=str.lower)
READERS.register("cluener", _json_reader("cluener"), help="CLUENER JSON lines")
READERS.register("cmeee", _json_reader("cmeee"), help="CMeEE JSON", aliases=("cmeee-v2",))
READERS.register(
    "conll", _column_reader("conll"), help="word and tag columns", aliases=("conll2003",)
)
READERS.register(
    "conll-chars",
    _column_reader("conll-chars"),
    help="character and tag columns",
    aliases=("chars", "people_daily", "people-daily"),
)
READERS.register("weibo", _column_reader("weibo"), help="Weibo NER character columns")
READERS.register("jsonl", _json_reader("jsonl"), help="gpner's JSON lines")
READERS.register(
    "brat", Reader("gpner.data.brat:read_brat", directory=True), help="brat .ann/.txt directory"
)
READERS.register("doccano", Reader("gpner.data.doccano:read_doccano_text"), help="doccano JSONL")
READERS.register(
    "label-studio",
    Reader("gpner.data.labelstudio:read_label_studio_text"),
    help="Label Studio JSON export",
    aliases=("labelstudio", "label_studio"),
)
FORMATS = READERS  # the names of the registered formats (iterable, supports ``in``)
