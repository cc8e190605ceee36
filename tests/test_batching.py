import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gpner.data.batching import (
    Batch,
    EncodeStats,
    Feature,
    LengthBucketSampler,
    collate,
    encode_examples,
    window_starts,
)
from gpner.data.spans import Example, Span
from gpner.data.tokenizers import CharTokenizer, Encoding

L2I = {"LOC": 0, "PER": 1}


class Wrapped(CharTokenizer):
    """A char tokenizer with a stand-in for [CLS] (id 7) and two suffix tokens (ids 8, 9)."""

    def __init__(self, vocab):
        super().__init__(vocab)
        self.prefix_ids = [7]
        self.suffix_ids = [8, 9]


def char_tok(texts):
    return CharTokenizer.build(texts)


# --------------------------------------------------------------------------- windows


@given(st.integers(0, 200), st.integers(1, 40), st.data())
def test_window_starts_property(n, window, data):
    stride = data.draw(st.integers(0, window - 1))
    starts = window_starts(n, window, stride)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert min(starts[-1] + window, max(n, 1)) >= n  # the last window reaches the end
    if n > window:
        assert starts[-1] + window == n
        assert all(b - a <= window - stride for a, b in zip(starts, starts[1:]))
    # every span of at most stride + 1 tokens fits in a window
    for i in range(n):
        j = min(i + stride, n - 1)
        assert any(s <= i and j < s + window for s in starts)


def test_window_starts_validation():
    with pytest.raises(ValueError):
        window_starts(10, 0, 0)
    with pytest.raises(ValueError):
        window_starts(10, 4, 4)


# --------------------------------------------------------------------------- encode_examples


def test_short_text_one_window_with_specials():
    ex = Example("北京 是", [Span(0, 2, "LOC"), Span(1, 3, "PER")])  # second ends on a space
    tok = Wrapped(["北", "京", "是"])
    features, stats = encode_examples([ex], tok, L2I, max_length=16)
    assert len(features) == 1
    f = features[0]
    assert f.example_index == 0 and f.window_start == 0
    assert f.input_ids == [7, 2, 3, 4, 8, 9]
    assert f.offsets == [(-1, -1), (0, 1), (1, 2), (3, 4), (-1, -1), (-1, -1)]
    assert f.spans == [(0, 1, 2)]
    counts = (stats.examples, stats.windows, stats.spans, stats.unaligned, stats.cut)
    assert counts == (1, 1, 2, 1, 0)
    assert stats.unaligned_spans == [(0, Span(1, 3, "PER"))]
    assert stats.kept == 1 and "1 unaligned" in stats.summary()


def test_long_text_windows_spans_and_cuts():
    text = "abcdefghijklmnopqrst"  # 20 chars, 20 tokens
    spans = [
        Span(0, 2, "LOC"),  # tokens 0-1: first window only
        Span(5, 7, "PER"),  # tokens 5-6: windows 0 and 1 (the overlap)
        Span(2, 12, "LOC"),  # 10 tokens: longer than any window -> cut
        Span(18, 20, "PER"),  # last window
    ]
    tok = Wrapped(list(text))
    # max_length 11 -> 8 content tokens per window, stride 3 -> starts 0, 5, 10, 12
    features, stats = encode_examples([Example(text, spans)], tok, L2I, max_length=11, stride=3)
    assert [f.window_start for f in features] == [0, 5, 10, 12]
    assert all(len(f.input_ids) == 11 for f in features)
    for f in features:
        content = f.offsets[1:-2]
        assert content == [(k, k + 1) for k in range(f.window_start, f.window_start + 8)]
        for c, i, j in f.spans:  # input-id coordinates map back to the gold chars
            assert Span(f.offsets[i][0], f.offsets[j][1], ["LOC", "PER"][c]) in spans
    assert features[0].spans == [(0, 1, 2), (1, 6, 7)]
    assert features[1].spans == [(1, 1, 2)]
    assert features[2].spans == []
    assert features[3].spans == [(1, 7, 8)]
    assert (stats.spans, stats.unaligned, stats.cut, stats.kept) == (4, 0, 1, 3)
    assert stats.cut_spans == [(0, Span(2, 12, "LOC"))]
    assert stats.windows == 4 and stats.max_tokens == 20


def test_default_stride_and_validation():
    text = "x" * 30
    tok = char_tok([text])
    features, _ = encode_examples([Example(text)], tok, L2I, max_length=8)  # stride 8 // 4 = 2
    assert [f.window_start for f in features] == window_starts(30, 8, 2)
    with pytest.raises(ValueError):
        encode_examples([Example(text)], Wrapped(["x"]), L2I, max_length=3)
    with pytest.raises(ValueError):
        encode_examples([Example(text)], tok, L2I, max_length=8, stride=8)
    with pytest.raises(KeyError, match="ORG"):
        encode_examples([Example("ab", [Span(0, 1, "ORG")])], tok, L2I, max_length=8)


def test_empty_text_and_no_examples():
    tok = Wrapped([])
    features, stats = encode_examples([Example("")], tok, L2I, max_length=8)
    assert len(features) == 1 and features[0].input_ids == [7, 8, 9]
    assert encode_examples([], tok, L2I, max_length=8)[1] == EncodeStats()


