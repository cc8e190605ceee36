"""Label Studio JSON: a list of tasks with ``data`` and ``annotations`` and/or ``predictions``.

A task reads as ``{"data": {"text": str}, "annotations": [{"result": [region, ...]}],
"predictions": [{"result": [...], "score": float}]}``, each text region a result item
``{"type": "labels", "value": {"start": int, "end": int, "text": str, "labels": [TYPE, ...]}}``.
Offsets are **code points** (Python string indices), end-exclusive: Label Studio stores text
regions that way (see ``gpner.data.offsets``). ``value.text``, when present, must match the text
at the offsets (whitespace runs compared as one space, since Label Studio may collapse them).

Reading (``read(path, format="label-studio")``):

- The text is ``data.text``, or the only string in ``data`` when there is no ``text`` key.
- ``source="auto"`` (the default) takes a task's first annotation that was not cancelled, and a
  task without one from its first prediction (counted in a ``ReadWarning``: those spans are a
  model's, not a person's). ``"annotations"`` or ``"predictions"`` takes only that kind. The old
  key ``completions`` counts as ``annotations``.
- A region with several labels is one span per label. Result items that are not text regions
  (relations, choices, text areas, ...) and further annotations of a task are ignored, counted by
  kind in one ``ReadWarning``. A region with non-integer offsets (HTML/XPath regions) is a bad
  task (``strict=False`` skips it).

Writing (``label_studio_task``): gold spans go to ``annotations``; predictions go to
``predictions`` with a ``score`` on every region (the span's probability, σ of its logit) and on
the prediction (its least sure region's probability, so that sorting tasks by it puts the ones to
review first). ``from_name``/``to_name`` default to ``label``/``text``, the names in Label Studio's
named-entity template; pass the names of your labeling config otherwise.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpner.data.records import (
    BadRecord,
    Problems,
    ReadWarning,
    checked_record_span,
    load_text,
    read_records,
    record_object,
    record_text,
)
from gpner.data.report import warn_ignored
from gpner.data.spans import Example, Span, same_words

__all__ = ["label_studio_task", "read_label_studio", "read_label_studio_text"]

SOURCES = ("auto", "annotations", "predictions")


def _task_text(task: dict) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise BadRecord('missing "data" object')
    if data.get("text") is None:
        strings = [v for v in data.values() if isinstance(v, str)]
        if len(strings) != 1:
            raise BadRecord('"data" has no "text" and not exactly one string field to read instead')
        return strings[0]
    return record_text(data, name="data.text")


def _results(task: dict, source: str, counts: Counter) -> tuple[list, str]:
    """The chosen result list and where it came from (``"annotation"``/``"prediction"``/``""``)."""
    annotations = task.get("annotations", task.get("completions")) or []
    predictions = task.get("predictions") or []
    if not isinstance(annotations, list) or not isinstance(predictions, list):
        raise BadRecord('"annotations" and "predictions" must be lists')
    usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if source in ("auto", "annotations") and usable:
        counts["further annotations"] += len(usable) - 1
        return usable[0].get("result") or [], "annotation"
    if source in ("auto", "predictions") and predictions:
        first = predictions[0]
        if not isinstance(first, dict):
            raise BadRecord("prediction 0 is not an object")
        counts["further predictions"] += len(predictions) - 1
        return first.get("result") or [], "prediction"
    return [], ""


def _task_example(task: Any, source: str, counts: Counter) -> tuple[Example, str]:
    task = record_object(task, "task object")
    text = _task_text(task)
    results, origin = _results(task, source, counts)
    if not isinstance(results, list):
        raise BadRecord(f'the {origin}\'s "result" is not a list')
    spans = []
    for k, item in enumerate(results):
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict) or "labels" not in value:
            kind = item.get("type", "untyped") if isinstance(item, dict) else "malformed"
            counts[f"{kind} results"] += 1
            continue
        where = f"{origin} result {k}" + (f" (id {item['id']!r})" if "id" in item else "")
        start, end, labels = value.get("start"), value.get("end"), value.get("labels")
        if not isinstance(labels, list) or not labels:
            raise BadRecord(f"{where}: value.labels must be a list of label names")
        mention = value.get("text")
        for label in labels:
            spans.append(
                checked_record_span(
                    text,
                    start,
                    end,
                    label,
                    where,
                    mention=mention if isinstance(mention, str) else None,
                    mention_name="value.text",
                    same=same_words,
                )
            )
    return Example(text, sorted(set(spans))), origin


def read_label_studio_text(
    text: str, path: Path, strict: bool = True, source: str = "auto"
) -> list[Example]:
    """Examples from the content ``text`` of the Label Studio file ``path``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    problems = Problems(path, strict, "task")
    counts: Counter[str] = Counter()
    read = read_records(text, path, problems, lambda obj: _task_example(obj, source, counts))
    examples = [example for example, _ in read]
    from_predictions = sum(source == "auto" and origin == "prediction" for _, origin in read)
    problems.finish()
    warn_ignored(path, counts, "gpner reads one set of text regions per task")
    if from_predictions:
        warnings.warn(
            ReadWarning(
                f"{path}: {from_predictions} task(s) have no annotation and were read from their "
                "model predictions; gpner.data.labelstudio.read_label_studio(path, "
                "source='annotations') reads human annotations only",
                path=path,
            ),
            stacklevel=2,
        )
    return examples


def read_label_studio(
    path: str | os.PathLike[str], strict: bool = True, source: str = "auto"
) -> list[Example]:
    """Read a Label Studio JSON export (or tasks file); see the module docstring."""
    p = Path(path)
    return read_label_studio_text(load_text(p), p, strict, source)


def label_studio_task(
    text: str,
    spans: Sequence[Span],
    probabilities: Sequence[float] | None = None,
    model_version: str | None = None,
    from_name: str = "label",
    to_name: str = "text",
) -> dict[str, Any]:
    """A Label Studio task: gold ``spans`` as an annotation, or, with ``probabilities`` (one per
    span, in [0, 1]), a prediction carrying them as region and prediction scores."""
    if probabilities is not None and len(probabilities) != len(spans):
        raise ValueError(f"{len(spans)} spans but {len(probabilities)} probabilities")
    result = []
    for k, span in enumerate(spans):
        item: dict[str, Any] = {
            "id": f"gpner-{k}",
            "from_name": from_name,
            "to_name": to_name,
            "type": "labels",
            "value": {
                "start": span.start,
                "end": span.end,
                "text": text[span.start : span.end],
                "labels": [span.label],
            },
        }
        if probabilities is not None:
            item["score"] = probabilities[k]
        result.append(item)
    task: dict[str, Any] = {"data": {"text": text}}
    if probabilities is None:
        task["annotations"] = [{"result": result}]
    else:
        prediction: dict[str, Any] = {"result": result}
        if model_version is not None:
            prediction["model_version"] = model_version
        if probabilities:
            prediction["score"] = min(probabilities)
        task["predictions"] = [prediction]
    return task
