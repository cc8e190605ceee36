"""brat standoff: a directory of ``NAME.txt`` + ``NAME.ann`` pairs, one document each.

Reading (``read(path, format="brat")``; a directory or a ``.ann`` file is detected as brat):

- Every ``.txt`` under the directory (recursively; natural order of the relative paths, so
  ``2.txt`` comes before ``10.txt``) is one ``Example``. Its text is the file's content exactly:
  UTF-8 with no newline translation, so ``\\r`` counts as a character, as it does for brat.
- Text-bound annotations ``T<n>\\t<TYPE> <start> <end>\\t<mention>`` become spans. Offsets are code
  points, end-exclusive, into the ``.txt`` (brat's convention, the same as gpner's). Overlapping
  and nested entities are kept as they are. The mention must match the text at the offsets
  (whitespace runs compared as one space, as brat writes line breaks inside a mention as spaces).
- A discontinuous entity (``T1\\tORG 0 5;9 14\\t...``) has no contiguous span: with
  ``strict=True`` it is a ``ReadError`` naming the ``.ann`` file and line; with ``strict=False`` it
  is skipped and counted in the ``ReadWarning`` (``.skipped``). Other bad lines likewise.
- Attributes (``A``, ``M``), relations (``R``, ``*``), events (``E``), normalizations (``N``) and
  notes (``#``) are ignored, and counted by kind in one ``ReadWarning`` (``.ignored``). An event's
  trigger is a ``T`` line and is read as an entity of the trigger's type.
- A ``.txt`` without a ``.ann`` is a document without entities; a ``.ann`` without its ``.txt``
  is an error in both modes.

Writing (``BratWriter``): documents ``000001.txt``/``000001.ann``, ... (numbered from 1 in the
order written) and an ``annotation.conf`` declaring the entity types and allowing any overlap
(``<OVERLAP>``), so brat displays nested entities. brat's
standoff has no field for a confidence score, so predictions are written as plain entities
(pre-annotations) without their scores; use ``label-studio`` to keep scores. Labels cannot contain
whitespace (brat's type names cannot).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from gpner.atomic import atomic_write
from gpner.data.records import Problems, ReadError, load_text
from gpner.data.report import warn_ignored
from gpner.data.spans import Example, Span, SpanError, checked_span, same_words

__all__ = ["BratWriter", "read_brat"]

_IGNORED_KINDS = {
    "A": "attributes",
    "M": "attributes",
    "R": "relations",
    "*": "relations",
    "E": "events",
    "N": "normalizations",
    "#": "notes",
}
_OFFSETS = re.compile(r"^\d+ \d+(;\d+ \d+)*$")
_NUMBER = re.compile(r"(\d+)")
_DOC = re.compile(r"^(\d+)\.(txt|ann)$")


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in _NUMBER.split(path.as_posix())]


def _documents(path: Path) -> list[tuple[Path, Path]]:
    """``(txt, ann)`` pairs in natural order; ``ann`` may not exist."""
    if not path.exists():
        raise FileNotFoundError(f"no such brat directory or file: {path}")
    if path.is_file():
        if path.suffix not in (".txt", ".ann"):
            raise ReadError(path, None, "a brat document is a .txt file with a .ann beside it")
        txt, ann = path.with_suffix(".txt"), path.with_suffix(".ann")
        if not txt.is_file():
            raise ReadError(ann, None, f"no text file {txt.name} beside this .ann file")
        return [(txt, ann)]
    texts = {p.with_suffix("") for p in path.rglob("*.txt") if p.is_file()}
    for ann in sorted(path.rglob("*.ann"), key=_natural_key):
        if ann.with_suffix("") not in texts:
            raise ReadError(ann, None, f"no text file {ann.with_suffix('.txt').name} beside it")
    stems = sorted(texts, key=lambda p: _natural_key(p.relative_to(path)))
    return [(stem.with_suffix(".txt"), stem.with_suffix(".ann")) for stem in stems]


def _text_bound(
    line: str, text: str, problems: Problems, ann: Path, lineno: int, seen: set[str]
) -> Span | None:
    fields = line.split("\t")
    ident = fields[0]
    if len(fields) < 2 or " " not in fields[1]:
        problems.bad(lineno, f"{ident}: expected 'ID<TAB>TYPE START END<TAB>TEXT'", ann)
        return None
    label, _, offsets = fields[1].partition(" ")
    if ident in seen:
        problems.bad(lineno, f"{ident}: duplicate annotation id", ann)
        return None
    seen.add(ident)
    if not _OFFSETS.match(offsets):
        problems.bad(lineno, f"{ident} ({label}): offsets {offsets!r} are not 'START END'", ann)
        return None
    if ";" in offsets:
        problems.bad(
            lineno,
            f"{ident} ({label}): discontinuous entity (fragments {offsets}); gpner spans are "
            "contiguous, pass strict=False to skip such entities",
            ann,
        )
        return None
    start, end = map(int, offsets.split())
    mention = fields[2] if len(fields) > 2 else None
    try:
        return checked_span(text, start, end, label, ident, mention=mention, same=same_words)
    except SpanError as error:
        problems.bad(lineno, str(error), ann)
        return None


def read_brat(path: str | os.PathLike[str], strict: bool = True) -> list[Example]:
    """Read a brat directory (or one ``.txt``/``.ann`` document) into examples, one per document.

    See the module docstring for what is read, skipped (``strict=False``) and ignored.
    """
    root = Path(path)
    problems = Problems(root, strict, "entity")
    ignored: Counter[str] = Counter()
    examples = []
    for txt, ann in _documents(root):
        text = load_text(txt, keep_bom=True)
        spans: list[Span] = []
        if ann.is_file():
            seen: set[str] = set()
            for lineno, line in enumerate(load_text(ann, keep_bom=True).split("\n"), 1):
                line = line.rstrip("\r")
                if not line.strip():
                    continue
                kind = line[0]
                if kind == "T":
                    span = _text_bound(line, text, problems, ann, lineno, seen)
                    if span is not None:
                        spans.append(span)
                elif kind in _IGNORED_KINDS:
                    ignored[_IGNORED_KINDS[kind]] += 1
                else:
                    problems.bad(lineno, f"unknown annotation kind {line.split()[0]!r}", ann)
        examples.append(Example(text, sorted(set(spans))))
    problems.finish()
    warn_ignored(root, ignored, "gpner reads entities only")
    return examples


class BratWriter:
    """Writes documents into a brat directory, one ``.txt``/``.ann`` pair each.

    ``append=True`` continues a directory an earlier (possibly killed) run wrote: a document
    counts as written once its ``.ann`` exists (the ``.ann`` is renamed into place after its
    ``.txt``), so ``done`` is the number of complete documents and a torn last one is redone.
    Without ``append`` the directory must hold no numbered documents yet.
    """

    def __init__(
        self, path: str | os.PathLike[str], labels: Iterable[str] = (), append: bool = False
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file; brat output is a directory (-o DIR)")
        self.path.mkdir(parents=True, exist_ok=True)
        numbers = {}
        for p in self.path.iterdir():
            m = _DOC.match(p.name)
            if m:
                numbers.setdefault(int(m[1]), set()).add(m[2])
        if numbers and not append:
            raise ValueError(
                f"{self.path} already holds brat documents; write into an empty directory "
                "(or resume into it)"
            )
        done = 0
        while "ann" in numbers.get(done + 1, ()):
            done += 1
        torn = self._txt(done + 1)
        if torn.exists():
            torn.unlink()
        if any(n > done + 1 for n in numbers):
            raise ValueError(
                f"{self.path}: documents after {done + 1:06d} exist but {done + 1:06d} is "
                "incomplete; this is not a directory written in order by gpner"
            )
        self.done = done
        self.last_text = load_text(self._txt(done), keep_bom=True) if done else None
        self._labels = set(labels) | self._conf_labels()
        self._next = done + 1

    def _txt(self, n: int) -> Path:
        return self.path / f"{n:06d}.txt"

    def _conf_labels(self) -> set[str]:
        conf = self.path / "annotation.conf"
        if not conf.is_file():
            return set()
        lines = conf.read_text(encoding="utf-8").splitlines()
        try:
            begin = lines.index("[entities]") + 1
        except ValueError:
            return set()
        labels = set()
        for line in lines[begin:]:
            if line.startswith("["):
                break
            if line.strip() and not line.startswith("#"):
                labels.add(line.strip())
        return labels

    def write(
        self, text: str, spans: Sequence[Span], scores: Sequence[float] | None = None
    ) -> None:
        """Write one document (``scores`` are accepted and dropped: brat has no place for them)."""
        lines = []
        for k, span in enumerate(spans, 1):
            if not span.label or any(ch.isspace() for ch in span.label):
                raise ValueError(f"label {span.label!r}: brat entity types cannot hold whitespace")
            mention = " ".join(text[span.start : span.end].split("\n"))
            lines.append(f"T{k}\t{span.label} {span.start} {span.end}\t{mention}\n")
            self._labels.add(span.label)
        txt = self._txt(self._next)
        with open(txt, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        ann = txt.with_suffix(".ann")
        with atomic_write(ann, "w", encoding="utf-8", newline="") as f:
            f.writelines(lines)
        self._next += 1

    def flush(self) -> None:
        """Each document is complete on disk once written."""

    def close(self) -> None:
        conf = ["# Entity types written by gpner.", "[entities]", *sorted(self._labels), ""]
        # gpner's entities nest and overlap; brat rejects overlaps unless declared.
        conf += ["[relations]", "<OVERLAP>\tArg1:<ENTITY>, Arg2:<ENTITY>, <OVL-TYPE>:<ANY>", ""]
        conf += ["[events]", "", "[attributes]", ""]
        with atomic_write(self.path / "annotation.conf", "w", encoding="utf-8") as f:
            f.write("\n".join(conf))

    def __enter__(self) -> BratWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