def test_tokenizer_without_encode_batch():
    class Plain:
        pad_id, vocab_size, prefix_ids, suffix_ids = 0, 3, [], []

        def encode(self, text):
            return Encoding([2] * len(text), [(k, k + 1) for k in range(len(text))])

        def state_dict(self):
            return {}

    features, stats = encode_examples([Example("ab", [Span(0, 2, "LOC")])], Plain(), L2I, 4)
    assert features[0].spans == [(0, 0, 1)] and stats.kept == 1


# --------------------------------------------------------------------------- collate


def test_collate_shapes_padding_and_spans():
    f1 = Feature(0, 0, [5, 6, 7], [(-1, -1), (0, 1), (-1, -1)], [(1, 1, 1)])
    f2 = Feature(1, 0, [5, 7], [(-1, -1), (-1, -1)], [])
    offsets = [(-1, -1)] + [(k, k + 1) for k in range(3)] + [(-1, -1)]
    f3 = Feature(2, 0, [5, 6, 6, 6, 7], offsets, [(0, 1, 3), (1, 2, 2)])
    batch = collate([f1, f2, f3], pad_id=0)
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.input_ids.dtype == torch.long and batch.input_ids.shape == (3, 5)
    assert batch.input_ids.tolist() == [[5, 6, 7, 0, 0], [5, 7, 0, 0, 0], [5, 6, 6, 6, 7]]
    assert batch.attention_mask.dtype == torch.bool
    assert batch.attention_mask.sum(1).tolist() == [3, 2, 5]
    assert batch.spans.dtype == torch.long
    assert batch.spans.tolist() == [[0, 1, 1, 1], [2, 0, 1, 3], [2, 1, 2, 2]]
    assert batch.features == [f1, f2, f3]
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids) and moved.features is batch.features


def test_collate_without_spans():
    batch = collate([Feature(0, 0, [1, 2], [(0, 1), (1, 2)], [])], pad_id=0)
    assert batch.spans.shape == (0, 4) and batch.spans.dtype == torch.long


# --------------------------------------------------------------------------- sampler


def _lengths(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 100, (n,), generator=g).tolist()


def _flat(batches):
    return [i for b in batches for i in b]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
def test_sampler_covers_every_index_once(n, shuffle):
    sampler = LengthBucketSampler(_lengths(n), batch_size=8, shuffle=shuffle, chunk_batches=4)
    batches = list(sampler)
    assert sorted(_flat(batches)) == list(range(n))
    assert len(batches) == len(sampler)
    assert sum(len(b) < 8 for b in batches) <= 1


def test_sampler_buckets_by_length():
    lengths = _lengths(2000)
    sampler = LengthBucketSampler(lengths, batch_size=16, chunk_batches=10)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in sampler]
    # random batches of 16 from 1..99 spread ~ 90; sorted chunks of 160 give a few
    assert sum(spread) / len(spread) < 15
    ordered = list(LengthBucketSampler(lengths, batch_size=16, shuffle=False))
    flat = [lengths[i] for i in _flat(ordered)]
    assert flat == sorted(flat, reverse=True)


def test_sampler_deterministic_and_epoch_dependent():
    lengths = _lengths(500)
    a = LengthBucketSampler(lengths, batch_size=8, seed=3)
    b = LengthBucketSampler(lengths, batch_size=8, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(LengthBucketSampler(lengths, batch_size=8, seed=4)) != first
    a.set_epoch(0)
    assert list(a) == first


def test_sampler_drop_last():
    sampler = LengthBucketSampler(_lengths(103), batch_size=10, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10
    assert all(len(b) == 10 for b in batches)
    assert len(set(_flat(batches))) == 100


def test_batches_by_length_is_a_stable_sort_either_way():
    from gpner.data.batching import batches_by_length

    lengths = [3, 1, 3, 2, 1]
    assert batches_by_length(lengths, 2) == [[1, 4], [3, 0], [2]]
    assert batches_by_length(lengths, 2, longest_first=True) == [[0, 2], [3, 1], [4]]
    assert list(LengthBucketSampler(lengths, 2, shuffle=False)) == [[0, 2], [3, 1], [4]]
    assert batches_by_length([], 4) == []


@pytest.mark.parametrize("n, world", [(100, 2), (103, 4), (5, 3), (1, 2), (64, 4)])
def test_dist_share_splits_each_global_batch(n, world):
    from gpner.distributed import Dist

    indices = list(range(n))
    shares = [Dist(rank, world).share(indices) for rank in range(world)]
    assert [k for share in shares for k in share] == indices  # contiguous, disjoint, complete
    assert max(map(len, shares)) - min(map(len, shares)) <= math.ceil(n / world)
    assert Dist().share(indices) is indices


def test_sampler_validation():
    with pytest.raises(ValueError):
        LengthBucketSampler([1], batch_size=0)


def test_dataloader_integration():
    texts = ["北京欢迎你", "上海", "广州很热闹啊啊啊", "深圳"]
    examples = [Example(t, [Span(0, 2, "LOC")]) for t in texts]
    tok = char_tok(texts)
    features, _ = encode_examples(examples, tok, L2I, max_length=32)
    sampler = LengthBucketSampler([len(f) for f in features], batch_size=2, seed=0)
    loader = DataLoader(
        features, batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=tok.pad_id)
    )
    seen = []
    for batch in loader:
        assert batch.input_ids.shape[0] == batch.attention_mask.shape[0] == len(batch.features)
        assert batch.spans.shape == (len(batch.features), 4)
        seen.extend(f.example_index for f in batch.features)
    assert sorted(seen) == [0, 1, 2, 3]
