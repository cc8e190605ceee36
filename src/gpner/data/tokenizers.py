"""Tokenizers that keep exact character offsets into the original text.

Every tokenizer returns an :class:`Encoding` of the *content* tokens of a text (no special tokens):
their ids and their half-open character offsets ``text[start:end]`` into the text exactly as given
(before any lower-casing or normalisation). Every token covers at least one character, both
the starts and the ends of the offsets are non-decreasing, and no token covers a space, tab,
newline or other space separator (Unicode Zs). (The character tokenizer skips everything
``str.isspace``; a BERT tokenizer deletes control characters such as ``\x1f`` instead, so a token
may cover one of those.)

Two tokenizers are provided:

* :class:`CharTokenizer`: one token per non-whitespace character (Python code point), with a
  vocabulary built from training texts. The usual choice for Chinese without a pretrained encoder.
* :class:`HFTokenizer`: a Hugging Face *fast* tokenizer (``tokenizer.json``) loaded from a local
  directory, for pretrained encoders.

Both serialise to a self-contained JSON-compatible ``state_dict()`` (the checkpoint embeds it) and
are rebuilt with :func:`tokenizer_from_state`, with no files needed.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Encoding",
    "Tokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "tokenizer_from_state",
]


@dataclass
class Encoding:
    """The content tokens of one text: ``ids[k]`` covers ``text[offsets[k][0]:offsets[k][1]]``."""

    ids: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer.

    ``prefix_ids``/``suffix_ids`` are the special tokens wrapped around every model input window
    (e.g. ``[CLS]``/``[SEP]``); ``encode`` never adds them. ``state_dict()`` is JSON-serialisable
    and self-contained (:func:`tokenizer_from_state` rebuilds the tokenizer from it alone).
    Both tokenizers here also have ``encode_batch(texts)``, which ``encode_examples`` uses when
    present; it is optional.
    """

    pad_id: int
    vocab_size: int
    prefix_ids: list[int]
    suffix_ids: list[int]

    def encode(self, text: str) -> Encoding: ...

    def state_dict(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- characters


class CharTokenizer:
    """One token per non-whitespace character; whitespace is skipped, offsets stay exact.

    Ids: 0 is padding, 1 is unknown, characters start at 2 in ``vocab`` order. With
    ``lowercase=True`` a character is looked up by ``ch.lower()`` (its offsets are unchanged,
    even where lower-casing changes the length, as for ``"İ"``). No prefix/suffix tokens.
    """

    PAD = "[PAD]"
    UNK = "[UNK]"
    pad_id = 0
    unk_id = 1

    def __init__(self, vocab: Sequence[str], lowercase: bool = False) -> None:
        self.vocab: list[str] = list(vocab)
        self.lowercase = bool(lowercase)
        self.token_to_id: dict[str, int] = {}
        for k, ch in enumerate(self.vocab):
            if ch in self.token_to_id:
                raise ValueError(f"duplicate vocabulary entry {ch!r}")
            self.token_to_id[ch] = k + 2
        self.prefix_ids: list[int] = []
        self.suffix_ids: list[int] = []

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 2

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_freq: int = 1,
        max_size: int | None = None,
        lowercase: bool = False,
    ) -> CharTokenizer:
        """Vocabulary of the characters seen in ``texts``.

        Characters occurring fewer than ``min_freq`` times are left out; ``max_size`` caps the
        number of characters (pad and unk not counted), keeping the most frequent. Ordered by
        descending frequency, ties by code point, so the result is deterministic.
        """
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls._key(ch, lowercase) for ch in text if not ch.isspace())
        items = sorted(
            ((ch, n) for ch, n in counts.items() if n >= min_freq), key=lambda t: (-t[1], t[0])
        )
        if max_size is not None:
            items = items[:max_size]
        return cls([ch for ch, _ in items], lowercase=lowercase)

    @staticmethod
    def _key(ch: str, lowercase: bool) -> str:
        return ch.lower() if lowercase else ch

    def encode(self, text: str) -> Encoding:
        get = self.token_to_id.get
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for k, ch in enumerate(text):
            if ch.isspace():
                continue
            ids.append(get(ch.lower() if self.lowercase else ch, self.unk_id))
            offsets.append((k, k + 1))
        return Encoding(ids, offsets)

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        return [self.encode(t) for t in texts]

    def state_dict(self) -> dict[str, Any]:
        return {"type": "char", "vocab": list(self.vocab), "lowercase": self.lowercase}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CharTokenizer:
        return cls(state["vocab"], lowercase=state.get("lowercase", False))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


