"""Examples -> model inputs: windowed features, padded batches and a length-bucketing sampler.

Shape letters: B batch, L tokens (longest input in the batch), N gold spans in the batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Sampler

from gpner.data.alignment import align_spans
from gpner.data.spans import Example, Span
from gpner.data.tokenizers import Encoding, Tokenizer

__all__ = [
    "Feature",
    "EncodeStats",
    "encode_examples",
    "batches_by_length",
    "window_starts",
    "Batch",
    "collate",
    "LengthBucketSampler",
]

SPECIAL_OFFSET = (-1, -1)


@dataclass
class Feature:
    """One model input window of one example.

    ``input_ids`` includes the tokenizer's prefix/suffix tokens; ``offsets`` has one entry per
    input id (``(-1, -1)`` for special tokens), char offsets into the example's text.
    ``window_start`` is the index, in the example's content tokens, of the window's first content
    token. ``spans`` are the gold ``(label_id, i, j)`` in input-id coordinates, inclusive.
    """

    example_index: int
    window_start: int
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    spans: list[tuple[int, int, int]]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeStats:
    """What :func:`encode_examples` did, so nothing is lost silently.

    ``spans`` counts distinct gold spans (exact duplicates once); ``unaligned`` those whose
    boundaries are not token boundaries; ``cut`` aligned spans that no window fully contains
    (longer than the overlap allows). ``kept = spans - unaligned - cut`` reach the model.
    The offending spans are listed as ``(example_index, Span)``.
    """

    examples: int = 0
    windows: int = 0
    spans: int = 0
    unaligned: int = 0
    cut: int = 0
    max_tokens: int = 0
    unaligned_spans: list[tuple[int, Span]] = field(default_factory=list, repr=False)
    cut_spans: list[tuple[int, Span]] = field(default_factory=list, repr=False)

    @property
    def kept(self) -> int:
        return self.spans - self.unaligned - self.cut

    def summary(self) -> str:
        return (
            f"{self.examples} examples -> {self.windows} windows (longest {self.max_tokens} "
            f"tokens); {self.spans} spans: {self.kept} kept, {self.unaligned} unaligned, "
            f"{self.cut} cut by windows"
        )


def window_starts(num_tokens: int, window: int, stride: int) -> list[int]:
    """Start indices of windows of ``window`` tokens overlapping by ``stride`` tokens.

    Consecutive windows start ``window - stride`` apart; the last window ends exactly at
    ``num_tokens`` (it may overlap its predecessor by more). A text that fits gives ``[0]``.
    Every span of at most ``stride + 1`` tokens lies fully inside some window.
    """
    if window < 1:
        raise ValueError(f"window must hold at least one token, got {window}")
    if not 0 <= stride < window:
        raise ValueError(f"stride must be in [0, {window}), got {stride}")
    if num_tokens <= window:
        return [0]
    step = window - stride
    last = num_tokens - window
    starts = list(range(0, last, step))
    starts.append(last)
    return starts


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    label2id: Mapping[str, int],
    max_length: int,
    stride: int | None = None,
) -> tuple[list[Feature], EncodeStats]:
    """Tokenize, align and window examples into features.

    ``max_length`` counts every input id, special tokens included; each window holds
    ``W = max_length - len(prefix_ids) - len(suffix_ids)`` content tokens. Longer texts become
    overlapping windows; ``stride`` is the overlap in tokens (default ``W // 4``). Each gold span
    goes to every window that fully contains it. Unaligned spans and spans no window contains
    are counted and listed in the returned :class:`EncodeStats`, never dropped silently.
    Features come in example order, windows in text order.
    """
    prefix = list(tokenizer.prefix_ids)
    suffix = list(tokenizer.suffix_ids)
    window = max_length - len(prefix) - len(suffix)
    if window < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for content tokens besides the "
            f"{len(prefix) + len(suffix)} special tokens"
        )
    if stride is None:
        stride = window // 4
    if not 0 <= stride < window:
        raise ValueError(f"stride must be in [0, {window}) for max_length={max_length}")

    encodings = _encode_all(tokenizer, [ex.text for ex in examples])
    head = [SPECIAL_OFFSET] * len(prefix)
    tail = [SPECIAL_OFFSET] * len(suffix)
    stats = EncodeStats(examples=len(examples))
    id2label = {i: name for name, i in label2id.items()}
    features: list[Feature] = []
    for index, (example, enc) in enumerate(zip(examples, encodings)):
        aligned, unaligned = align_spans(example.spans, enc.offsets, label2id)
        stats.spans += len(aligned) + len(unaligned)
        stats.unaligned += len(unaligned)
        stats.unaligned_spans.extend((index, s) for s in unaligned)
        stats.max_tokens = max(stats.max_tokens, len(enc.ids))
        placed = [False] * len(aligned)
        for start in window_starts(len(enc.ids), window, stride):
            end = min(start + window, len(enc.ids))
            shift = len(prefix) - start
            spans = []
            for k, (c, i, j) in enumerate(aligned):
                if start <= i and j < end:
                    spans.append((c, i + shift, j + shift))
                    placed[k] = True
            features.append(
                Feature(
                    example_index=index,
                    window_start=start,
                    input_ids=prefix + enc.ids[start:end] + suffix,
                    offsets=head + enc.offsets[start:end] + tail,
                    spans=spans,
                )
            )
        for k, ok in enumerate(placed):
            if not ok:
                c, i, j = aligned[k]
                span = Span(enc.offsets[i][0], enc.offsets[j][1], id2label[c])
                stats.cut_spans.append((index, span))
        stats.cut += placed.count(False)
    stats.windows = len(features)
    return features, stats


def _encode_all(tokenizer: Tokenizer, texts: list[str]) -> list[Encoding]:
    batch = getattr(tokenizer, "encode_batch", None)
    if batch is not None:
        return list(batch(texts))
    return [tokenizer.encode(t) for t in texts]


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """Padded model inputs.

    ``input_ids``: (B, L) long; ``attention_mask``: (B, L) bool, True on real tokens;
    ``spans``: (N, 4) long rows ``[b, c, i, j]`` (batch row, label id, inclusive token span);
    ``features``: the B features, for mapping predictions back to text.
    """

    input_ids: Tensor
    attention_mask: Tensor
    spans: Tensor
    features: list[Feature]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
            spans=self.spans.to(device, non_blocking=non_blocking),
            features=self.features,
        )

    def __len__(self) -> int:
        return len(self.features)


def collate(features: Sequence[Feature], pad_id: int) -> Batch:
    """Pad features to the longest in the batch (use with ``functools.partial`` as collate_fn)."""
    features = list(features)
    B = len(features)
    L = max((len(f.input_ids) for f in features), default=0)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.bool)
    rows: list[tuple[int, int, int, int]] = []
    for b, f in enumerate(features):
        n = len(f.input_ids)
        input_ids[b, :n] = torch.tensor(f.input_ids, dtype=torch.long)
        attention_mask[b, :n] = True
        rows.extend((b, c, i, j) for c, i, j in f.spans)
    spans = torch.tensor(rows, dtype=torch.long).reshape(len(rows), 4)  # (N, 4)
    return Batch(input_ids, attention_mask, spans, features)


# --------------------------------------------------------------------------- sampling


def batches_by_length(
    lengths: Sequence[int], batch_size: int, longest_first: bool = False
) -> list[list[int]]:
    """Indices ``0 .. len(lengths) - 1`` sorted by length (a stable sort: equal lengths keep
    their order), shortest or ``longest_first``, and cut into batches of ``batch_size`` (the
    last one smaller): little compute goes to padding. Prediction batches this way;
    ``LengthBucketSampler(shuffle=False)`` is it, longest first."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=longest_first)
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


class LengthBucketSampler(Sampler[list[int]]):
    """A batch sampler yielding lists of indices of similar lengths.

    With ``shuffle=True``, each epoch the indices are shuffled, cut into chunks of
    ``batch_size * chunk_batches``, sorted by length within each chunk (longest first) and cut
    into batches, and the batch order is shuffled. Only the last batch can be smaller than
    ``batch_size``; ``drop_last`` drops it. With ``shuffle=False`` the batches follow a global
    sort by length, longest first (for evaluation: largest memory use comes first).

    Deterministic given ``seed`` and the epoch set with :meth:`set_epoch`. Every process of a
    data-parallel run draws the same global batches and takes its share of each
    (:meth:`gpner.distributed.Dist.share`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        chunk_batches: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if chunk_batches < 1:
            raise ValueError(f"chunk_batches must be positive, got {chunk_batches}")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.chunk_batches = chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.drop_last:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def _batches(self) -> list[list[int]]:
        """All batches of the epoch."""
        n = len(self.lengths)
        length = self.lengths.__getitem__
        size = self.batch_size
        if self.shuffle:
            rng = random.Random(self.seed * 1_000_003 + self.epoch)
            order = list(range(n))
            rng.shuffle(order)
            chunk = size * self.chunk_batches
            batches = []
            for c in range(0, n, chunk):
                part = sorted(order[c : c + chunk], key=length, reverse=True)
                batches.extend(part[k : k + size] for k in range(0, len(part), size))
        else:
            rng = None
            batches = batches_by_length(self.lengths, size, longest_first=True)
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        if rng is not None:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())
