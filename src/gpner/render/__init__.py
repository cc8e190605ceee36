"""Predicted spans -> HTML with nested entities visible: one underline per span, stacked.

The text is cut at every span boundary into segments; a segment covered by spans draws one
coloured line per covering span, at that span's *slot* (its row below the text), and the first
segment of a span carries the span's tag. Inner spans sit nearest the text, outer ones below, so
``北京大学`` (ORG) holding ``北京`` (LOC) reads as two stacked underlines. Crossing spans work the
same way. Tag labels are drawn by CSS (``attr(data-label)``), so the text content of a rendered
document is exactly the input text. Scores show on hover (``title``).

The same markup serves the web page of ``gpner serve`` and ``gpner render`` (offline, one file,
no script). displaCy's span style draws overlapping spans too, but over spaCy tokens with a
space after every token (Chinese text comes out spaced), no per-span hover text, and it needs
spaCy: see the README.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from importlib import resources

from gpner.data.spans import Span

__all__ = [
    "PALETTE",
    "assign_slots",
    "label_colors",
    "render_legend",
    "render_page",
    "render_text",
    "stylesheet",
]

# Distinguishable on white, dark enough for a 4px line; cycled when there are more labels.
PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#9a6324",
    "#469990",
    "#808000",
    "#000075",
    "#bfef45",
)


def label_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per label, by the label's position in the model's label list."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def assign_slots(spans: Sequence[Span]) -> list[int]:
    """The row of each span: the lowest row free of any overlapping span already placed.

    Spans are placed shortest first, so a nested span gets a row nearer the text than the span
    around it. Two spans that share a character never share a row.
    """
    order = sorted(range(len(spans)), key=lambda k: (spans[k].end - spans[k].start, spans[k]))
    slots = [0] * len(spans)
    # the rows taken at each character, so a span looks at its own characters, not at every
    # span placed before it (thousands of spans on a long text stay linear in their lengths)
    rows: dict[int, set[int]] = {}
    for k in order:
        span = spans[k]
        taken = set().union(*(rows.get(i, ()) for i in range(span.start, span.end)))
        slot = 0
        while slot in taken:
            slot += 1
        slots[k] = slot
        for i in range(span.start, span.end):
            rows.setdefault(i, set()).add(slot)
    return slots


def _describe(text: str, span: Span, score: float) -> str:
    mention = text[span.start : span.end]
    return f"{span.label} “{mention}” [{span.start}, {span.end}) score {score:.4f}"


def render_text(text: str, spans: Sequence[tuple[Span, float]], colors: Mapping[str, str]) -> str:
    """One text with its predicted ``(Span, score)`` pairs as an HTML fragment."""
    spans = sorted(spans, key=lambda t: t[0])
    only = [span for span, _ in spans]
    slots = assign_slots(only)
    bounds = sorted({0, len(text)} | {s.start for s in only} | {s.end for s in only})
    parts = []
    # A sweep over the segments: spans are sorted by start, and every start and end is a bound,
    # so the spans covering [a, b) are those begun at or before a and not yet ended at a.
    active: set[int] = set()
    upcoming = 0
    for a, b in zip(bounds, bounds[1:]):
        piece = html.escape(text[a:b])
        while upcoming < len(only) and only[upcoming].start <= a:
            active.add(upcoming)
            upcoming += 1
        active = {k for k in active if only[k].end > a}
        covering = sorted(active)
        if not covering:
            parts.append(piece)
            continue
        depth = max(slots[k] for k in covering) + 1
        lines = []
        for k in sorted(covering, key=lambda k: slots[k]):
            span, score = spans[k]
            color = colors.get(span.label, "#888888")
            tip = html.escape(_describe(text, span, score))
            style = f"--slot:{slots[k]};--color:{color}"
            tag = ""
            if span.start == a:
                tag = (
                    f'<span class="gpner-tag" data-label="{html.escape(span.label)}" '
                    f'data-start="{span.start}" data-end="{span.end}" '
                    f'data-score="{score:.4f}" title="{tip}"></span>'
                )
            lines.append(f'<span class="gpner-line" style="{style}" title="{tip}">{tag}</span>')
        tips = html.escape("\n".join(_describe(text, *spans[k]) for k in covering))
        parts.append(
            f'<span class="gpner-seg" style="--depth:{depth}" title="{tips}">'
            f"{piece}{''.join(lines)}</span>"
        )
    return f'<div class="gpner-doc">{"".join(parts)}</div>'


def render_legend(colors: Mapping[str, str]) -> str:
    items = "".join(
        f'<span class="gpner-key" style="--color:{color}">{html.escape(label)}</span>'
        for label, color in colors.items()
    )
    return f'<div class="gpner-legend">{items}</div>'


def stylesheet() -> str:
    """The CSS the fragments need (served by the app, inlined by :func:`render_page`)."""
    return resources.files(__package__).joinpath("render.css").read_text(encoding="utf-8")


def render_page(
    texts: Sequence[str],
    predictions: Sequence[Sequence[tuple[Span, float]]],
    labels: Sequence[str],
    title: str = "gpner",
) -> str:
    """A self-contained HTML page (CSS inlined, no script, no external resource)."""
    if len(texts) != len(predictions):
        raise ValueError(f"{len(texts)} texts but {len(predictions)} prediction lists")
    colors = label_colors(labels)
    docs = "\n".join(render_text(t, p, colors) for t, p in zip(texts, predictions))
    return (
        "<!DOCTYPE html>\n"
        '<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f"<style>\n{stylesheet()}</style></head>\n"
        f'<body class="gpner-page">\n<h1>{html.escape(title)}</h1>\n'
        f"{render_legend(colors)}\n{docs}\n</body></html>\n"
    )
