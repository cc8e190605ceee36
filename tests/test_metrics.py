"""SpanMetrics: parity with seqeval's strict IOB2 scores, zero division, accumulation, merging."""

from __future__ import annotations

import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpner.data import Span, tags_to_spans
from gpner.metrics import SpanMetrics, f1_score, precision_recall_f1

seqeval_metrics = pytest.importorskip("seqeval.metrics", reason="needs pip install seqeval")
from seqeval.scheme import IOB2  # noqa: E402

TAGS = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def _spans(tag_sequences: list[list[str]]) -> list[list[Span]]:
    # invalid="drop" keeps exactly the entities seqeval's strict mode keeps (random tags include
    # stray I- tags).
    return [tags_to_spans(tags, "IOB2", invalid="drop") for tags in tag_sequences]


def _seqeval_scores(y_true, y_pred) -> dict:
    kwargs = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = seqeval_metrics.classification_report(y_true, y_pred, output_dict=True, **kwargs)
        micro = {
            "precision": seqeval_metrics.precision_score(y_true, y_pred, **kwargs),
            "recall": seqeval_metrics.recall_score(y_true, y_pred, **kwargs),
            "f1": seqeval_metrics.f1_score(y_true, y_pred, **kwargs),
        }
    return {"micro": micro, "report": report}


def _assert_matches_seqeval(y_true, y_pred) -> None:
    m = SpanMetrics()
    m.update(_spans(y_pred), _spans(y_true))
    ours = m.compute()
    theirs = _seqeval_scores(y_true, y_pred)
    report = theirs["report"]
    for k in ("precision", "recall", "f1"):
        assert ours["micro"][k] == pytest.approx(theirs["micro"][k], abs=1e-12)
        assert ours["micro"][k] == pytest.approx(report["micro avg"][_sk(k)], abs=1e-12)
        assert ours["macro"][k] == pytest.approx(report["macro avg"][_sk(k)], abs=1e-12)
    assert ours["support"] == report["micro avg"]["support"]
    labels = {k for k in report if not k.endswith(" avg")}
    assert set(ours["per_type"]) == labels
    for label, row in ours["per_type"].items():
        for k in ("precision", "recall", "f1"):
            assert row[k] == pytest.approx(report[label][_sk(k)], abs=1e-12)
        assert row["support"] == report[label]["support"]


def _sk(k: str) -> str:
    return "f1-score" if k == "f1" else k


@pytest.mark.parametrize("seed", range(6))
def test_matches_seqeval_strict_iob2_random_corpora(seed):
    rng = random.Random(seed)
    n = rng.randint(5, 40)
    y_true = [[rng.choice(TAGS) for _ in range(rng.randint(1, 15))] for _ in range(n)]
    # Predictions: gold with some tags corrupted, so that scores are neither 0 nor 1.
    y_pred = [[t if rng.random() < 0.7 else rng.choice(TAGS) for t in seq] for seq in y_true]
    _assert_matches_seqeval(y_true, y_pred)


@st.composite
def _corpus(draw):
    lengths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6))
    tag = st.sampled_from(TAGS)
    y_true = [draw(st.lists(tag, min_size=n, max_size=n)) for n in lengths]
    y_pred = [draw(st.lists(tag, min_size=n, max_size=n)) for n in lengths]
    return y_true, y_pred


@settings(max_examples=60, deadline=None)
@given(_corpus())
def test_matches_seqeval_strict_iob2_property(corpus):
    y_true, y_pred = corpus
    if not any(_spans(y_true)) and not any(_spans(y_pred)):
        return  # seqeval's report has no rows to compare then; covered by the zero tests below
    _assert_matches_seqeval(y_true, y_pred)


# --------------------------------------------------------------------------------------------
# Zero division
# --------------------------------------------------------------------------------------------


