"""A spaCy pipeline component (the optional extra ``gpner[spacy]``).

``nlp.add_pipe("gpner", config={"model": DIR})`` predicts with :func:`gpner.inference.predict`
and writes

- every predicted span, nested ones included, to ``doc.spans["gpner"]``, with the scores (span
  logits) in ``doc.spans["gpner"].attrs["scores"]`` (one per span, in order, as spaCy's own span
  categorizer does);
- the highest-scoring spans that share no token to ``doc.ents``.

gpner predicts character offsets; spaCy spans are token spans. A predicted span whose ends fall
inside a spaCy token is *misaligned*: with ``alignment_mode = "strict"`` (the default) it is
left out of ``doc.spans``; with ``"expand"`` or ``"contract"`` it is widened or narrowed to token
boundaries (and left out when contracting leaves nothing). Either way it is never dropped
silently: it is listed in ``doc.spans["gpner"].attrs["misaligned"]`` (character offsets, label,
mention, score and the token span it became, if any), counted in the component's ``stats``, and
logged as a warning.

The factory is registered through the ``spacy_factories`` entry point of the package, so no
import is needed; importing this module registers it too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy
from spacy.language import Language
from spacy.tokens import Doc, SpanGroup
from spacy.util import minibatch

from gpner.data.spans import Span
from gpner.decoding import greedy_flat_chars

__all__ = ["GpnerComponent", "make_gpner"]

log = logging.getLogger("gpner.spacy")

ALIGNMENT_MODES = ("strict", "expand", "contract")


class GpnerComponent:
    """Writes a gpner model's predictions onto spaCy docs (see the module docstring)."""

    def __init__(
        self,
        nlp: Language,
        name: str,
        model: str,
        threshold: float | None = None,
        batch_size: int = 64,
        spans_key: str = "gpner",
        alignment_mode: str = "strict",
        set_ents: bool = True,
    ) -> None:
        from gpner import load

        if not model:
            raise ValueError(
                f'the "{name}" component needs config={{"model": DIR}}: a trained gpner model'
            )
        if alignment_mode not in ALIGNMENT_MODES:
            raise ValueError(
                f"alignment_mode must be one of {ALIGNMENT_MODES}, got {alignment_mode!r}"
            )
        self.name = name
        self.model = load(model)
        self.threshold = threshold
        self.batch_size = batch_size
        self.spans_key = spans_key
        self.alignment_mode = alignment_mode
        self.set_ents = set_ents
        # docs, predicted spans, spans written, misaligned spans (and of those, kept adjusted)
        self.stats: Counter = Counter()

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.model.labels)

    def _predict(self, docs: list[Doc]) -> list[list[tuple[Span, float]]]:
        from gpner.inference import predict

        return predict(
            self.model, [doc.text for doc in docs], self.batch_size, threshold=self.threshold
        )

    def __call__(self, doc: Doc) -> Doc:
        return self._annotate(doc, self._predict([doc])[0])

    def pipe(self, stream: Iterable[Doc], batch_size: int | None = None) -> Iterator[Doc]:
        for docs in minibatch(stream, size=batch_size or self.batch_size):
            for doc, predicted in zip(docs, self._predict(docs)):
                yield self._annotate(doc, predicted)

    def _annotate(self, doc: Doc, predicted: list[tuple[Span, float]]) -> Doc:
        spans, scores, misaligned = [], [], []
        for span, score in predicted:
            mapped = doc.char_span(
                span.start, span.end, label=span.label, alignment_mode=self.alignment_mode
            )
            exact = mapped is not None and (mapped.start_char, mapped.end_char) == (
                span.start,
                span.end,
            )
            if not exact:
                misaligned.append(
                    {
                        "start": span.start,
                        "end": span.end,
                        "label": span.label,
                        "text": doc.text[span.start : span.end],
                        "score": score,
                        "mapped_to": None
                        if mapped is None
                        else [mapped.start_char, mapped.end_char],
                    }
                )
            if mapped is not None:
                spans.append(mapped)
                scores.append(score)
        group = SpanGroup(
            doc,
            name=self.spans_key,
            spans=spans,
            attrs={"scores": numpy.asarray(scores, dtype="float32"), "misaligned": misaligned},
        )
        doc.spans[self.spans_key] = group
        if self.set_ents:
            # Greedy on the token spans' own character extents, so the kept ones share no token.
            extents = [
                (Span(s.start_char, s.end_char, s.label_), float(score), k)
                for k, (s, score) in enumerate(zip(spans, scores))
            ]
            index = {(sp, score): k for sp, score, k in extents}
            kept = greedy_flat_chars([(sp, score) for sp, score, _ in extents])
            doc.ents = sorted((spans[index[item]] for item in kept), key=lambda s: s.start)
        self.stats.update(
            docs=1,
            predicted=len(predicted),
            written=len(spans),
            misaligned=len(misaligned),
            adjusted=sum(m["mapped_to"] is not None for m in misaligned),
        )
        if misaligned:
            log.warning(
                "%d of %d predicted spans do not align with spaCy's tokens (alignment_mode=%s, "
                "%s); see doc.spans[%r].attrs['misaligned']",
                len(misaligned),
                len(predicted),
                self.alignment_mode,
                "left out" if self.alignment_mode == "strict" else "adjusted where possible",
                self.spans_key,
            )
        return doc


@Language.factory(
    "gpner",
    default_config={
        "model": None,
        "threshold": None,
        "batch_size": 64,
        "spans_key": "gpner",
        "alignment_mode": "strict",
        "set_ents": True,
    },
)
def make_gpner(
    nlp: Language,
    name: str,
    model: str | None,
    threshold: float | None,
    batch_size: int,
    spans_key: str,
    alignment_mode: str,
    set_ents: bool,
) -> GpnerComponent:
    """The ``gpner`` factory: ``nlp.add_pipe("gpner", config={"model": DIR})``."""
    return GpnerComponent(
        nlp, name, model, threshold, batch_size, spans_key, alignment_mode, set_ents
    )
