import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpner.data.alignment import align_spans
from gpner.data.batching import Feature, collate, encode_examples
from gpner.data.spans import Example, Span
from gpner.data.tokenizers import CharTokenizer
from gpner.decoding import decode, spans_from_features
from tests.conftest import pretrained_tokenizer

# --------------------------------------------------------------------------- references


def reference_decode(logits, threshold, mask):
    """Plain loops over every cell, float64."""
    B, C, L, _ = logits.shape
    out = []
    for b in range(B):
        found = []
        for i in range(L):
            for j in range(i, L):
                for c in range(C):
                    if mask is not None and not (mask[b, i] and mask[b, j]):
                        continue
                    s = float(logits[b, c, i, j].double())
                    if s > threshold:
                        found.append((c, i, j, s))
        out.append(found)
    return out


def reference_flat(items):
    """Greedy by score (ties by position), checking overlap against every kept span."""
    kept = []
    for c, i, j, s in sorted(items, key=lambda t: (-t[3], t[1], t[2], t[0])):
        if all(j < i2 or j2 < i for _, i2, j2, _ in kept):
            kept.append((c, i, j, s))
    return sorted(kept, key=lambda t: (t[1], t[2], t[0]))


def _close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert u[:3] == v[:3] and u[3] == pytest.approx(v[3], rel=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 1.5, -0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_matches_loop_reference(threshold, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 2, 7, 7, generator=g) * 2  # (B, C, L, L)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    _close(decode(logits, threshold), reference_decode(logits, threshold, None))
    nested = decode(logits, threshold, attention_mask=mask)
    _close(nested, reference_decode(logits, threshold, mask))
    flat = decode(logits, threshold, flat=True, attention_mask=mask)
    _close(flat, [reference_flat(items) for items in nested])


@pytest.mark.parametrize("flat", [False, True])
def test_decode_band_layout_equals_full_layout(flat):
    from gpner.functional import band_mask, dense_to_band

    g = torch.Generator().manual_seed(3)
    width = 3
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    logits = torch.randn(3, 2, 7, 7, generator=g) * 2  # (B, C, L, L)
    far = torch.ones(7, 7, dtype=torch.bool).triu(width)  # j - i >= W: outside the band
    full = logits.masked_fill(far, -5.0)
    band = dense_to_band(full, width)  # (B, C, L, W)
    band = band.masked_fill(~band_mask(mask, width), float("nan"))  # garbage outside: ignored
    got = decode(band, 0.0, flat, mask, max_width=width)
    _close(got, decode(full, 0.0, flat, mask))
    assert any(got)


def test_decode_handles_nan_inf_and_masked_fill():
    logits = torch.full((1, 1, 4, 4), torch.finfo(torch.float32).min)
    logits[0, 0, 0, 1] = float("nan")
    logits[0, 0, 1, 2] = float("inf")
    logits[0, 0, 2, 1] = 5.0  # i > j: never
    logits[0, 0, 3, 3] = float("-inf")
    assert decode(logits) == [[(0, 1, 2, float("inf"))]]


def test_decode_half_precision_and_shapes():
    logits = torch.zeros(2, 3, 5, 5, dtype=torch.bfloat16) - 1
    logits[1, 2, 0, 4] = 2.5
    assert decode(logits) == [[], [(2, 0, 4, 2.5)]]
    assert decode(torch.zeros(0, 3, 5, 5)) == []
    assert decode(torch.zeros(2, 3, 0, 0)) == [[], []]
    with pytest.raises(ValueError):
        decode(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError):
        decode(torch.zeros(2, 3, 5, 5), attention_mask=torch.ones(2, 4, dtype=torch.bool))


def test_decode_nested_and_flat():
    logits = torch.full((1, 2, 6, 6), -10.0)
    logits[0, 0, 0, 3] = 3.0  # outer
    logits[0, 1, 1, 2] = 4.0  # inner, higher: flat keeps it and drops the outer
    logits[0, 1, 4, 5] = 1.0
    logits[0, 0, 4, 5] = 2.0  # same cell, other type: flat keeps the higher
    assert decode(logits) == [[(0, 0, 3, 3.0), (1, 1, 2, 4.0), (0, 4, 5, 2.0), (1, 4, 5, 1.0)]]
    assert decode(logits, flat=True) == [[(1, 1, 2, 4.0), (0, 4, 5, 2.0)]]


def test_decode_does_not_loop_over_cells():
    # 8 x 4 x 256 x 256 = 2M cells; a Python loop over them would take many seconds
    logits = torch.full((8, 4, 256, 256), -1.0)
    logits[:, :, 10, 20] = 1.0
    out = decode(logits, attention_mask=torch.ones(8, 256, dtype=torch.bool))
    assert all(len(items) == 4 for items in out)


# --------------------------------------------------------------------------- spans_from_features


def _feature(index, window_start, offsets):
    return Feature(index, window_start, [0] * len(offsets), offsets, [])


def test_spans_from_features_stitches_windows_with_max_score():
    # "abcdef", windows of 4 content tokens [0, 4) and [2, 6), one prefix and one suffix token
    sp = (-1, -1)
    f0 = _feature(0, 0, [sp] + [(k, k + 1) for k in range(0, 4)] + [sp])
    f1 = _feature(0, 2, [sp] + [(k, k + 1) for k in range(2, 6)] + [sp])
    f2 = _feature(1, 0, [sp, sp])  # an example with no content
    decoded = [
        [(0, 3, 4, 1.0), (1, 1, 2, 2.0), (0, 0, 1, 9.0), (0, 4, 5, 9.0)],  # last two touch specials
        [(0, 1, 2, 3.0), (1, 3, 4, 1.5)],  # (0, 1, 2) here is chars [2, 4), as (0, 3, 4) in f0
        [],
    ]
    got = spans_from_features([f0, f1, f2], decoded, ["LOC", "PER"])
    assert got == {
        0: [(Span(0, 2, "PER"), 2.0), (Span(2, 4, "LOC"), 3.0), (Span(4, 6, "PER"), 1.5)],
        1: [],
    }
    flat = spans_from_features([f0, f1], decoded[:2], {0: "LOC", 1: "PER"}, flat=True)
    assert flat == {0: got[0]}  # already non-overlapping
    decoded[1].append((0, 1, 4, 10.0))  # chars [2, 6) overlaps two: flat keeps only it
    flat = spans_from_features([f0, f1], decoded[:2], ["LOC", "PER"], flat=True)
    assert flat == {0: [(Span(0, 2, "PER"), 2.0), (Span(2, 6, "LOC"), 10.0)]}
    with pytest.raises(ValueError):
        spans_from_features([f0], [], ["LOC"])


# --------------------------------------------------------------------------- round trip property

LABELS = ["LOC", "PER", "ORG"]
L2I = {label: k for k, label in enumerate(LABELS)}

ATOMS = [
    "北", "京", "欢", "迎", "你", "上海", "New", "York", "is", "big", "NBA2K", "cafe\u0301",
    "e\u0301\u0308", "İstanbul", "ﬁne", "ＡＢＣ", "１２３", "，", "。", "😀", "👨\u200d👩",
    "❤\ufe0f", "갑", "x\u200by", "-", "'s", "U.S.", "ß",
    " ", " ", "  ", "\t", "\n", "\u3000", "\xa0",
]  # fmt: skip

texts = st.lists(st.sampled_from(ATOMS), max_size=40).map("".join)


@functools.cache
def _char() -> CharTokenizer:
    return CharTokenizer.build(ATOMS[:-7])  # leaves some characters unknown


def get_tokenizer(name):
    if name == "char":
        return _char()
    return pretrained_tokenizer({"m3e": "m3e-small", "minilm": "minilm"}[name])


def _gold(data, text, tok, flat):
    """Random spans aligned to token boundaries (non-overlapping when ``flat``)."""
    offsets = tok.encode(text).offsets
    n = len(offsets)
    if n == 0:
        return set()
    cuts = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=8))
    labels = data.draw(st.lists(st.sampled_from(LABELS), min_size=len(cuts), max_size=len(cuts)))
    gold: set[Span] = set()
    taken: list[tuple[int, int]] = []
    for (a, b), label in zip(cuts, labels):
        i, j = min(a, b), max(a, b)
        span = Span(offsets[i][0], offsets[j][1], label)
        if flat:
            if any(span.start < e and s < span.end for s, e in taken):
                continue
            taken.append((span.start, span.end))
        gold.add(span)
    return gold


