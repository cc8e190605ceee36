"""A teacher's span logits for distillation: computed once, cached on disk, mapped onto the
student's tokens through character offsets.

Shape letters: B batch, C entity types, L student tokens (input ids), W maximum span width;
``Lt`` teacher tokens of one text, K cached cells.

**Mapping.** Teacher and student may tokenise differently (m3e-small: lower-cased wordpieces;
the BiLSTM: characters). A student cell ``(i, j)`` covers the characters
``[start(i), end(j))``; its teacher counterpart is the teacher cell ``(i', j')`` covering exactly
the same characters: ``i'`` the first teacher token starting at ``start(i)``, ``j'`` the last one
ending at ``end(j)``. A student cell without such a teacher cell (it starts or ends inside a
teacher wordpiece, e.g. ``"hel"`` of the wordpiece ``"hello"``; it touches a special token or
padding; no teacher window held the whole span; it is wider than the teacher's ``max_width``)
is *masked*: it adds nothing to the KD term, and only the cross-entropy (for labelled texts)
trains it.

**Cache format** (:meth:`TeacherLogits.save`): one safetensors file per (teacher, texts, floor),
with a JSON twin holding its metadata (also in the file's header). Sparse: only the cells whose
teacher logit is above ``floor`` are stored, as float16; every other cell the teacher scored is
"<= floor" (:func:`gpner.functional.apply_floor` says how KD reads it). Tensors, E texts:

* ``offsets`` (T, 2) int32: every text's teacher tokens, char offsets ``[start, end)``,
  concatenated; ``token_ptr`` (E + 1,) int64: text ``e`` owns rows ``token_ptr[e]:token_ptr[e+1]``;
* ``windows`` (V, 2) int32: the token ranges ``[start, end)`` of the teacher's input windows of
  each text (cells outside every window are unknown, not "<= floor"); ``window_ptr`` (E + 1,);
* ``cells`` (K, 3) int16 (int32 for texts of 32768 tokens or more): ``[c, i, j]`` in the text's
  teacher tokens, ``values`` (K,) float16 their logits, ``cell_ptr`` (E + 1,).

The metadata records ``bytes_per_example`` (all tensors' bytes over E), the cells per example,
the teacher's labels, ``max_width`` and fingerprint (a hash of its files), and the seconds the
teacher took.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gpner import functional as F
from gpner.data.batching import encode_examples
from gpner.data.spans import Example

__all__ = [
    "TeacherLogits",
    "compute_teacher_logits",
    "cached_teacher_logits",
    "fingerprint",
    "token_map",
    "student_targets",
]

FORMAT = "gpner-teacher-logits/1"
_METADATA_KEY = "gpner_teacher_logits"


@dataclass
class TeacherLogits:
    """The sparse span logits of a teacher on E texts (the cache format of the module doc)."""

    offsets: Tensor
    token_ptr: Tensor
    windows: Tensor
    window_ptr: Tensor
    cells: Tensor
    values: Tensor
    cell_ptr: Tensor
    meta: dict[str, Any]

    TENSORS = ("offsets", "token_ptr", "windows", "window_ptr", "cells", "values", "cell_ptr")

    def __len__(self) -> int:
        return int(self.token_ptr.numel()) - 1

    @property
    def floor(self) -> float:
        return float(self.meta["floor"])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in self.TENSORS)

    def text(self, e: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(offsets (Lt, 2), windows (n, 2), cells (k, 3), values (k,))`` of text ``e``."""

        def part(name: str, ptr: Tensor) -> Tensor:
            return getattr(self, name)[int(ptr[e]) : int(ptr[e + 1])]

        return (
            part("offsets", self.token_ptr),
            part("windows", self.window_ptr),
            part("cells", self.cell_ptr),
            part("values", self.cell_ptr),
        )

    def dense(self, e: int, num_types: int) -> tuple[Tensor, Tensor]:
        """Text ``e``'s teacher logits ``(C, Lt, Lt)`` float32 (``floor`` where not stored) and
        which cells the teacher scored, ``(Lt, Lt)`` bool."""
        offsets, windows, cells, values = self.text(e)
        n = offsets.shape[0]
        logits = torch.full((num_types, n, n), self.floor)
        cells = cells.long()
        logits[cells[:, 0], cells[:, 1], cells[:, 2]] = values.float()
        known = torch.zeros(n, n, dtype=torch.bool)
        for start, end in windows.tolist():
            known[start:end, start:end] = True
        known.triu_()
        width = self.meta.get("max_width")
        if width is not None:
            known.tril_(width - 1)
        return logits, known

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        """``path`` (.safetensors) and its JSON twin ``path.with_suffix(".json")``, atomically."""
        from safetensors.torch import save

        from gpner.atomic import atomic_write, atomic_write_json

        path = Path(path)
        tensors = {k: getattr(self, k).contiguous() for k in self.TENSORS}
        data = save(tensors, metadata={_METADATA_KEY: json.dumps(self.meta)})
        with atomic_write(path, "wb") as handle:
            handle.write(data)
        atomic_write_json(path.with_suffix(".json"), self.meta)

    @classmethod
    def load(cls, path: str | Path) -> TeacherLogits:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[_METADATA_KEY])
            tensors = {k: f.get_tensor(k) for k in cls.TENSORS}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        return cls(**tensors, meta=meta)


