"""Tag schemes (IOB1, IOB2, BIOES/BILOU, BMES): detection, decoding to spans, encoding.

The codec of the column readers (:mod:`gpner.data.readers`), usable on its own. Spans here are
over *token* positions, half-open. :data:`SCHEMES` registers each scheme's decoder under its
canonical name with its aliases (case-insensitive).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

from gpner.data.spans import Span
from gpner.registry import Registry

__all__ = ["SCHEMES", "TagError", "detect_scheme", "spans_to_tags", "tags_to_spans"]


def detect_scheme(sequences: Iterable[Sequence[str]]) -> str:
    """Guess the tag scheme of tag sequences (one sequence per sentence).

    Rules, by the set of prefixes seen (``O`` ignored):

    - none (all ``O``): ``IOB2`` (every scheme reads it the same).
    - only ``B``/``I``: ``IOB1`` if some ``I-X`` begins an entity (at sentence start, after ``O``
      or after another type), which only IOB1 allows, else ``IOB2``. Both read IOB2-valid data
      identically, so the guess only decides whether such an ``I-X`` is an entity start or an error.
    - ``M`` with only ``B``/``E``/``S``: ``BMES``.
    - ``E``/``S`` or ``L``/``U`` with ``B``/``I``: ``BIOES``.

    Raises ``ValueError`` on a malformed tag or a mix that fits no scheme (``M`` with ``I``, ``E``
    with ``L``).
    """
    parsed = []
    for seq in sequences:
        try:
            parsed.append([parse_tag(t) for t in seq])
        except TagError as e:
            raise ValueError(e.reason) from None
    return detect_scheme_parsed(parsed)[0]


def tags_to_spans(
    tags: Sequence[str], scheme: str | None = "IOB2", invalid: str = "raise"
) -> list[Span]:
    """Decode one tag sequence into spans over token positions.

    Args:
        tags: one tag per token, ``"O"`` or ``"<prefix>-<type>"``.
        scheme: one of ``SCHEMES`` or an alias; ``None`` detects it from this sequence alone.
        invalid: what to do with a sequence the scheme forbids (e.g. ``I-X`` after ``O`` in IOB2,
            ``B-X`` not closed by ``E-X`` in BIOES): ``"raise"`` a ``ValueError`` naming the token
            index, or ``"drop"`` the ill-formed pieces and keep only well-formed entities.
            ``"drop"`` gives the same entities as seqeval's ``mode="strict"`` for IOB2 and
            BIOES/BILOU.
            IOB1 forbids nothing: ``I-X`` after ``O`` or another type begins an entity, and so does
            ``B-X`` anywhere (CoNLL-2003's train file has two ``B-`` tags after ``O``).

    Returns:
        Spans with half-open *token* offsets (``Span(2, 4, "PER")`` covers tokens 2 and 3), in
        order.
    """
    if invalid not in ("raise", "drop"):
        raise ValueError(f"invalid must be 'raise' or 'drop', got {invalid!r}")
    try:
        parsed = [parse_tag(t) for t in tags]
    except TagError as e:
        raise ValueError(e.reason) from None
    name = detect_scheme_parsed([parsed])[0] if scheme is None else normalize_scheme(scheme)
    try:
        chunks = decode(parsed, name, drop=invalid == "drop")
    except TagError as e:
        raise ValueError(f"token {e.index}: {e.reason}") from None
    return [Span(s, e, label) for s, e, label in chunks]


def spans_to_tags(spans: Iterable[Span], length: int, scheme: str = "IOB2") -> list[str]:
    """Encode non-overlapping token-offset spans as ``length`` tags in ``scheme``.

    The inverse of ``tags_to_spans``: ``tags_to_spans(spans_to_tags(s, n, sch), sch) == sorted(s)``.
    IOB1 uses ``B-X`` only for an entity that directly follows another ``X``. BIOES writes
    B/I/E/S (not L/U). Raises ``ValueError`` for overlapping spans or spans past ``length``.
    """
    name = normalize_scheme(scheme)
    tags = ["O"] * length
    prev_end, prev_label = -1, None
    for s in sorted(spans):
        if s.end > length:
            raise ValueError(f"span {s} ends past length {length}")
        if s.start < prev_end:
            raise ValueError(f"span {s} overlaps the previous one; tags cannot express nesting")
        n = s.end - s.start
        if name in ("IOB1", "IOB2"):
            first = (
                "B" if name == "IOB2" or (s.start == prev_end and s.label == prev_label) else "I"
            )
            tags[s.start] = f"{first}-{s.label}"
            for i in range(s.start + 1, s.end):
                tags[i] = f"I-{s.label}"
        else:
            inside = "M" if name == "BMES" else "I"
            if n == 1:
                tags[s.start] = f"S-{s.label}"
            else:
                tags[s.start] = f"B-{s.label}"
                for i in range(s.start + 1, s.end - 1):
                    tags[i] = f"{inside}-{s.label}"
                tags[s.end - 1] = f"E-{s.label}"
        prev_end, prev_label = s.end, s.label
    return tags


class TagError(Exception):
    """A tag-level problem at token ``index`` (mapped to a line number by the reader)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def normalize_scheme(scheme: str | None) -> str | None:
    """The canonical name of a scheme or alias (``"bilou"`` -> ``"BIOES"``); None stays None."""
    return None if scheme is None else SCHEMES.canonical(scheme)


_PREFIXES = frozenset("BIOESLUM")
_ALLOWED = {
    "IOB1": frozenset("BIO"),
    "IOB2": frozenset("BIO"),
    "BIOES": frozenset("BIOESLU"),
    "BMES": frozenset("BMESO"),
}


def parse_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``. Raises ``TagError(0, ...)``."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in _PREFIXES and tag[0] != "O":
        return tag[0], tag[2:]
    raise TagError(0, f"malformed tag {tag!r}: expected 'O' or '<B|I|E|S|L|U|M>-<type>'")


def detect_scheme_parsed(
    parsed: list[list[tuple[str, str]]],
) -> tuple[str, list[tuple[int, int]]]:
    """``(scheme, orphans)``; ``orphans`` lists ``(sentence, token)`` of chunk-opening ``I-`` tags
    when the data looks like IOB2 with stray ``I-`` (more ``B-`` than ``I-`` openings), else ``[]``.
    """
    prefixes = {p for tags in parsed for p, _ in tags} - {"O"}
    if not prefixes:
        return "IOB2", []
    if prefixes <= {"B", "I"}:
        i_open: list[tuple[int, int]] = []
        b_open = 0
        for s, tags in enumerate(parsed):
            prev = ""
            for i, (p, label) in enumerate(tags):
                if p == "I" and label != prev:
                    i_open.append((s, i))
                elif p == "B" and label != prev:
                    b_open += 1
                prev = label
        if not i_open:
            return "IOB2", []
        return "IOB1", (i_open if b_open > len(i_open) else [])
    if "M" in prefixes:
        if prefixes <= {"B", "M", "E", "S"}:
            return "BMES", []
        raise ValueError(f"tag prefixes {sorted(prefixes)} fit no scheme (M is BMES, I is not)")
    if prefixes <= {"B", "I", "E", "S"} or prefixes <= {"B", "I", "L", "U"}:
        return "BIOES", []
    raise ValueError(f"tag prefixes {sorted(prefixes)} fit no scheme (E/S is BIOES, L/U is BILOU)")


def decode(tags: Sequence[tuple[str, str]], scheme: str, drop: bool) -> list[tuple[int, int, str]]:
    """Parsed tags -> ``[(start, end, label)]`` token chunks (half-open), or ``TagError``."""
    return SCHEMES[scheme](tags, drop)


def _decode_iob1(tags: Sequence[tuple[str, str]], drop: bool) -> list[tuple[int, int, str]]:
    # IOB1 forbids nothing, so there is nothing to drop.
    chunks = []
    start, cur = -1, None
    for i, (p, label) in enumerate(tags):
        if p == "O":
            if cur is not None:
                chunks.append((start, i, cur))
                cur = None
        elif p == "I" and label == cur:
            continue
        elif p in ("I", "B"):
            if cur is not None:
                chunks.append((start, i, cur))
            start, cur = i, label
        else:
            raise _not_in_scheme(i, p, "IOB1")
    if cur is not None:
        chunks.append((start, len(tags), cur))
    return chunks


def _decode_iob2(tags: Sequence[tuple[str, str]], drop: bool) -> list[tuple[int, int, str]]:
    chunks = []
    start, cur = -1, None
    for i, (p, label) in enumerate(tags):
        if p == "I" and label == cur:
            continue
        if cur is not None:
            chunks.append((start, i, cur))
            cur = None
        if p == "B":
            start, cur = i, label
        elif p == "I":
            if not drop:
                before = "sentence start" if i == 0 else _fmt_tag(tags[i - 1])
                raise TagError(i, f"I-{label} after {before}: an entity must begin with B-{label}")
        elif p != "O":
            raise _not_in_scheme(i, p, "IOB2")
    if cur is not None:
        chunks.append((start, len(tags), cur))
    return chunks


def _decode_bioes(
    tags: Sequence[tuple[str, str]], drop: bool, scheme: str
) -> list[tuple[int, int, str]]:
    inside = "M" if scheme == "BMES" else "I"
    allowed = _ALLOWED[scheme]
    chunks = []
    start, cur = -1, None

    def fail(i: int, reason: str) -> None:
        nonlocal cur
        if not drop:
            raise TagError(i, reason)
        cur = None

    for i, (p, label) in enumerate(tags):
        if p not in allowed:
            raise _not_in_scheme(i, p, scheme)
        # BILOU spelling of BIOES.
        if p == "L":
            p = "E"
        elif p == "U":
            p = "S"
        if p == inside or p == "E":
            if cur != label:
                before = "sentence start" if i == 0 else _fmt_tag(tags[i - 1])
                fail(i, f"{p}-{label} after {before}: must follow B-{label} or {inside}-{label}")
            elif p == "E":
                chunks.append((start, i + 1, label))
                cur = None
            continue
        if cur is not None:
            fail(i, f"{_fmt_tag(tags[i])} while {cur} from token {start} is open (needs E-{cur})")
        if p == "B":
            start, cur = i, label
        elif p == "S":
            chunks.append((i, i + 1, label))
    if cur is not None:
        fail(len(tags) - 1, f"sentence ends inside {cur} begun at token {start} (needs E-{cur})")
    return chunks


def _not_in_scheme(i: int, prefix: str, scheme: str) -> TagError:
    allowed = "/".join(sorted(_ALLOWED[scheme]))
    return TagError(i, f"tag prefix {prefix!r} is not part of {scheme} ({allowed})")


def _fmt_tag(pt: tuple[str, str]) -> str:
    return "O" if pt[0] == "O" else f"{pt[0]}-{pt[1]}"


SCHEMES: Registry = Registry("tag scheme", normalize=str.upper)
SCHEMES.register("IOB1", _decode_iob1, help="I- begins an entity unless it continues one")
SCHEMES.register("IOB2", _decode_iob2, help="every entity begins with B-", aliases=("BIO",))
SCHEMES.register(
    "BIOES",
    partial(_decode_bioes, scheme="BIOES"),
    help="B-, I-, E- and single-token S- (BILOU: L-, U-)",
    aliases=("IOBES", "BILOU", "BIOUL"),
)
SCHEMES.register("BMES", partial(_decode_bioes, scheme="BMES"), help="B-, M-, E-, S-")
