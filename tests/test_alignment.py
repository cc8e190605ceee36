import functools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpner.data.alignment import align_spans, token_span_to_chars
from gpner.data.spans import Span
from gpner.data.tokenizers import CharTokenizer
from tests.conftest import pretrained_tokenizer

L2I = {"PER": 0, "LOC": 1}


def test_aligned_and_unaligned():
    # "New York is big": tokens New|York|is|big
    offsets = [(0, 3), (4, 8), (9, 11), (12, 15)]
    spans = [
        Span(0, 8, "LOC"),  # New York
        Span(4, 8, "LOC"),  # York (nested)
        Span(0, 2, "PER"),  # ends inside "New"
        Span(1, 3, "PER"),  # starts inside "New"
        Span(3, 4, "PER"),  # whitespace only: covers no token
        Span(0, 4, "LOC"),  # ends on whitespace
        Span(12, 15, "PER"),
    ]
    aligned, unaligned = align_spans(spans, offsets, L2I)
    assert aligned == [(1, 0, 1), (1, 1, 1), (0, 3, 3)]
    assert unaligned == [Span(0, 2, "PER"), Span(1, 3, "PER"), Span(3, 4, "PER"), Span(0, 4, "LOC")]


def test_unknown_label_raises_with_label():
    with pytest.raises(KeyError, match="ORG"):
        align_spans([Span(0, 1, "ORG")], [(0, 1)], L2I)
    # even when the span would not align
    with pytest.raises(KeyError, match="ORG"):
        align_spans([Span(5, 6, "ORG")], [(0, 1)], L2I)


def test_duplicates_once_and_special_offsets_ignored():
    offsets = [(-1, -1), (0, 1), (1, 2), (-1, -1)]
    spans = [Span(0, 2, "PER"), Span(0, 2, "PER"), Span(0, 2, "LOC")]
    aligned, unaligned = align_spans(spans, offsets, L2I)
    assert aligned == [(0, 1, 2), (1, 1, 2)] and unaligned == []


def test_several_tokens_of_one_character():
    # "갑x": the syllable gives three tokens with the same offsets
    offsets = [(0, 1), (0, 1), (0, 1), (1, 2)]
    spans = [Span(0, 1, "LOC"), Span(0, 2, "LOC"), Span(1, 2, "PER")]
    aligned, _ = align_spans(spans, offsets, L2I)
    assert aligned == [(1, 0, 2), (1, 0, 3), (0, 3, 3)]


def test_token_span_to_chars():
    offsets = [(-1, -1), (0, 3), (4, 8), (-1, -1)]
    assert token_span_to_chars(1, 2, offsets) == (0, 8)
    assert token_span_to_chars(2, 2, offsets) == (4, 8)
    for i, j in [(2, 1), (0, 1), (1, 3), (1, 4), (-1, 1)]:
        with pytest.raises(ValueError):
            token_span_to_chars(i, j, offsets)


@given(st.text(max_size=30), st.data())
def test_roundtrip_property(text, data):
    enc = CharTokenizer.build([text]).encode(text)
    if not enc.offsets:
        return
    n = len(enc.offsets)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=5))
    spans = [Span(enc.offsets[min(p)][0], enc.offsets[max(p)][1], "PER") for p in pairs]
    aligned, unaligned = align_spans(spans, enc.offsets, L2I)
    assert unaligned == []
    assert len(aligned) == len(set(spans))
    assert {Span(*token_span_to_chars(i, j, enc.offsets), "PER") for _, i, j in aligned} == set(
        spans
    )


# --------------------------------------------------------------------------- real data

# Unaligned gold spans, measured with gpner.data.readers. The char tokenizer aligns everything
# (no gold boundary falls on whitespace). m3e's WordPiece keeps Latin/digit runs as one word, so
# a mention inside one ("dota" in "而dota中" is fine, "DotA" in "War3DotA" is not) cannot align.
EXPECTED_UNALIGNED = {
    ("cluener", "char"): 0,
    ("cluener", "m3e-small"): 15,
    ("conll2003", "char"): 0,
    ("conll2003", "minilm"): 0,
}


def _dataset(shared_data, name):
    return _read_dataset(str(shared_data), name)


@functools.cache
def _read_dataset(root, name):
    from gpner.data import readers

    shared_data = Path(root)
    if name == "cluener":
        paths = [shared_data / "cluener" / "train.json", shared_data / "cluener" / "dev.json"]
        kwargs = {"format": "cluener"}
    else:
        paths = [shared_data / "conll2003" / "eng.train"]
        kwargs = {"format": "conll", "scheme": "IOB1"}
    if not all(p.is_file() for p in paths):
        pytest.skip(f"{name} files not found under {shared_data}")
    return [ex for p in paths for ex in readers.read(p, **kwargs)]


def _count_unaligned(examples, tokenizer):
    labels = sorted({s.label for ex in examples for s in ex.spans})
    label2id = {label: k for k, label in enumerate(labels)}
    encodings = tokenizer.encode_batch([ex.text for ex in examples])
    total = 0
    for ex, enc in zip(examples, encodings):
        total += len(align_spans(ex.spans, enc.offsets, label2id)[1])
    return total


@pytest.mark.parametrize(
    "dataset, tokenizer",
    [("cluener", "char"), ("cluener", "m3e-small"), ("conll2003", "char"), ("conll2003", "minilm")],
)
def test_unaligned_counts_on_real_data(shared_data, dataset, tokenizer):
    examples = _dataset(shared_data, dataset)
    if tokenizer == "char":
        tok = CharTokenizer.build(ex.text for ex in examples)
    else:
        tok = pretrained_tokenizer(tokenizer)
    assert _count_unaligned(examples, tok) == EXPECTED_UNALIGNED[dataset, tokenizer]