# ---------------------------------------------------------------------------- computing


def fingerprint(path: str | Path) -> str:
    """A hash of a teacher's files (a model directory's files, or an .onnx file)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha1()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def compute_teacher_logits(
    teacher, texts: Sequence[str], floor: float, batch_size: int = 64
) -> TeacherLogits:
    """Run ``teacher`` (a :class:`~gpner.model.NERModel` or :class:`~gpner.ort.OnnxModel`) on
    ``texts``, tokenised and windowed as it was trained, and keep its cells above ``floor``.

    A cell scored by several overlapping windows keeps the value of the first window that holds
    it, so the result does not depend on how the windows were batched.
    """
    from gpner.inference import _batches, _scorer

    start_time = time.perf_counter()
    tok = teacher.tokenizer
    prefix, suffix = len(tok.prefix_ids), len(tok.suffix_ids)
    cfg = teacher.config
    width = cfg.head.max_width
    features, _ = encode_examples(
        [Example(t, []) for t in texts], tok, teacher.label2id, cfg.data.max_length, cfg.data.stride
    )
    found: list[tuple[Tensor, Tensor]] = [None] * len(features)  # type: ignore[list-item]
    with _scorer(teacher) as score:
        for index, batch in _batches(teacher, features, batch_size):
            content = batch.attention_mask.clone()  # (B, L): real tokens, specials excluded
            content[:, :prefix] = False
            for b, k in enumerate(index):
                n = len(features[k].input_ids)
                content[b, n - suffix : n] = False
            logits = score(batch.input_ids, batch.attention_mask).float()
            rows, values = F.select_cells(logits.cpu(), floor, content, max_width=width)
            counts = torch.bincount(rows[:, 0], minlength=len(index)).tolist()
            for k, r, v in zip(index, rows.split(counts), values.split(counts)):
                shift = features[k].window_start - prefix
                found[k] = (r[:, 1:] + r.new_tensor([0, shift, shift]), v)
    per_text: list[dict[str, list]] = [
        {"offsets": [], "windows": [], "cells": [], "values": []} for _ in texts
    ]
    for feature, (cells, values) in zip(features, found):  # example order, windows in order
        item = per_text[feature.example_index]
        start = feature.window_start
        content = feature.offsets[prefix : len(feature.offsets) - suffix]
        end = start + len(content)
        item["offsets"][start:end] = content
        keep = torch.ones(len(values), dtype=torch.bool)
        for w0, w1 in item["windows"]:  # cells an earlier window held stay as it scored them
            keep &= ~((cells[:, 1] >= w0) & (cells[:, 2] < w1))
        item["windows"].append((start, end))
        item["cells"].append(cells[keep])
        item["values"].append(values[keep])
    return _pack(per_text, teacher, floor, width, time.perf_counter() - start_time)


def _pack(per_text, teacher, floor: float, width, seconds: float) -> TeacherLogits:
    def ptr(lengths: list[int]) -> Tensor:
        return torch.tensor([0, *lengths], dtype=torch.long).cumsum(0)

    cells = [torch.cat(t["cells"]) if t["cells"] else torch.zeros(0, 3) for t in per_text]
    longest = max((len(t["offsets"]) for t in per_text), default=0)
    index_dtype = torch.int16 if max(longest, len(teacher.labels)) < 2**15 else torch.int32
    values = [torch.cat(t["values"]) if t["values"] else torch.zeros(0) for t in per_text]
    logits = TeacherLogits(
        offsets=torch.tensor(
            [o for t in per_text for o in t["offsets"]], dtype=torch.int32
        ).reshape(-1, 2),
        token_ptr=ptr([len(t["offsets"]) for t in per_text]),
        windows=torch.tensor(
            [w for t in per_text for w in t["windows"]], dtype=torch.int32
        ).reshape(-1, 2),
        window_ptr=ptr([len(t["windows"]) for t in per_text]),
        cells=torch.cat(cells).to(index_dtype).reshape(-1, 3),
        values=torch.cat(values).clamp(-65504, 65504).to(torch.float16),
        cell_ptr=ptr([len(c) for c in cells]),
        meta={},
    )
    n = max(1, len(per_text))
    logits.meta = {
        "format": FORMAT,
        "floor": float(floor),
        "labels": list(teacher.labels),
        "max_width": width,
        "examples": len(per_text),
        "cells": int(logits.values.numel()),
        "cells_per_example": logits.values.numel() / n,
        "bytes": logits.nbytes,
        "bytes_per_example": logits.nbytes / n,
        "teacher_seconds": seconds,
    }
    return logits


def cached_teacher_logits(
    teacher,
    teacher_path: str | Path,
    texts: Sequence[str],
    floor: float,
    cache_dir: str | Path,
    batch_size: int = 64,
) -> tuple[TeacherLogits, Path, bool]:
    """``(logits, cache file, whether it was read from the cache)``: the teacher's logits on
    ``texts``, read from ``cache_dir`` when a file of the same teacher files, texts and floor is
    there, else computed and written there."""
    key = hashlib.sha1(
        json.dumps([FORMAT, fingerprint(teacher_path), float(floor), list(texts)]).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / f"teacher-{key}.safetensors"
    if path.is_file():
        try:
            return TeacherLogits.load(path), path, True
        except Exception:  # a damaged file is recomputed  # noqa: BLE001
            pass
    logits = compute_teacher_logits(teacher, texts, floor, batch_size)
    logits.meta["teacher"] = str(teacher_path)
    logits.meta["fingerprint"] = fingerprint(teacher_path)
    logits.save(path)
    return logits, path, False


# ---------------------------------------------------------------------------- mapping


def token_map(
    student: Sequence[tuple[int, int]], teacher: Sequence[tuple[int, int]]
) -> tuple[Tensor, Tensor]:
    """``(first, last)`` (Ls,) long: for each student token, the first teacher token starting
    where it starts and the last teacher token ending where it ends; -1 where there is none
    (and for special tokens and padding, offsets ``(-1, -1)``). Student cell ``(i, j)`` then
    maps to teacher cell ``(first[i], last[j])`` when both are >= 0."""
    first_at: dict[int, int] = {}
    last_at: dict[int, int] = {}
    for k, (a, b) in enumerate(teacher):
        first_at.setdefault(int(a), k)
        last_at[int(b)] = k
    first = [first_at.get(a, -1) if a >= 0 else -1 for a, _ in student]
    last = [last_at.get(b, -1) if b >= 0 else -1 for _, b in student]
    return torch.tensor(first, dtype=torch.long), torch.tensor(last, dtype=torch.long)


def student_targets(
    logits: TeacherLogits,
    rows: Sequence[tuple[int, Sequence[tuple[int, int]]]],
    length: int,
    channels: Tensor,
    max_width: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The teacher's logits on a student batch, and which student cells have a counterpart.

    Args:
        logits: the teacher's logits on the texts the rows come from.
        rows: per batch row, ``(text index in logits, the student feature's offsets)`` (one per
            input id; ``(-1, -1)`` for special tokens).
        length: L, the batch's padded length.
        channels: (C,) long, the teacher's type index of each student type.
        max_width: the student head's W: band layout (B, C, L, W) instead of (B, C, L, L).
    Returns:
        ``teacher`` (B, C, L, L) float32 (0 where masked) and ``mask`` (B, 1, L, L) bool, or
        their band forms with ``max_width``.
    """
    num_types = len(channels)
    out = torch.zeros(len(rows), num_types, length, length)
    mask = torch.zeros(len(rows), 1, length, length, dtype=torch.bool)
    for b, (e, offsets) in enumerate(rows):
        dense, known = logits.dense(e, len(logits.meta["labels"]))  # (Ct, Lt, Lt), (Lt, Lt)
        if dense.shape[-1] == 0:  # a text without teacher tokens: nothing maps
            continue
        first, last = token_map(offsets, logits.text(e)[0].tolist())
        n = len(offsets)
        ti, tj = first.clamp_min(0)[:, None], last.clamp_min(0)[None, :]  # (n, 1), (1, n)
        ok = (first >= 0)[:, None] & (last >= 0)[None, :]
        ok &= known[ti, tj] & torch.ones(n, n, dtype=torch.bool).triu_()
        out[b, :, :n, :n] = dense[channels][:, ti, tj]
        mask[b, 0, :n, :n] = ok
    if max_width is not None:
        return F.dense_to_band(out, max_width, fill=0.0), F.dense_to_band(mask, max_width)
    return out, mask
