"""Readers: shared-data counts, each format on small files, each kind of bad input, tag schemes."""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpner.data import (
    Example,
    ReadError,
    ReadWarning,
    Span,
    convert,
    detect_format,
    detect_scheme,
    read,
    spans_to_tags,
    tags_to_spans,
    write_jsonl,
)

# --------------------------------------------------------------------------------------------
# Shared data: the counts in each SOURCE.md
# --------------------------------------------------------------------------------------------

_cache: dict[tuple, list[Example]] = {}


def _read_shared(root: Path, rel: str, **kwargs) -> list[Example]:
    path = root / rel
    if not path.is_file():
        pytest.skip(f"{rel} not found under {root}")
    key = (str(path), tuple(sorted(kwargs.items())))
    if key not in _cache:
        _cache[key] = read(path, **kwargs)
    return _cache[key]


def _label_counts(examples: list[Example]) -> dict[str, int]:
    return dict(Counter(s.label for ex in examples for s in ex.spans))


def _n_spans(examples: list[Example]) -> int:
    return sum(len(ex.spans) for ex in examples)


@pytest.mark.parametrize(
    "rel, sentences, entities, unique_per_type",
    [
        (
            "cluener/train.json",
            10748,
            23971,
            [2829, 1131, 2897, 2325, 1797, 1109, 3661, 3075, 3052, 1462],
        ),
        ("cluener/dev.json", 1343, 3072, [364, 152, 366, 287, 244, 150, 451, 344, 425, 199]),
    ],
)
def test_cluener_counts_and_mentions(shared_data, rel, sentences, entities, unique_per_type):
    examples = _read_shared(shared_data, rel)
    assert len(examples) == sentences
    assert _n_spans(examples) == entities
    # Every span must be exactly one raw (type, mention, offsets) occurrence of the source line.
    raw_lines = (shared_data / rel).read_text(encoding="utf-8").splitlines()
    unique: Counter[str] = Counter()
    for ex, line in zip(examples, raw_lines):
        raw = Counter(
            (s, e + 1, typ, mention)
            for typ, mentions in json.loads(line).get("label", {}).items()
            for mention, offsets in mentions.items()
            for s, e in offsets
        )
        ours = Counter((s.start, s.end, s.label, ex.text[s.start : s.end]) for s in ex.spans)
        assert ours == raw
        unique.update(label for label, _ in {(s.label, ex.text[s.start : s.end]) for s in ex.spans})
    types = "address book company game government movie name organization position scene"
    assert [unique[t] for t in types.split()] == unique_per_type


@pytest.mark.parametrize(
    "rel, sentences, tokens, per_type",
    [
        (
            "conll2003/eng.train",
            14041,
            203621,
            {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600},
        ),
        ("conll2003/eng.testa", 3250, 51362, {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}),
        ("conll2003/eng.testb", 3453, 46435, {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}),
    ],
)
def test_conll2003_counts(shared_data, rel, sentences, tokens, per_type):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # detection must be confident: IOB1, no warning
        examples = _read_shared(shared_data, rel)
    assert detect_format(shared_data / rel) == "conll"
    assert len(examples) == sentences
    assert sum(len(ex.text.split(" ")) for ex in examples) == tokens
    assert _label_counts(examples) == per_type
    # Spans sit on token boundaries of the space-joined text.
    for ex in examples[:500]:
        for s in ex.spans:
            assert s.start == 0 or ex.text[s.start - 1] == " "
            assert s.end == len(ex.text) or ex.text[s.end] == " "


def test_conll2003_explicit_iob1_matches_detection(shared_data):
    detected = _read_shared(shared_data, "conll2003/eng.testa")
    explicit = _read_shared(shared_data, "conll2003/eng.testa", format="conll", scheme="IOB1")
    assert detected == explicit


WEIBO_TRAIN = {
    "PER.NAM": 578,
    "PER.NOM": 772,
    "GPE.NAM": 205,
    "GPE.NOM": 8,
    "ORG.NAM": 183,
    "ORG.NOM": 42,
    "LOC.NAM": 56,
    "LOC.NOM": 51,
}


