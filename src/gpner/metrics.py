"""Span-level NER metrics: exact (start, end, label) match, counts accumulated, computed once.

``SpanMetrics`` follows the torchmetrics shape (``update`` / ``compute`` / ``reset``) without
depending on torch. Counts are kept per label over the whole corpus and turned into scores only in
``compute``, so the result does not depend on how the corpus was batched (the mean of per-batch F1
would). Any zero denominator gives 0.0.

Scores match seqeval's strict mode (``mode="strict"``) on the same entities: micro P/R/F1 from
summed counts, per-type P/R/F1, and the macro average as the plain mean of per-type P, R and F1
over every label that occurs in the references *or* the predictions (a label that is only ever
predicted counts, with recall 0.0 and F1 0.0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from gpner.data.spans import Span

__all__ = ["SpanMetrics", "f1_score", "precision_recall_f1"]

SpanLike = Span | tuple[int, int, str]


def precision_recall_f1(correct: int, predicted: int, support: int) -> tuple[float, float, float]:
    """``(precision, recall, f1)`` from counts; each is 0.0 where its denominator is 0."""
    p = correct / predicted if predicted else 0.0
    r = correct / support if support else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def _key(span: Any) -> tuple[int, int, str]:
    if isinstance(span, Span):
        return span.start, span.end, span.label
    t = tuple(span)
    if len(t) != 3:
        raise ValueError(f"a span must be a Span or (start, end, label), got {span!r}")
    return t  # type: ignore[return-value]


def _example_keys(spans: Any, what: str) -> set[tuple[int, int, str]]:
    # One Span (or one (start, end, label) tuple) where a whole example was expected is the
    # usual mistake: passing one example's spans instead of a list of examples.
    if isinstance(spans, Span) or (
        isinstance(spans, tuple) and len(spans) == 3 and isinstance(spans[0], int)
    ):
        raise TypeError(
            f"{what} must hold one iterable of spans per example, got a single span {spans!r}; "
            "wrap one example's spans in a list: update([pred_spans], [gold_spans])"
        )
    return {_key(s) for s in spans}


class SpanMetrics:
    """Accumulates per-label counts of predicted, gold and correct spans.

    Example::

        m = SpanMetrics()
        for batch in loader:
            m.update(predicted_spans_per_example, gold_spans_per_example)
        scores = m.compute()   # {"micro": {...}, "macro": {...}, "per_type": {...}, "support": n}

    For distributed evaluation each rank updates its own instance; then gather the plain-int
    ``state_dict()``s (e.g. ``torch.distributed.all_gather_object``) and ``merge`` them, or add
    instances with ``+``.
    """

    def __init__(self) -> None:
        self.correct: Counter[str] = Counter()
        self.predicted: Counter[str] = Counter()
        self.support: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget all counts."""
        self.correct.clear()
        self.predicted.clear()
        self.support.clear()

    def update(
        self, predictions: Iterable[Iterable[SpanLike]], references: Iterable[Iterable[SpanLike]]
    ) -> None:
        """Add one batch.

        Args:
            predictions: one iterable of spans per example, each a ``Span`` or
                ``(start, end, label)``.
            references: the gold spans, aligned with ``predictions`` (same number of examples).

        Within one example a span listed twice counts once (in both predictions and references).
        Spans match only when start, end and label are all equal.
        """
        preds, refs = list(predictions), list(references)
        if len(preds) != len(refs):
            raise ValueError(
                f"predictions and references hold {len(preds)} and {len(refs)} examples"
            )
        for pred, ref in zip(preds, refs):
            p = _example_keys(pred, "predictions")
            g = _example_keys(ref, "references")
            self.predicted.update(label for _, _, label in p)
            self.support.update(label for _, _, label in g)
            self.correct.update(label for _, _, label in p & g)

    def merge(self, other: SpanMetrics | Mapping[str, Mapping[str, int]]) -> SpanMetrics:
        """Add another instance's counts (or its ``state_dict()``) to this one; returns ``self``."""
        state = other.state_dict() if isinstance(other, SpanMetrics) else other
        self.correct.update(state["correct"])
        self.predicted.update(state["predicted"])
        self.support.update(state["support"])
        return self

    def __add__(self, other: SpanMetrics) -> SpanMetrics:
        if not isinstance(other, SpanMetrics):
            return NotImplemented
        return SpanMetrics().merge(self).merge(other)

    def __iadd__(self, other: SpanMetrics) -> SpanMetrics:
        if not isinstance(other, SpanMetrics):
            return NotImplemented
        return self.merge(other)

    def state_dict(self) -> dict[str, dict[str, int]]:
        """Counts as plain dicts ``{"correct"|"predicted"|"support": {label: int}}``."""
        return {
            "correct": dict(self.correct),
            "predicted": dict(self.predicted),
            "support": dict(self.support),
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        """Replace the counts with ``state`` (as produced by ``state_dict``)."""
        self.reset()
        self.merge(state)

    def compute(self) -> dict[str, Any]:
        """Scores from the accumulated counts.

        Returns:
            ``{"micro": {"precision", "recall", "f1"}, "macro": {"precision", "recall", "f1"},
            "per_type": {label: {"precision", "recall", "f1", "support", "predicted",
            "correct"}}, "support": total gold spans}``. ``per_type`` is sorted by label and covers
            every label seen in references or predictions; macro is the mean over those labels
            (0.0 when there are none).
        """
        labels = sorted(set(self.support) | set(self.predicted), key=str)
        per_type = {}
        for label in labels:
            c, n, s = self.correct[label], self.predicted[label], self.support[label]
            p, r, f = precision_recall_f1(c, n, s)
            per_type[label] = {
                "precision": p,
                "recall": r,
                "f1": f,
                "support": s,
                "predicted": n,
                "correct": c,
            }
        total = sum(self.support.values())
        p, r, f = precision_recall_f1(
            sum(self.correct.values()), sum(self.predicted.values()), total
        )
        if labels:
            macro = {
                k: sum(t[k] for t in per_type.values()) / len(labels)
                for k in ("precision", "recall", "f1")
            }
        else:
            macro = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        return {
            "micro": {"precision": p, "recall": r, "f1": f},
            "macro": macro,
            "per_type": per_type,
            "support": total,
        }


def f1_score(
    predictions: Iterable[Iterable[SpanLike]], references: Iterable[Iterable[SpanLike]]
) -> float:
    """Micro F1 over a whole corpus (one iterable of spans per example in each argument)."""
    m = SpanMetrics()
    m.update(predictions, references)
    return m.compute()["micro"]["f1"]