def _roundtrip(tok, examples, max_length, stride, flat):
    features, stats = encode_examples(examples, tok, L2I, max_length=max_length, stride=stride)
    assert stats.unaligned == 0
    batch = collate(features, tok.pad_id)
    B, L = batch.input_ids.shape
    logits = torch.full((B, len(LABELS), L, L), -30.0)  # (B, C, L, L)
    for b, c, i, j in batch.spans.tolist():
        logits[b, c, i, j] = 30.0
    decoded = decode(logits, flat=flat, attention_mask=batch.attention_mask)
    got = spans_from_features(features, decoded, LABELS, flat=flat)
    cut = {}
    for index, span in stats.cut_spans:
        cut.setdefault(index, set()).add(span)
    for index, ex in enumerate(examples):
        expected = set(ex.spans) - cut.get(index, set())
        assert {span for span, _ in got[index]} == expected
        assert all(score == 30.0 for _, score in got[index])
        # spans no longer than the overlap + 1 tokens are never cut
        enc = tok.encode(ex.text)
        for _, i, j in align_spans(sorted(cut.get(index, ())), enc.offsets, L2I)[0]:
            assert j - i > stride
    return stats


@pytest.mark.parametrize("name", ["char", "m3e", "minilm"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_roundtrip_single_window(name, data):
    tok = get_tokenizer(name)
    flat = data.draw(st.booleans())
    examples = []
    for _ in range(data.draw(st.integers(1, 3))):
        text = data.draw(texts)
        examples.append(Example(text, sorted(_gold(data, text, tok, flat))))
    _roundtrip(tok, examples, max_length=512, stride=0, flat=flat)


@pytest.mark.parametrize("name", ["char", "m3e", "minilm"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_roundtrip_through_windows(name, data):
    tok = get_tokenizer(name)
    flat = data.draw(st.booleans())
    text = data.draw(st.lists(st.sampled_from(ATOMS), min_size=20, max_size=60).map("".join))
    specials = len(tok.prefix_ids) + len(tok.suffix_ids)
    max_length = specials + data.draw(st.integers(2, 12))
    stride = data.draw(st.integers(0, max_length - specials - 1))
    example = Example(text, sorted(_gold(data, text, tok, flat)))
    stats = _roundtrip(tok, [example], max_length, stride, flat=flat)
    assert stats.kept + stats.cut == stats.spans == len(example.spans)