@pytest.mark.parametrize(
    "split, sentences, chars, entities",
    [("train", 1350, 73778, 1895), ("dev", 270, 14509, 389), ("test", 270, 14842, 418)],
)
def test_weibo_counts(shared_data, split, sentences, chars, entities):
    rel = f"weibo/weiboNER_2nd_conll.{split}"
    examples = _read_shared(shared_data, rel, scheme="IOB1")
    assert detect_format(shared_data / rel) == "weibo"
    assert len(examples) == sentences
    assert _n_spans(examples) == entities
    if split == "train":
        assert _label_counts(examples) == WEIBO_TRAIN
    # Every token gives exactly one character once all its position digits are off ("t10" -> "t"),
    # except the tokens made of U+FFFD replacement characters (one or two of them).
    raw = (shared_data / rel).read_text(encoding="utf-8").splitlines()
    fffd_tokens = sum(line.startswith("\ufffd") for line in raw)
    assert sum(len(ex.text) - ex.text.count("\ufffd") for ex in examples) == chars - fffd_tokens


def test_weibo_stray_i_tags(shared_data):
    """Weibo is BIO with 10 entity-opening I- tags in train; SOURCE.md's 1895 counts them."""
    path = shared_data / "weibo/weiboNER_2nd_conll.train"
    if not path.is_file():
        pytest.skip("weibo train not found")
    with pytest.warns(ReadWarning, match=r"10 I- tag\(s\) begin an entity \(lines 1266, 22000"):
        auto = read(path)
    assert _n_spans(auto) == 1895
    with pytest.raises(ReadError, match=r"weiboNER_2nd_conll.train:1266: I-PER.NOM after I-PER"):
        read(path, scheme="IOB2")
    # The 10 tags sit in 8 sentences.
    with pytest.warns(ReadWarning, match=r"skipped 8 bad sentence"):
        kept = read(path, scheme="IOB2", strict=False)
    assert len(kept) == 1342


def test_weibo_two_digit_positions(shared_data):
    examples = _read_shared(shared_data, "weibo/weiboNER_2nd_conll.dev", scheme="IOB1")
    # Lines 9619-9632 spell "...andthe..." with positions running past 9 ("t10", "h11").
    assert any("andthe" in ex.text for ex in examples)


def test_cmeee_dev_counts_and_nesting(shared_data):
    examples = _read_shared(shared_data, "cmeee_v2/CMeEE-V2_dev.json")
    assert len(examples) == 5000
    assert _n_spans(examples) == 26081
    assert _label_counts(examples) == {
        "bod": 7361,
        "dis": 6328,
        "sym": 5297,
        "pro": 3319,
        "dru": 1566,
        "ite": 1339,
        "mic": 621,
        "equ": 164,
        "dep": 86,
    }
    overlapping = nested = 0
    sentences_with_overlap = 0
    for ex in examples:
        before = overlapping
        for i, a in enumerate(ex.spans):
            for b in ex.spans[i + 1 :]:
                if a.overlaps(b):
                    overlapping += 1
                    nested += _contains(a, b) or _contains(b, a)
        sentences_with_overlap += overlapping > before
    assert (overlapping, nested, sentences_with_overlap) == (4526, 4522, 1722)


@pytest.mark.parametrize(
    "rel, sentences, chars, per_type",
    [
        ("people_daily/example.dev", 2318, 109870, {"LOC": 1951, "ORG": 984, "PER": 884}),
        ("people_daily/example.test", 4636, 219197, {"LOC": 3658, "ORG": 2185, "PER": 1864}),
    ],
)
def test_people_daily_counts(shared_data, rel, sentences, chars, per_type):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        examples = _read_shared(shared_data, rel)
    assert detect_format(shared_data / rel) == "conll-chars"
    assert len(examples) == sentences
    assert sum(len(ex.text) for ex in examples) == chars
    assert _label_counts(examples) == per_type