def _zeros():
    return {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_nothing_seen_is_all_zero():
    m = SpanMetrics()
    assert m.compute() == {"micro": _zeros(), "macro": _zeros(), "per_type": {}, "support": 0}
    m.update([[], []], [[], []])
    assert m.compute() == {"micro": _zeros(), "macro": _zeros(), "per_type": {}, "support": 0}


def test_only_predictions_or_only_references():
    m = SpanMetrics()
    m.update([[Span(0, 1, "X")]], [[]])
    out = m.compute()
    assert out["micro"] == _zeros() and out["support"] == 0
    assert out["per_type"]["X"] == {**_zeros(), "support": 0, "predicted": 1, "correct": 0}

    m.reset()
    m.update([[]], [[Span(0, 1, "X")]])
    out = m.compute()
    assert out["micro"] == _zeros() and out["support"] == 1
    assert out["per_type"]["X"] == {**_zeros(), "support": 1, "predicted": 0, "correct": 0}


def test_precision_recall_f1_counts():
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(1, 2, 4) == pytest.approx((0.5, 0.25, 1 / 3))


def test_macro_covers_labels_only_predicted():
    m = SpanMetrics()
    m.update([[Span(0, 1, "X"), Span(2, 3, "Y")]], [[Span(0, 1, "X")]])
    out = m.compute()
    assert set(out["per_type"]) == {"X", "Y"}
    assert out["macro"]["f1"] == pytest.approx(0.5)  # (1.0 for X + 0.0 for Y) / 2
    assert out["micro"]["precision"] == pytest.approx(0.5)
    assert out["micro"]["recall"] == 1.0


# --------------------------------------------------------------------------------------------
# Matching, accumulation, merging
# --------------------------------------------------------------------------------------------


def test_exact_match_and_duplicates_count_once():
    gold = [Span(0, 2, "X"), Span(0, 2, "X"), Span(3, 5, "Y")]
    pred = [(0, 2, "X"), Span(0, 2, "X"), (3, 4, "Y"), (3, 5, "X")]
    m = SpanMetrics()
    m.update([pred], [gold])
    out = m.compute()
    assert out["support"] == 2
    assert out["per_type"]["X"]["predicted"] == 2 and out["per_type"]["X"]["correct"] == 1
    assert out["per_type"]["Y"]["correct"] == 0
    assert out["micro"]["precision"] == pytest.approx(1 / 3)
    assert out["micro"]["recall"] == pytest.approx(1 / 2)


def test_counts_accumulate_not_per_batch_means():
    batch1 = ([[Span(0, 1, "X")]], [[Span(0, 1, "X")]])  # F1 1.0 on 1 entity
    batch2 = (
        [[Span(0, 1, "X")], [Span(5, 6, "X")], [], []],
        [[Span(0, 2, "X")], [Span(5, 7, "X")], [Span(1, 2, "X")], [Span(3, 4, "X")]],
    )  # F1 0.0 on 4 entities
    m = SpanMetrics()
    m.update(*batch1)
    m.update(*batch2)
    accumulated = m.compute()["micro"]["f1"]
    per_batch = [f1_score(*batch1), f1_score(*batch2)]
    assert per_batch == [1.0, 0.0]
    # 1 correct of 3 predicted and 5 gold: P 1/3, R 1/5, F1 1/4, not the mean 0.5.
    assert accumulated == pytest.approx(0.25)
    assert accumulated != pytest.approx(sum(per_batch) / 2)
    everything = f1_score(batch1[0] + batch2[0], batch1[1] + batch2[1])
    assert accumulated == pytest.approx(everything)


def test_merge_add_and_state_dict_equal_single_pass():
    rng = random.Random(3)
    y_true = [[rng.choice(TAGS) for _ in range(10)] for _ in range(30)]
    y_pred = [[t if rng.random() < 0.6 else rng.choice(TAGS) for t in seq] for seq in y_true]
    gold, pred = _spans(y_true), _spans(y_pred)

    single = SpanMetrics()
    single.update(pred, gold)

    ranks = [SpanMetrics() for _ in range(3)]
    for k, rank in enumerate(ranks):
        rank.update(pred[k::3], gold[k::3])
    merged = SpanMetrics()
    for rank in ranks:
        merged.merge(rank.state_dict())  # what all_gather_object would hand back
    assert merged.compute() == single.compute()
    assert (ranks[0] + ranks[1] + ranks[2]).compute() == single.compute()

    restored = SpanMetrics()
    restored.load_state_dict(single.state_dict())
    assert restored.compute() == single.compute()
    restored += ranks[0]
    assert restored.compute()["support"] == single.compute()["support"] + sum(map(len, gold[::3]))


def test_update_rejects_misuse():
    m = SpanMetrics()
    with pytest.raises(ValueError, match="1 and 2 examples"):
        m.update([[]], [[], []])
    with pytest.raises(TypeError, match="one iterable of spans per example"):
        m.update([Span(0, 1, "X")], [Span(0, 1, "X")])
    with pytest.raises(TypeError, match="one iterable of spans per example"):
        m.update([(0, 1, "X")], [(0, 1, "X")])
    with pytest.raises(ValueError, match=r"\(start, end, label\)"):
        m.update([[(0, 1)]], [[]])


def test_reset_forgets():
    m = SpanMetrics()
    m.update([[Span(0, 1, "X")]], [[Span(0, 1, "X")]])
    m.reset()
    assert m.compute()["support"] == 0 and m.compute()["per_type"] == {}
