"""Character spans <-> token spans.

A character span ``[start, end)`` is *aligned* when ``start`` is the start of some token and
``end`` the end of some token at or after it. Its token span is ``(i, j)``, inclusive, with ``i``
the first token starting at ``start`` and ``j`` the last token ending at ``end`` (several tokens
share offsets only when one character gives several tokens). Anything else, a boundary inside a
token, on whitespace or on a character no token covers, is *unaligned* and reported, never
dropped silently.

Offsets may contain ``(-1, -1)`` entries for special tokens (as in ``Feature.offsets``); they are
ignored, so token indices are then input-id indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpner.data.spans import Span

__all__ = ["align_spans", "token_span_to_chars"]


def align_spans(
    spans: Sequence[Span],
    offsets: Sequence[tuple[int, int]],
    label2id: Mapping[str, int],
) -> tuple[list[tuple[int, int, int]], list[Span]]:
    """Map character spans to ``(label_id, i, j)`` token spans, ``i <= j`` inclusive.

    Returns ``(aligned, unaligned)``: the token spans of the aligned spans, in input order, and
    the spans that could not be aligned. Exact duplicate spans are reported once.

    Raises ``KeyError`` naming the label of any span whose label is not in ``label2id``.
    """
    first_start: dict[int, int] = {}
    last_end: dict[int, int] = {}
    for k, (a, b) in enumerate(offsets):
        if a < 0:
            continue  # special token
        first_start.setdefault(a, k)
        last_end[b] = k
    aligned: list[tuple[int, int, int]] = []
    unaligned: list[Span] = []
    seen: set[Span] = set()
    for span in spans:
        try:
            label_id = label2id[span.label]
        except KeyError:
            raise KeyError(
                f"span label {span.label!r} is not in the label set {sorted(label2id)}"
            ) from None
        if span in seen:
            continue
        seen.add(span)
        i = first_start.get(span.start)
        j = last_end.get(span.end)
        if i is None or j is None or i > j:
            unaligned.append(span)
        else:
            aligned.append((label_id, i, j))
    return aligned, unaligned


def token_span_to_chars(i: int, j: int, offsets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The half-open character span ``(start, end)`` covered by tokens ``i..j`` (inclusive).

    Raises ``ValueError`` when ``i > j``, an index is out of range, or either end is a special
    token (offset ``(-1, -1)``).
    """
    if not 0 <= i <= j < len(offsets):
        raise ValueError(f"invalid token span ({i}, {j}) for {len(offsets)} tokens")
    start = offsets[i][0]
    end = offsets[j][1]
    if start < 0 or end < 0:
        raise ValueError(f"token span ({i}, {j}) starts or ends on a special token")
    return start, end