@pytest.mark.parametrize(
    "rel, fmt",
    [
        ("cluener/train.json", "cluener"),
        ("cluener/test.json", "jsonl"),  # text only: reads the same in every JSON format
        ("cmeee_v2/CMeEE-V2_dev.json", "cmeee"),
        ("cmeee_v2/example_pred.json", "cmeee"),
    ],
)
def test_detect_shared_json(shared_data, rel, fmt):
    if not (shared_data / rel).is_file():
        pytest.skip(f"{rel} not found")
    assert detect_format(shared_data / rel) == fmt


def test_cluener_predict_example_is_rejected(shared_data):
    """cluener_predict.json has no text and a '{?????}' placeholder on lines 5-7."""
    path = shared_data / "cluener/cluener_predict.json"
    if not path.is_file():
        pytest.skip("cluener_predict.json not found")
    with pytest.raises(ReadError, match=r"cluener_predict.json:1: missing or non-string \"text\""):
        read(path, format="cluener")
    with pytest.warns(ReadWarning, match=r"skipped 7 bad record.*line 5: invalid JSON"):
        assert read(path, format="cluener", strict=False) == []


# --------------------------------------------------------------------------------------------
# Small files: each format
# --------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _jsonl(*records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_cluener_reader(tmp_path):
    path = _write(
        tmp_path,
        "c.json",
        _jsonl(
            {"text": "张三在北京，张三", "label": {"name": {"张三": [[0, 1], [6, 7], [0, 1]]}}},
            {"text": "北京", "label": {"address": {"北京": [[0, 1]]}, "scene": {"北京": [[0, 1]]}}},
            {"text": "没有实体"},
            {"text": "空", "label": None},
        ),
    )
    examples = read(path)
    assert detect_format(path) == "cluener"
    # The exact duplicate [0, 1] is one entity; the same extent with two labels is two.
    assert examples[0] == Example("张三在北京，张三", [Span(0, 2, "name"), Span(6, 8, "name")])
    assert examples[1].spans == [Span(0, 2, "address"), Span(0, 2, "scene")]
    assert examples[2] == Example("没有实体", [])
    assert examples[3] == Example("空", [])


def test_cmeee_reader_array_and_lines(tmp_path):
    records = [
        {
            "text": "肺内病变",
            "entities": [
                {"start_idx": 0, "end_idx": 3, "type": "dis", "entity": "肺内病变"},
                {"start_idx": 0, "end_idx": 0, "type": "bod", "entity": "肺"},
            ],
        },
        {"text": "无"},
    ]
    array = _write(tmp_path, "a.json", json.dumps(records, ensure_ascii=False, indent=2))
    lines = _write(tmp_path, "l.json", _jsonl(*records))
    expected = [Example("肺内病变", [Span(0, 1, "bod"), Span(0, 4, "dis")]), Example("无", [])]
    assert detect_format(array) == detect_format(lines) == "cmeee"
    assert read(array) == read(lines) == expected


def test_conll_reader_iob1(tmp_path):
    path = _write(
        tmp_path,
        "eng.x",
        "-DOCSTART- -X- O O\n\n"
        "EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n"
        "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\nMary NNP I-NP B-PER\n\n",
    )
    examples = read(path)
    assert detect_format(path) == "conll"
    assert examples == [
        Example("EU rejects German", [Span(0, 2, "ORG"), Span(11, 17, "MISC")]),
        Example("Peter Blackburn Mary", [Span(0, 15, "PER"), Span(16, 20, "PER")]),
    ]


def test_conll_reader_crlf_tabs_and_docstart_without_blank(tmp_path):
    path = tmp_path / "x.conll"
    path.write_bytes(b"New York\tB-LOC\r\nis\tO\r\n-DOCSTART-\tO\r\nhi\tO\r\n")
    examples = read(path, format="conll", scheme="IOB2")
    assert examples == [Example("New York is", [Span(0, 8, "LOC")]), Example("hi", [])]


