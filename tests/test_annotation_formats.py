"""Annotation-tool formats (brat, doccano, Label Studio): reading, writing, round trips, offsets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpner.data import Example, ReadError, ReadWarning, Span, detect_format, read
from gpner.data.doccano import read_doccano
from gpner.data.labelstudio import label_studio_task, read_label_studio
from gpner.data.offsets import from_utf16, to_utf16, utf16_length
from gpner.data.report import collect_read_report
from gpner.data.writers import WRITE_FORMATS, open_writer, probability, write

# A character outside the BMP: one code point, two UTF-16 units.
EMOJI = "\U0001f600"
RARE_HAN = "\U0002000b"  # 𠀋, CJK Extension B


# ---------------------------------------------------------------------------------- offsets


def _utf16_units(text: str, k: int) -> int:
    return len(text[:k].encode("utf-16-le")) // 2


texts = st.text(
    alphabet=st.sampled_from(["a", " ", "\n", "张", "三", EMOJI, RARE_HAN, "é"]), max_size=20
)


@given(texts)
def test_utf16_offsets_match_the_utf16_encoding(text):
    points = list(range(len(text) + 1))
    units = to_utf16(text, points)
    assert units == [_utf16_units(text, k) for k in points]
    assert utf16_length(text) == len(text.encode("utf-16-le")) // 2
    assert from_utf16(text, units) == points


def test_utf16_offset_inside_a_surrogate_pair_is_an_error():
    text = f"a{EMOJI}b"
    assert to_utf16(text, [0, 1, 2, 3]) == [0, 1, 3, 4]
    with pytest.raises(ValueError, match="splits the surrogate pair"):
        from_utf16(text, [2])
    with pytest.raises(ValueError, match="outside the text"):
        from_utf16(text, [5])
    with pytest.raises(ValueError, match="outside the text"):
        to_utf16(text, [4])


# ------------------------------------------------------------------------------- round trips


@st.composite
def examples(draw):
    """Texts with non-BMP characters and nested, overlapping and same-extent spans."""
    items = []
    for _ in range(draw(st.integers(1, 4))):
        text = draw(texts)
        spans = set()
        if text:
            for _ in range(draw(st.integers(0, 5))):
                start = draw(st.integers(0, len(text) - 1))
                end = draw(st.integers(start + 1, len(text)))
                spans.add(Span(start, end, draw(st.sampled_from(["PER", "LOC", "ORG"]))))
        items.append(Example(text, sorted(spans)))
    return items


def _path(tmp_path: Path, fmt: str, name: str = "out") -> Path:
    return tmp_path / (name if fmt == "brat" else f"{name}.{fmt}")


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=examples())
def test_read_write_read_is_the_identity(fmt, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(fmt)
    first = _path(tmp, fmt, "a")
    assert write(data, first, fmt) == len(data)
    back = read(first, format=fmt)
    assert back == data
    assert read(first) == data  # the format is detected
    second = _path(tmp, fmt, "b")
    write(back, second, fmt)
    assert read(second, format=fmt) == back


def test_round_trip_keeps_nested_spans_and_non_bmp_text_in_every_format(tmp_path):
    text = f"{EMOJI}北京大学的{RARE_HAN}张三"
    gold = [
        Example(
            text,
            [Span(1, 3, "LOC"), Span(1, 5, "ORG"), Span(6, 9, "PER"), Span(6, 9, "X")],
        ),
        Example("", []),
        Example("line one\nline two", [Span(5, 13, "SPAN")]),
    ]
    for fmt in WRITE_FORMATS:
        path = _path(tmp_path, fmt)
        write(gold, path, fmt)
        assert read(path, format=fmt) == gold, fmt
        assert detect_format(path) == fmt


# ------------------------------------------------------------------------------------- brat


def _brat(tmp_path: Path, docs: dict[str, tuple[str, str | None]]) -> Path:
    root = tmp_path / "brat"
    root.mkdir()
    for name, (text, ann) in docs.items():
        (root / f"{name}.txt").write_bytes(text.encode("utf-8"))
        if ann is not None:
            (root / f"{name}.ann").write_bytes(ann.encode("utf-8"))
    return root


def test_brat_reads_nested_entities_in_natural_document_order(tmp_path):
    root = _brat(
        tmp_path,
        {
            "10": ("后一篇", "T1\tLOC 0 1\t后\n"),
            "2": (
                "北京大学的张三\r\n在上海",
                "T1\tORG 0 4\t北京大学\nT2\tLOC 0 2\t北京\n"
                "T3\tPER 5 7\t张三\nT4\tLOC 10 12\t上海\n",
            ),
            "3": ("no annotations file", None),
        },
    )
    got = read(root)  # a directory is detected as brat
    assert [ex.text for ex in got] == ["北京大学的张三\r\n在上海", "no annotations file", "后一篇"]
    assert got[0].spans == [
        Span(0, 2, "LOC"),
        Span(0, 4, "ORG"),
        Span(5, 7, "PER"),
        Span(10, 12, "LOC"),  # \r counts as a character, as it does in brat
    ]
    assert got[1].spans == []
    # one document, by its .ann file
    assert read(root / "2.ann") == [got[0]]


def test_brat_discontinuous_entity_is_a_strict_error_naming_file_and_line(tmp_path):
    ann = "T1\tPER 0 2\t张三\nT2\tORG 0 2;3 5\t张三 上海\nT3\tLOC 3 5\t上海\n"
    root = _brat(tmp_path, {"doc": ("张三在上海", ann)})
    with pytest.raises(ReadError) as info:
        read(root, format="brat")
    assert info.value.path == str(root / "doc.ann")
    assert info.value.line == 2
    assert "discontinuous entity (fragments 0 2;3 5)" in str(info.value)
    assert str(info.value).startswith(f"{root / 'doc.ann'}:2: T2 (ORG)")

    with pytest.warns(ReadWarning, match=r"skipped 1 bad entity.*doc.ann:2: T2") as record:
        got = read(root, format="brat", strict=False)
    assert got == [Example("张三在上海", [Span(0, 2, "PER"), Span(3, 5, "LOC")])]
    assert [w.message.skipped for w in record if w.message.skipped] == [1]


def test_brat_ignores_attributes_relations_and_others_with_a_count(tmp_path):
    ann = (
        "T1\tPER 0 2\t张三\n"
        "T2\tLOC 3 5\t上海\n"
        "A1\tNegated T1\n"
        "M2\tSpeculation T2\n"
        "R1\tLives_in Arg1:T1 Arg2:T2\n"
        "*\tEquiv T1 T2\n"
        "E1\tTravel:T2 Agent:T1\n"
        "N1\tReference T1 Wikipedia:1 \t张三\n"
        "#1\tAnnotatorNotes T1\tchecked\n"
    )
    root = _brat(tmp_path, {"doc": ("张三在上海", ann)})
    with pytest.warns(ReadWarning, match="ignored"), collect_read_report() as report:
        got = read(root)
    assert got[0].spans == [Span(0, 2, "PER"), Span(3, 5, "LOC")]
    assert report.skipped == 0
    assert dict(report.ignored) == {
        "attributes": 2,
        "relations": 2,
        "events": 1,
        "normalizations": 1,
        "notes": 1,
    }


@pytest.mark.parametrize(
    "ann, reason",
    [
        ("T1\tPER 0 9\t张三\n", r"offsets \[0, 9\) outside the text"),
        ("T1\tPER 0 2\t李四\n", "mention '李四' differs from the text"),
        ("T1\tPER zero two\t张三\n", "are not 'START END'"),
        ("T1\tPER 0 2\t张三\nT1\tLOC 3 5\t上海\n", "duplicate annotation id"),
        ("X1\tsomething\n", "unknown annotation kind 'X1'"),
        ("T1\n", "expected 'ID<TAB>TYPE START END<TAB>TEXT'"),
    ],
)
def test_brat_bad_lines_name_file_and_line(tmp_path, ann, reason):
    root = _brat(tmp_path, {"doc": ("张三在上海", ann)})
    with pytest.raises(ReadError, match=rf"doc\.ann:\d: .*{reason}"):
        read(root)


def test_brat_ann_without_txt_and_missing_directory(tmp_path):
    root = _brat(tmp_path, {"doc": ("text", "")})
    (root / "orphan.ann").write_text("T1\tX 0 1\tt\n", encoding="utf-8")
    with pytest.raises(ReadError, match=r"orphan\.ann: no text file orphan\.txt"):
        read(root)
    with pytest.raises(FileNotFoundError, match="no such brat directory"):
        read(tmp_path / "missing", format="brat")


def test_brat_writer_declares_types_and_overlaps_and_has_no_scores(tmp_path):
    out = tmp_path / "pre"
    with open_writer(out, "brat", labels=["LOC", "PER"]) as writer:
        writer.write("张三在上海", [Span(0, 2, "PER"), Span(0, 5, "LOC")], [1.5, -0.2])
    assert (out / "000001.ann").read_text(encoding="utf-8") == (
        "T1\tPER 0 2\t张三\nT2\tLOC 0 5\t张三在上海\n"
    )
    conf = (out / "annotation.conf").read_text(encoding="utf-8")
    assert "[entities]\nLOC\nPER\n" in conf
    assert "<OVERLAP>\tArg1:<ENTITY>, Arg2:<ENTITY>, <OVL-TYPE>:<ANY>" in conf
    with pytest.raises(ValueError, match="already holds brat documents"):
        open_writer(out, "brat")
    with pytest.raises(ValueError, match="cannot hold whitespace"):
        open_writer(tmp_path / "other", "brat").write("ab", [Span(0, 1, "TWO WORDS")])


# ---------------------------------------------------------------------------------- doccano


def test_doccano_offsets_are_utf16_units_by_default(tmp_path):
    text = f"{EMOJI} 张三去了{RARE_HAN}上海市内"
    # UTF-16: the emoji and 𠀋 count two units each.
    path = tmp_path / "d.jsonl"
    record = {"id": 7, "text": text, "label": [[3, 5, "PER"], [9, 11, "LOC"]], "Comments": []}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    got = read(path)  # detected: "label" is a list
    assert got == [Example(text, [Span(2, 4, "PER"), Span(7, 9, "LOC")])]
    assert [text[s.start : s.end] for s in got[0].spans] == ["张三", "上海"]
    # the same file taken as code points is a different (wrong) reading
    wrong = read_doccano(path, offsets="codepoints")[0]
    assert [wrong.text[s.start : s.end] for s in wrong.spans] == ["三去", "市内"]
    out = tmp_path / "back.jsonl"
    write(got, out, "doccano")
    assert json.loads(out.read_text(encoding="utf-8"))["label"] == record["label"]
    write(got, tmp_path / "cp.jsonl", "doccano", offsets="codepoints")
    assert read_doccano(tmp_path / "cp.jsonl", offsets="codepoints") == got


@pytest.mark.parametrize(
    "label, reason",
    [
        ([[1, 3, "PER"]], "splits the surrogate pair"),
        ([[0, 9, "PER"]], "outside the text"),
        ([[2, 2, "PER"]], "outside the text"),
        ([[0, 2]], r"is not \[start, end, \"TYPE\"\]"),
        ({"PER": 1}, '"label" must be a list'),
    ],
)
def test_doccano_bad_records_name_the_line(tmp_path, label, reason):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"text": "ab", "label": []})
    bad = json.dumps({"text": f"{EMOJI}ab", "label": label})
    path.write_text(f"{good}\n{bad}\n", encoding="utf-8")
    with pytest.raises(ReadError, match=rf"d\.jsonl:2: .*{reason}"):
        read(path, format="doccano")
    with pytest.warns(ReadWarning, match="skipped 1 bad record"):
        assert read(path, format="doccano", strict=False) == [Example("ab", [])]


def test_cluener_and_doccano_are_told_apart_by_the_label_value(tmp_path):
    cluener = tmp_path / "c.json"
    cluener.write_text('{"text": "张三", "label": {"name": {"张三": [[0, 1]]}}}\n', "utf-8")
    doccano = tmp_path / "d.json"
    doccano.write_text('{"text": "张三", "label": [[0, 2, "name"]]}\n', "utf-8")
    assert detect_format(cluener) == "cluener"
    assert detect_format(doccano) == "doccano"
    assert read(cluener) == read(doccano)


# ----------------------------------------------------------------------------- Label Studio


def _ls_region(start, end, labels, text=None, **extra):
    value = {"start": start, "end": end, "labels": labels}
    if text is not None:
        value["text"] = text
    return {"from_name": "label", "to_name": "text", "type": "labels", "value": value, **extra}


def test_label_studio_export_annotations_predictions_and_code_point_offsets(tmp_path):
    text = f"{EMOJI}张三在北京大学"
    tasks = [
        {  # annotated: the first annotation that was not cancelled wins
            "id": 1,
            "data": {"text": text},
            "annotations": [
                {"was_cancelled": True, "result": [_ls_region(0, 1, ["X"])]},
                {
                    "result": [
                        _ls_region(1, 3, ["PER"], "张三", id="a"),
                        _ls_region(4, 8, ["ORG", "LOC"], "北京大学"),  # one span per label
                        {"type": "relation", "from_id": "a", "to_id": "b"},
                        {"type": "choices", "value": {"choices": ["ok"]}},
                    ]
                },
                {"result": [_ls_region(4, 6, ["LOC"])]},  # a second annotator: ignored
            ],
            "predictions": [{"result": [_ls_region(0, 1, ["Y"])], "score": 0.3}],
        },
        {  # only predictions: read from them, with a warning
            "data": {"sentence": "李四"},  # the only string field stands in for "text"
            "predictions": [{"result": [_ls_region(0, 2, ["PER"], score=0.9)]}],
        },
        {"data": {"text": "nothing"}},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks, ensure_ascii=False, indent=2), encoding="utf-8")
    with pytest.warns(ReadWarning), collect_read_report() as report:
        got = read(path)
    assert got == [
        Example(text, [Span(1, 3, "PER"), Span(4, 8, "LOC"), Span(4, 8, "ORG")]),
        Example("李四", [Span(0, 2, "PER")]),
        Example("nothing", []),
    ]
    assert dict(report.ignored) == {
        "relation results": 1,
        "choices results": 1,
        "further annotations": 1,
    }
    assert any(
        "1 task(s) have no annotation and were read from their" in m for m in report.messages
    )
    # only what people annotated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_label_studio(path, source="annotations")[1].spans == []
        assert read_label_studio(path, source="predictions")[0].spans == [Span(0, 1, "Y")]


@pytest.mark.parametrize(
    "region, reason",
    [
        (_ls_region(0, 9, ["PER"]), r"offsets \[0, 9\) outside the text"),
        (_ls_region(0, 2, ["PER"], "李四"), "value.text '李四' differs"),
        (
            _ls_region("/p[1]/text()[1]", "/p[1]/text()[1]", ["PER"]),
            "not integers",
        ),
        (_ls_region(0, 2, "PER"), "value.labels must be a list"),
    ],
)
def test_label_studio_bad_regions_name_the_task_line(tmp_path, region, reason):
    tasks = [
        {"data": {"text": "ok"}, "annotations": [{"result": []}]},
        {"data": {"text": "张三"}, "annotations": [{"result": [region]}]},
    ]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
    line = path.read_text(encoding="utf-8").splitlines().index(" {", 2) + 1
    with pytest.raises(ReadError, match=rf"tasks\.json:{line}: annotation result 0\b.*{reason}"):
        read(path, format="label-studio")


def test_label_studio_predictions_carry_probabilities():
    spans = [Span(0, 2, "PER"), Span(0, 5, "LOC")]
    task = label_studio_task("张三在上海", spans, [0.9, 0.25], model_version="m1")
    prediction = task["predictions"][0]
    assert prediction["model_version"] == "m1"
    assert prediction["score"] == 0.25  # the least sure region
    assert [r["score"] for r in prediction["result"]] == [0.9, 0.25]
    assert [r["value"]["text"] for r in prediction["result"]] == ["张三", "张三在上海"]
    assert "annotations" not in task
    assert label_studio_task("x", [])["annotations"] == [{"result": []}]


# ------------------------------------------------------------------ streaming writers resume


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_writers_resume_after_a_torn_last_record(tmp_path, fmt):
    path = _path(tmp_path, fmt)
    data = [Example(f"第{k}句{EMOJI}", [Span(0, 2, "X")]) for k in range(5)]
    with open_writer(path, fmt) as writer:
        for ex in data[:3]:
            writer.write(ex.text, ex.spans, [2.0])
    # a kill in the middle of the fourth record
    if fmt == "brat":
        (path / "000004.txt").write_text(data[3].text, encoding="utf-8")
    else:
        with open(path, "a", encoding="utf-8") as f:
            f.write('{"text": "第3')
    writer = open_writer(path, fmt, append=True)
    assert (writer.done, writer.last_text) == (3, data[2].text)
    for ex in data[3:]:
        writer.write(ex.text, ex.spans, [2.0])
    writer.close()
    if fmt == "label-studio":
        json.loads(path.read_text(encoding="utf-8"))  # one valid JSON document
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # label-studio: read from predictions
        assert read(path, format=fmt) == data
    # a finished output reopens too, and stays valid
    writer = open_writer(path, fmt, append=True)
    assert writer.done == 5
    writer.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read(path, format=fmt) == data


def test_resuming_something_else_is_refused(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"notes\.jsonl:1: not a record written by gpner"):
        open_writer(path, "jsonl", append=True)
    ls = tmp_path / "x.json"
    ls.write_text('{"data": {"text": "x"}}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="not a JSON array written by gpner"):
        open_writer(ls, "label-studio", append=True)
    with pytest.raises(ValueError, match="resuming needs an output file"):
        open_writer(None, "jsonl", append=True)
    with pytest.raises(ValueError, match="cannot write format 'conll'"):
        open_writer(tmp_path / "y", "conll")


def test_jsonl_prediction_records_hold_score_and_probability(tmp_path):
    path = tmp_path / "p.jsonl"
    with open_writer(path, "jsonl") as writer:
        writer.write("张三在上海", [Span(0, 2, "PER")], [1.2345678])
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["spans"] == [
        {
            "start": 0,
            "end": 2,
            "label": "PER",
            "text": "张三",
            "score": 1.2346,
            "probability": round(probability(1.2345678), 4),
        }
    ]
    assert probability(0.0) == 0.5
    assert probability(-800.0) == 0.0 and probability(800.0) == 1.0  # no overflow
    assert abs(probability(2.0) + probability(-2.0) - 1.0) < 1e-15