# --------------------------------------------------------------------------- Hugging Face

_PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<PAD>")
_PROBES = ("a", "0", "the", "x y", "中")


def _normalizer_lowercases(node: Any) -> bool:
    """Whether a tokenizer.json normalizer (a JSON node) lower-cases."""
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(node.get("lowercase"))
    if kind == "Sequence":
        return any(_normalizer_lowercases(n) for n in node.get("normalizers", []))
    return False


def _set_lowercase(node: Any, lowercase: bool) -> Any:
    """A copy of the normalizer node that lower-cases (or not), changing as little as possible.

    A ``BertNormalizer`` gets its ``lowercase`` flag set (with ``strip_accents: null`` this also
    strips accents, exactly as the original BERT ``do_lower_case`` does); otherwise a
    ``Lowercase`` normalizer is added in front, or removed.
    """
    if _normalizer_lowercases(node) == lowercase:
        return node
    if isinstance(node, dict) and node.get("type") == "BertNormalizer":
        return {**node, "lowercase": lowercase}
    if lowercase:
        if node is None:
            return {"type": "Lowercase"}
        return {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, node]}
    if node.get("type") == "Lowercase":
        return None
    # a Sequence containing a lower-casing normalizer
    inner = [_set_lowercase(n, False) for n in node["normalizers"]]
    return {**node, "normalizers": [n for n in inner if n is not None]}