def test_conll_chars_reader(tmp_path):
    # A space character is a token too ("  O": space, separator, tag).
    path = _write(tmp_path, "pd.dev", "北 B-LOC\n京 I-LOC\n  O\n好 O\n\n我 O\n")
    assert detect_format(path) == "conll-chars"
    assert read(path) == [Example("北京 好", [Span(0, 2, "LOC")]), Example("我", [])]


def test_weibo_reader(tmp_path):
    path = _write(
        tmp_path,
        "w.conll",
        "科0\tB-ORG.NAM\n技1\tI-ORG.NAM\nt0\tO\n"
        + "".join(f"x{i}\tO\n" for i in range(1, 10))
        # Position 10 of a word, a digit char "1" at position 10, and at position 0.
        + "o10\tO\n110\tO\n10\tB-PER.NOM\n\n",
    )
    assert detect_format(path) == "weibo"
    [ex] = read(path)
    assert ex.text == "科技t" + "x" * 9 + "o11"
    assert ex.spans == [Span(0, 2, "ORG.NAM"), Span(14, 15, "PER.NOM")]


def test_jsonl_roundtrip_and_convert(tmp_path):
    examples = [
        Example("a b c", [Span(2, 3, "Y"), Span(0, 3, "X")]),
        Example("", []),
        Example("中文", [Span(0, 2, "Z")]),
    ]
    path = tmp_path / "out.jsonl"
    assert write_jsonl(examples, path) == 3
    assert detect_format(path) == "jsonl"
    assert read(path) == [Example(ex.text, sorted(ex.spans)) for ex in examples]
    assert "中文" in path.read_text(encoding="utf-8")

    src = _write(tmp_path, "in.bioes", "A S-X\nb B-Y\nc E-Y\n\n")
    out = tmp_path / "converted.jsonl"
    assert convert(src, out, "conll") == 1
    assert read(out, format="jsonl") == [Example("A b c", [Span(0, 1, "X"), Span(2, 5, "Y")])]


def test_output_format_names_come_from_the_reader_registry(tmp_path):
    from gpner.data.readers import output_format

    assert output_format("labelstudio") == output_format(" Label_Studio ") == "label-studio"
    assert output_format("jsonl") == "jsonl"
    with pytest.raises(ValueError, match="'conll2003' is not an output format .*input format"):
        output_format("conll2003")
    with pytest.raises(ValueError, match="'xml' is not an output format") as error:
        output_format("xml")
    assert "input format" not in str(error.value)
    src = _write(tmp_path, "in.conll", "a B-X\n")
    assert convert(src, tmp_path / "out", "conll", to_format="labelstudio") == 1
    assert read(tmp_path / "out", format="label-studio") == [Example("a", [Span(0, 1, "X")])]


def test_format_and_scheme_names(tmp_path):
    path = _write(tmp_path, "x.conll", "a B-X\n")
    assert read(path, format="CoNLL", scheme="bio") == [Example("a", [Span(0, 1, "X")])]
    with pytest.raises(ValueError, match="unknown format"):
        read(path, format="xml")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        read(path, scheme="IOE2")
    json_path = _write(tmp_path, "x.jsonl", _jsonl({"text": "a", "spans": []}))
    with pytest.raises(ValueError, match="only applies to column formats"):
        read(json_path, scheme="IOB2")


# --------------------------------------------------------------------------------------------
# Bad input: strict raises with file and line; non-strict skips, counts and warns once
# --------------------------------------------------------------------------------------------

