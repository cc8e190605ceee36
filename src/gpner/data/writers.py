"""Writers: examples (gold spans) or predictions (spans with scores) out, one record at a time.

Formats (``WRITE_FORMATS``): ``jsonl`` (gpner's own), ``brat``, ``doccano`` and ``label-studio``;
what each keeps of a prediction's scores is said in its module. ``write`` writes a list of
examples; ``open_writer`` returns a writer for streams, which a killed run can continue
(``append=True``): it keeps the complete records already in the output, drops a torn last one and
says how many there are (``done``) and the text of the last (``last_text``), so that the caller can
check it continues the same input.

Every record is one line (a JSON array is written one element per line, the commas leading), so
a record is complete on disk once its newline is.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from gpner.data.spans import Example, Span

__all__ = ["WRITE_FORMATS", "open_writer", "prediction_record", "probability", "write"]

WRITE_FORMATS = ("jsonl", "brat", "doccano", "label-studio")


def probability(score: float) -> float:
    """σ(score): the span's probability when its logit is read as a binary classifier's."""
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    z = math.exp(score)
    return z / (1.0 + z)


def _jsonl_record(text: str, spans: Sequence[Span], scores: Sequence[float] | None) -> dict:
    if scores is None:
        items = [{"start": s.start, "end": s.end, "label": s.label} for s in spans]
    else:
        items = [
            {
                "start": s.start,
                "end": s.end,
                "label": s.label,
                "text": text[s.start : s.end],
                "score": round(score, 4),
                "probability": round(probability(score), 4),
            }
            for s, score in zip(spans, scores)
        ]
    return {"text": text, "spans": items}


def prediction_record(text: str, spans: Sequence[tuple[Span, float]]) -> dict:
    """One text's ``(Span, score)`` predictions as the jsonl record ``gpner predict`` writes (and
    ``gpner serve`` answers): text, and per span offsets, label, mention, score, probability."""
    return _jsonl_record(text, [span for span, _ in spans], [score for _, score in spans])


class _LineRecordWriter:
    """JSON records, one per line: JSON lines, or (``array``) a JSON array ``[`` / ``{..}`` /
    ``,{..}`` / ``]``, each element on its own line."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        encode: Callable[[str, Sequence[Span], Sequence[float] | None], dict],
        text_of: Callable[[Any], str],
        array: bool,
        append: bool,
    ) -> None:
        self.encode = encode
        self.array = array
        self.done = 0
        self.last_text: str | None = None
        self._had_header = False  # a resumed array already has its "[" line
        self._own = path is not None
        if path is None:
            if append:
                raise ValueError("resuming needs an output file, not standard output")
            self.file: TextIO = sys.stdout
        else:
            path = Path(path)
            if append and path.is_file():
                self._scan(path, text_of)
            elif path.is_dir():
                raise ValueError(f"{path} is a directory; this format writes a file")
            # Held open across write() calls and closed by close(): a streaming writer.
            self.file = open(path, "a" if append else "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        if array and not self._had_header:
            self.file.write("[\n")

    def _scan(self, path: Path, text_of: Callable[[Any], str]) -> None:
        """Count complete records, cut a torn last line (and a closing ``]``) off the file."""
        good_end = pos = 0
        last = None
        with open(path, "rb") as f:
            if self.array:
                head = f.readline()
                if head in (b"", b"["):  # nothing or a torn header: start over
                    os.truncate(path, 0)
                    return
                if head != b"[\n":
                    raise ValueError(f"{path}: not a JSON array written by gpner (no '[' line)")
                good_end = pos = len(head)
                self._had_header = True
            for lineno, raw in enumerate(f, 2 if self.array else 1):
                if not raw.endswith(b"\n"):
                    break  # torn by a kill: dropped
                body = raw[:-1]
                if self.array and body == b"]":
                    break  # a finished array reopens
                if self.array and self.done:
                    body = body[1:] if body.startswith(b",") else b""
                try:
                    last = json.loads(body)
                    self.last_text = text_of(last)
                except (ValueError, KeyError, TypeError):
                    raise ValueError(
                        f"{path}:{lineno}: not a record written by gpner; cannot resume it"
                    ) from None
                self.done += 1
                pos += len(raw)
                good_end = pos
        os.truncate(path, good_end)

    def write(
        self, text: str, spans: Sequence[Span], scores: Sequence[float] | None = None
    ) -> None:
        record = json.dumps(self.encode(text, spans, scores), ensure_ascii=False)
        lead = "," if self.array and self.done else ""
        self.file.write(f"{lead}{record}\n")
        self.done += 1

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if self.array:
            self.file.write("]\n")
        if self._own:
            self.file.close()
        else:
            self.file.flush()

    def __enter__(self) -> _LineRecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_writer(
    path: str | os.PathLike[str] | None,
    format: str = "jsonl",
    *,
    labels: Iterable[str] = (),
    append: bool = False,
    **options: Any,
):
    """A writer of ``format`` on ``path`` (``None`` or ``"-"``: standard output; brat needs a
    directory). It has ``write(text, spans, scores=None)`` (``scores``: raw logits, one per span,
    for predictions), ``flush()``, ``close()``, ``done`` and ``last_text``; it is a context manager.

    ``labels`` are declared up front where the format has a place for them (brat's
    ``annotation.conf``). ``options``: ``offsets`` for doccano; ``model_version``, ``from_name``,
    ``to_name`` for label-studio.
    """
    if format not in WRITE_FORMATS:
        raise ValueError(f"cannot write format {format!r}; expected one of {WRITE_FORMATS}")
    target = None if path in (None, "-") else Path(path)
    if format == "brat":
        from gpner.data.brat import BratWriter

        if target is None:
            raise ValueError("brat output is a directory of .txt/.ann files: pass -o DIR")
        return BratWriter(target, labels=labels, append=append, **options)
    if format == "doccano":
        from gpner.data.doccano import doccano_record

        offsets = options.pop("offsets", "utf16")
        _no_options(format, options)

        def encode(text, spans, scores):
            return doccano_record(text, spans, offsets)

        return _LineRecordWriter(target, encode, lambda r: r["text"], False, append)
    if format == "label-studio":
        from gpner.data.labelstudio import label_studio_task

        def encode(text, spans, scores):
            probs = None if scores is None else [round(probability(s), 4) for s in scores]
            return label_studio_task(text, spans, probs, **options)

        return _LineRecordWriter(target, encode, lambda r: r["data"]["text"], True, append)
    _no_options(format, options)
    return _LineRecordWriter(target, _jsonl_record, lambda r: r["text"], False, append)


def _no_options(format: str, options: dict) -> None:
    if options:
        raise TypeError(f"format {format!r} takes no options {sorted(options)}")


def write(
    examples: Iterable[Example], path: str | os.PathLike[str], format: str = "jsonl", **options
) -> int:
    """Write gold examples in ``format``; returns the number written. Spans are written sorted."""
    n = 0
    with open_writer(path, format, **options) as writer:
        for ex in examples:
            writer.write(ex.text, sorted(ex.spans))
            n += 1
    return n