def _vocab_is_uncased(vocab: Iterable[str]) -> bool:
    """True when the vocabulary holds (almost) no upper-case letters: inputs must be lower-cased."""
    upper = lower = 0
    for token in vocab:
        if token.startswith("[") and token.endswith("]") or token.startswith("<"):
            continue  # special tokens such as [CLS], <s>
        if any(ch.isupper() for ch in token):
            upper += 1
        elif any(ch.islower() for ch in token):
            lower += 1
    return lower > 0 and upper <= 0.01 * lower


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class HFTokenizer:
    """A Hugging Face fast tokenizer from a local directory, with exact character offsets.

    ``path`` is a directory holding ``tokenizer.json`` (or that file itself). A directory with only
    slow-tokenizer files (e.g. ``vocab.txt``) is converted with ``transformers``, offline.
    Nothing is ever downloaded.

    ``lowercase``: ``None`` auto-detects. The input is lower-cased when the tokenizer's normalizer
    already does so, or when the vocabulary is uncased (almost no upper-case letters; some
    checkpoints, e.g. m3e, ship an uncased vocabulary with ``do_lower_case: false``). ``True`` or
    ``False`` forces it. Lower-casing is done by the tokenizer's normalizer, whose alignment
    tracking keeps offsets exact even where it changes lengths.

    Offsets are char offsets into the original text. Beyond what the library returns:
    padding and truncation configured in ``tokenizer.json`` are switched off (long texts are
    windowed by the batching code instead); special-token strings inside the text (``"[SEP]"``)
    are tokenized as plain text; combining marks (Unicode category M) that the normalizer drops,
    e.g. accents removed by accent stripping, are attached to the token directly before them, so
    a word's token covers its whole last grapheme. Characters the normalizer drops otherwise
    (control and format characters) are covered by no token, like whitespace. A character the
    model splits into several tokens (e.g. a Hangul syllable into jamo) gives them all its offsets.
    """

    def __init__(self, path: str | os.PathLike[str], lowercase: bool | None = None) -> None:
        path = Path(path)
        directory = path.parent if path.is_file() else path
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {directory}")
        json_file = path if path.is_file() else path / "tokenizer.json"
        if json_file.is_file():
            tokenizer_json = json_file.read_text(encoding="utf-8")
        else:
            tokenizer_json = self._convert_slow(directory)
        config = _read_json(directory / "tokenizer_config.json")
        special = _read_json(directory / "special_tokens_map.json")
        pad_token = _token_name(config.get("pad_token")) or _token_name(special.get("pad_token"))
        self._setup(tokenizer_json, lowercase=lowercase, pad_token=pad_token)
        self.name = directory.name

    @staticmethod
    def _convert_slow(directory: Path) -> str:
        try:
            from transformers import AutoTokenizer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise FileNotFoundError(
                f"no tokenizer.json in {directory}, and transformers (needed to convert a slow "
                "tokenizer) is not installed"
            ) from e
        hf = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, use_fast=True, trust_remote_code=False
        )
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{directory} holds no fast tokenizer and none can be converted")
        return backend.to_str()

    def _setup(
        self,
        tokenizer_json: str,
        lowercase: bool | None,
        pad_token: str | None = None,
        pad_id: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer as _RustTokenizer

        self.name = ""
        spec = json.loads(tokenizer_json)
        if lowercase is None:
            lowercase = _normalizer_lowercases(spec.get("normalizer")) or _vocab_is_uncased(
                _RustTokenizer.from_str(tokenizer_json).get_vocab()
            )
        spec["normalizer"] = _set_lowercase(spec.get("normalizer"), lowercase)
        spec["padding"] = None
        spec["truncation"] = None
        tok = _RustTokenizer.from_str(json.dumps(spec, ensure_ascii=False))
        tok.encode_special_tokens = True
        self._tok = tok
        self.lowercase = bool(lowercase)
        self.tokenizer_json = tok.to_str()
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.pad_id = pad_id if pad_id is not None else self._find_pad_id(spec, pad_token)
        self.prefix_ids, self.suffix_ids = self._find_special_ids()

    def _find_pad_id(self, spec: dict[str, Any], pad_token: str | None) -> int:
        padding = spec.get("padding")
        if pad_token is None and isinstance(padding, dict) and "pad_id" in padding:
            return int(padding["pad_id"])
        for name in (pad_token, *_PAD_CANDIDATES):
            if name is not None and (pid := self._tok.token_to_id(name)) is not None:
                return pid
        raise ValueError("cannot find the padding token of this tokenizer")

    def _find_special_ids(self) -> tuple[list[int], list[int]]:
        """The special tokens the post-processor wraps around a single sequence."""
        for probe in _PROBES:
            enc = self._tok.encode(probe, add_special_tokens=True)
            content = [k for k, m in enumerate(enc.special_tokens_mask) if not m]
            if content:
                return list(enc.ids[: content[0]]), list(enc.ids[content[-1] + 1 :])
        raise ValueError("cannot find the special tokens: every probe text encoded to nothing")

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> Encoding:
        return self._finish(text, self._tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """``[encode(t) for t in texts]``, tokenized in parallel by the Rust library."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._finish(t, e) for t, e in zip(texts, encs)]

    @staticmethod
    def _finish(text: str, enc: Any) -> Encoding:
        ids = list(enc.ids)
        offsets = _fix_offsets(text, enc.offsets)
        return Encoding(ids, offsets)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": "hf",
            "name": self.name,
            "tokenizer_json": self.tokenizer_json,
            "lowercase": self.lowercase,
            "pad_id": self.pad_id,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HFTokenizer:
        self = cls.__new__(cls)
        self._setup(state["tokenizer_json"], lowercase=state["lowercase"], pad_id=state["pad_id"])
        self.name = state.get("name", "")
        return self

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"lowercase={self.lowercase})"
        )


def _fix_offsets(text: str, raw: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Make library offsets monotone; attach dropped combining marks (see :class:`HFTokenizer`)."""
    n = len(text)
    offsets: list[tuple[int, int]] = []
    prev_start = prev_end = 0
    for a, b in raw:
        a = min(max(a, prev_start), n)
        b = min(max(b, prev_end, a), n)
        if b == a:  # an empty offset (not seen in practice): share a neighbouring character
            if offsets:
                a, b = offsets[-1]
            else:
                a = min(a, n - 1)
                b = a + 1
        offsets.append((a, b))
        prev_start, prev_end = a, b
    # Attach combining marks that directly follow a token but are covered by none. Tokens that
    # share an end (several tokens of one character) are extended together.
    k = 0
    while k < len(offsets):
        end = offsets[k][1]
        last = k
        while last + 1 < len(offsets) and offsets[last + 1][1] == end:
            last += 1
        nxt = offsets[last + 1][0] if last + 1 < len(offsets) else n
        stop = end
        while stop < nxt and unicodedata.category(text[stop]).startswith("M"):
            stop += 1
        if stop > end:
            for g in range(k, last + 1):
                offsets[g] = (offsets[g][0], stop)
        k = last + 1
    return offsets


# --------------------------------------------------------------------------- state


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its ``state_dict()``, with no files."""
    kind = state.get("type")
    if kind == "char":
        return CharTokenizer.from_state(state)
    if kind == "hf":
        return HFTokenizer.from_state(state)
    raise ValueError(f"unknown tokenizer type {kind!r}")