BAD_JSON_CASES = [
    # (format, records as text, 1-based bad line, reason pattern)
    (
        "cluener",
        _jsonl({"text": "ab", "label": {}}) + '{"text": "ab", "label": \n' + _jsonl({"text": "c"}),
        2,
        "invalid JSON",
    ),
    (
        "cluener",
        _jsonl({"text": "c"}, {"text": "ab", "label": {"X": {"ab": [[0, 2]]}}}),
        2,
        "outside the text",
    ),
    (
        "cluener",
        _jsonl({"text": "c"}, {"text": "c"}, {"text": "ab", "label": {"X": {"ba": [[0, 1]]}}}),
        3,
        "'ba' differs from the text",
    ),
    (
        "cluener",
        _jsonl({"text": "ab", "label": {"X": {"ab": [[1, 0]]}}}),
        1,
        "outside the text",
    ),
    ("cluener", _jsonl({"label": {}}), 1, 'non-string "text"'),
    (
        "jsonl",
        _jsonl({"text": "ab", "spans": [{"start": 1, "end": 3, "label": "X"}]}),
        1,
        "outside the text",
    ),
    (
        "jsonl",
        _jsonl({"text": "ab", "spans": [{"start": True, "end": 1, "label": "X"}]}),
        1,
        "not integers",
    ),
    (
        "cmeee",
        _jsonl({"text": "ab", "entities": [{"start_idx": 0, "end_idx": 0, "type": "t"}]})
        + _jsonl({"text": "ab", "entities": [{"start_idx": 0, "end_idx": 5, "type": "t"}]}),
        2,
        "outside the text",
    ),
]


@pytest.mark.parametrize("fmt, content, line, reason", BAD_JSON_CASES)
def test_bad_json_records(tmp_path, fmt, content, line, reason):
    path = _write(tmp_path, "bad.json", content)
    with pytest.raises(ReadError, match=reason) as info:
        read(path, format=fmt)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.line == line and err.path == str(path)
    assert str(err).startswith(f"{path}:{line}: ")

    good_records = sum(1 for ln in content.splitlines() if ln.strip()) - 1
    with pytest.warns(ReadWarning, match=rf"skipped 1 bad record.*line {line}: .*{reason}"):
        assert len(read(path, format=fmt, strict=False)) == good_records


def test_cmeee_error_names_the_entity_line(tmp_path):
    records = [
        {"text": "肺", "entities": []},
        {
            "text": "肺内",
            "entities": [
                {"start_idx": 0, "end_idx": 0, "type": "bod", "entity": "肺"},
                {"start_idx": 0, "end_idx": 1, "type": "bod", "entity": "内肺"},
            ],
        },
    ]
    text = json.dumps(records, ensure_ascii=False, indent=2)
    path = _write(tmp_path, "c.json", text)
    lines = text.splitlines()
    bad_line = next(i for i, ln in enumerate(lines, 1) if '"end_idx": 1' in ln) - 1
    with pytest.raises(ReadError, match="'内肺' differs") as info:
        read(path)
    assert info.value.line == bad_line  # the "start_idx" line of the second entity
    with pytest.warns(ReadWarning, match="skipped 1 bad record"):
        assert read(path, strict=False) == [Example("肺", [])]


def test_broken_json_array_raises_even_when_not_strict(tmp_path):
    path = _write(tmp_path, "c.json", '[\n{"text": "a", "entities": []},\n{"text": "b",\n]\n')
    for strict in (True, False):
        with pytest.raises(ReadError, match=r"c.json:4: invalid JSON"):
            read(path, format="cmeee", strict=strict)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "x.conll"
    path.write_bytes(b"a O\nb O\n\xff O\n")
    with pytest.raises(ReadError, match=r"x.conll:3: not valid UTF-8"):
        read(path)


BAD_COLUMN_CASES = [
    # (scheme, sentence with the bad tag, 1-based line within it, reason pattern)
    ("IOB2", ["a O", "b I-X"], 2, "I-X after O: an entity must begin with B-X"),
    ("IOB2", ["a B-Y", "b I-X"], 2, "I-X after B-Y"),
    ("IOB2", ["a E-X"], 1, "prefix 'E' is not part of IOB2"),
    ("BIOES", ["a O", "b E-X"], 2, "E-X after O"),
    ("BIOES", ["a B-X", "b O"], 2, "O while X from token 0 is open"),
    ("BIOES", ["a O", "b B-X", "c I-X"], 3, "sentence ends inside X"),
    ("BIOES", ["a B-X", "b S-X"], 2, "S-X while X"),
    ("BMES", ["a B-X", "b I-X"], 2, "prefix 'I' is not part of BMES"),
    ("BMES", ["a B-X", "b M-Y", "c E-Y"], 2, "M-Y after B-X"),
    (None, ["a O", "b Z-X"], 2, "malformed tag 'Z-X'"),
    (None, ["a O", "b"], 2, "expected a token and a tag"),
]


