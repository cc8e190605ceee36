"""Streaming prediction: texts in, one output record per text, in memory bounded by the chunk.

``predict_stream`` reads texts lazily, predicts them a chunk at a time with any batch predictor
(the torch model, or another backend with the same ``texts -> [[(Span, score)]]`` shape), writes
each chunk's records and flushes them, so that a killed run keeps every finished chunk. Given a
writer opened with ``append=True`` it skips the inputs whose records are already written, after
checking that the last of them has the same text as the input at that position.

It sits beside the CLI as a thin layer over inference and knows nothing of models.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

from gpner.data.readers import ReadError
from gpner.data.spans import Span

__all__ = ["count_lines", "predict_stream", "progress_bar", "text_lines"]

T = TypeVar("T")
Predictor = Callable[[list[str]], Sequence[Sequence[tuple[Span, float]]]]


def text_lines(stream: BinaryIO | TextIO, name: str = "<stdin>") -> Iterator[str]:
    """The lines of a text stream without their line break (``\\n`` or ``\\r\\n``), empty ones too.

    A binary stream is split at ``\\n`` only (not at the other breaks ``str.splitlines`` knows, so
    line numbers agree with ``wc -l``) and decoded as UTF-8 line by line; a bad byte is a
    ``ReadError`` naming the line.
    """
    for lineno, line in enumerate(stream, 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 (byte {e.start}: {e.reason})"
                raise ReadError(name, lineno, reason) from None
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        yield line


def count_lines(path: str | Path) -> int:
    """The number of lines ``text_lines`` yields for the file (for a progress bar's total)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def predict_stream(
    predict: Predictor,
    texts: Iterable[str],
    writer,
    chunk_size: int = 1024,
    progress=None,
) -> int:
    """Predict ``texts`` and write one record per text to ``writer``; returns the number written.

    ``writer`` is a ``gpner.data.writers.open_writer`` writer; when it already holds ``done``
    records (a resumed run) the first ``done`` texts are skipped, and the last of them must equal
    ``writer.last_text`` (``ValueError`` otherwise: the output belongs to other input).
    ``progress`` is a tqdm-like bar (``update(n)``), or ``None``. Empty texts are not sent to the
    model (they have no spans).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    it = iter(texts)
    done = writer.done
    if done:
        seen, last = 0, None
        for seen, last in enumerate(islice(it, done), 1):  # noqa: B007 (only the last is kept)
            pass
        if seen < done:
            raise ValueError(
                f"the output already holds {done} records but the input has only {seen} "
                "texts; it was written for other input"
            )
        if last != writer.last_text:
            raise ValueError(
                f"the output's record {done} is for the text {writer.last_text!r}, but input "
                f"text {done} is {last!r}; the output was written for other input"
            )
        if progress is not None:
            progress.update(done)
    written = 0
    for chunk in _chunks(it, chunk_size):
        nonempty = [t for t in chunk if t]
        found = iter(predict(nonempty)) if nonempty else iter(())
        for text in chunk:
            scored = next(found) if text else []
            writer.write(text, [s for s, _ in scored], [score for _, score in scored])
        writer.flush()
        written += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    return written


def progress_bar(total: int | None, enabled: bool | None, initial: int = 0):
    """A tqdm bar on stderr counting lines; ``enabled=None`` shows it when stderr is a terminal."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        unit=" lines",
        file=sys.stderr,
        disable=not enabled,
        mininterval=0.5,
        dynamic_ncols=True,
    )