@pytest.mark.parametrize("scheme, sentence, line, reason", BAD_COLUMN_CASES)
def test_bad_tag_sequences(tmp_path, scheme, sentence, line, reason):
    good = ["x B-X", "y E-X"] if scheme in ("BIOES", "BMES") else ["x B-X", "y I-X"]
    # Two good sentences around the bad one; the bad one starts on line 4.
    content = "\n".join(good) + "\n\n" + "\n".join(sentence) + "\n\n" + "\n".join(good) + "\n"
    path = _write(tmp_path, "bad.conll", content)
    with pytest.raises(ReadError, match=reason) as info:
        read(path, format="conll", scheme=scheme)
    assert info.value.line == 3 + line
    assert str(info.value).startswith(f"{path}:{3 + line}: ")

    with pytest.warns(ReadWarning, match=rf"skipped 1 bad sentence.*line {3 + line}: .*{reason}"):
        examples = read(path, format="conll", scheme=scheme, strict=False)
    assert [ex.text for ex in examples] == ["x y", "x y"]
    assert all(len(ex.spans) == 1 for ex in examples)


def test_strict_stops_at_the_first_bad_line(tmp_path):
    path = _write(tmp_path, "bad.conll", "a O\nb I-X\n\nc Q-X\n\nd O\n")
    with pytest.raises(ReadError, match=r"bad.conll:2: I-X after O"):
        read(path, format="conll", scheme="IOB2")
    with pytest.raises(ReadError, match=r"bad.conll:4: malformed tag 'Q-X'"):
        read(path, format="conll", scheme="IOB1")
    with pytest.warns(ReadWarning, match=r"skipped 2 .* line 2: .* line 4: "):
        assert read(path, format="conll", scheme="IOB2", strict=False) == [Example("d", [])]


def test_non_strict_summary_is_one_warning_with_first_reasons(tmp_path):
    sentences = ["a O\nb I-X"] * 8 + ["c B-X"]
    path = _write(tmp_path, "bad.conll", "\n\n".join(sentences) + "\n")
    with pytest.warns(ReadWarning) as record:
        examples = read(path, format="conll", scheme="IOB2", strict=False)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 8 bad sentence(s)" in message
    assert message.count("line ") == 5 and message.endswith("...")
    assert examples == [Example("c", [Span(0, 1, "X")])]


@pytest.mark.parametrize(
    "content, reason",
    [
        ("", "empty file"),
        ("   \n\n", "empty file"),
        ("only\none\ncolumn\n", "expected a character and a tag"),
        ("a b\nc d\n", "last column 'b' is not a tag"),
        ("[1, 2]\n", "JSON record is a int"),
        ('{"text": "a", "spans": [], "label": {}}\n', "keys of several formats"),
    ],
)
def test_detect_format_errors(tmp_path, content, reason):
    path = _write(tmp_path, "x.data", content)
    with pytest.raises(ReadError, match=reason):
        detect_format(path)
    with pytest.raises(ReadError, match=reason):
        read(path)


def test_detect_ambiguous_scheme_raises(tmp_path):
    path = _write(tmp_path, "x.conll", "a B-X\nb M-X\nc I-X\n")
    with pytest.raises(ReadError, match=r"fit no scheme.*pass scheme="):
        read(path)


# --------------------------------------------------------------------------------------------
# Tag schemes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tags, scheme",
    [
        (["O", "O"], "IOB2"),
        (["B-X", "I-X", "O", "B-Y"], "IOB2"),
        (["I-X", "I-X", "B-X", "O"], "IOB1"),
        (["B-X", "E-X", "S-Y", "O"], "BIOES"),
        (["B-X", "L-X", "U-Y"], "BIOES"),
        (["B-X", "M-X", "E-X", "S-Y"], "BMES"),
    ],
)
def test_detect_scheme(tags, scheme):
    assert detect_scheme([tags]) == scheme


def test_tags_to_spans_examples():
    assert tags_to_spans(["I-X", "I-X", "B-X", "O", "I-Y"], "IOB1") == [
        Span(0, 2, "X"),
        Span(2, 3, "X"),
        Span(4, 5, "Y"),
    ]
    assert tags_to_spans(["B-X", "L-X", "U-Y", "O"], "BILOU") == [Span(0, 2, "X"), Span(2, 3, "Y")]
    assert tags_to_spans(["B-X", "M-X", "E-X"], "BMES") == [Span(0, 3, "X")]
    with pytest.raises(ValueError, match="token 1: I-Y after B-X"):
        tags_to_spans(["B-X", "I-Y"], "IOB2")
    assert tags_to_spans(["B-X", "I-Y", "I-Y", "B-Y"], "IOB2", invalid="drop") == [
        Span(0, 1, "X"),
        Span(3, 4, "Y"),
    ]
    assert tags_to_spans(["B-X", "I-X", "B-X", "E-X"], "BIOES", invalid="drop") == [Span(2, 4, "X")]


LABELS = ["X", "Y", "Z"]


@st.composite
def _flat_spans(draw):
    length = draw(st.integers(0, 12))
    spans, pos = [], 0
    while pos < length:
        gap = draw(st.integers(0, 2))
        size = draw(st.integers(1, 4))
        start = pos + gap
        if start + size > length:
            break
        spans.append(Span(start, start + size, draw(st.sampled_from(LABELS))))
        pos = start + size
    return length, spans


@settings(max_examples=150, deadline=None)
@given(_flat_spans(), st.sampled_from(["IOB1", "IOB2", "BIOES", "BMES"]))
def test_spans_tags_roundtrip(data, scheme):
    length, spans = data
    tags = spans_to_tags(spans, length, scheme)
    assert len(tags) == length
    assert tags_to_spans(tags, scheme) == spans
    if spans:
        # Detection may name another scheme, but must decode to the same spans.
        assert tags_to_spans(tags, detect_scheme([tags])) == spans


def test_spans_to_tags_rejects_overlap():
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_tags([Span(0, 2, "X"), Span(1, 3, "Y")], 3)


def _random_tags(rng: random.Random, prefixes: str, n: int) -> list[str]:
    choices = ["O"] + [f"{p}-{label}" for p in prefixes for label in ("PER", "LOC")]
    return [rng.choice(choices) for _ in range(n)]


@pytest.mark.parametrize("scheme, prefixes", [("IOB2", "BI"), ("IOBES", "BIES"), ("BILOU", "BILU")])
def test_drop_matches_seqeval_strict_entities(scheme, prefixes):
    seqeval_scheme = pytest.importorskip("seqeval.scheme", reason="needs pip install seqeval")
    cls = getattr(seqeval_scheme, scheme)
    rng = random.Random(0)
    for _ in range(200):
        tags = _random_tags(rng, prefixes, rng.randint(0, 10))
        theirs = {(e.start, e.end, e.tag) for e in seqeval_scheme.Tokens(tags, cls).entities}
        ours = {(s.start, s.end, s.label) for s in tags_to_spans(tags, scheme, invalid="drop")}
        assert ours == theirs, tags


def test_iob1_matches_seqeval_default_mode_entities():
    seqeval = pytest.importorskip(
        "seqeval.metrics.sequence_labeling", reason="needs pip install seqeval"
    )
    rng = random.Random(1)
    for _ in range(200):
        tags = _random_tags(rng, "BI", rng.randint(0, 10))
        theirs = {(s, e + 1, t) for t, s, e in seqeval.get_entities(tags)}
        assert {(s.start, s.end, s.label) for s in tags_to_spans(tags, "IOB1")} == theirs, tags


def _contains(a, b):
    """Whether span ``b`` lies within span ``a`` (labels ignored)."""
    return a.start <= b.start and b.end <= a.end
