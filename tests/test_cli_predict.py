"""``gpner predict``: one record per input line, streaming, resuming a killed run, tool formats."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from gpner.cli import main
from gpner.data import Example, Span, read
from gpner.data.writers import open_writer
from gpner.streaming import count_lines, predict_stream, text_lines
from tests.conftest import _synthetic_examples

SRC = str(Path(__file__).resolve().parents[1] / "src")
LINES = ["张三在上海工作。", "", "北京大学的赵敏来了", "   ", "😀王小明去了广州。", "刘备去了杭州"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_lines(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.write_bytes("".join(line + end for line in lines).encode("utf-8"))
    return path


def test_one_record_per_input_line_empty_lines_included(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    source = _write_lines(tmp_path / "in.txt", LINES, end="\r\n")  # CRLF is a line break too
    out = tmp_path / "out.jsonl"
    assert main(["predict", checkpoint, str(source), "-o", str(out), "--threshold", "-1"]) == 0
    records = _records(out)
    assert [r["text"] for r in records] == LINES
    assert records[1]["spans"] == [] and records[3]["spans"] == []
    assert any(r["spans"] for r in records)  # the lowered threshold predicts something
    for record in records:
        for span in record["spans"]:
            assert record["text"][span["start"] : span["end"]] == span["text"]
            assert span["score"] > -1
            assert 0 < span["probability"] < 1
            assert abs(span["probability"] - 1 / (1 + 2.718281828459045 ** -span["score"])) < 1e-3
    assert f"wrote {len(LINES)} jsonl records to {out}" in capsys.readouterr().err


def test_chunking_does_not_change_the_output(tiny_checkpoint, tmp_path):
    checkpoint, _ = tiny_checkpoint
    source = _write_lines(tmp_path / "in.txt", LINES * 5)
    outputs = []
    for chunk in ("1", "4", "1024"):
        out = tmp_path / f"out{chunk}.jsonl"
        assert (
            main(["predict", checkpoint, str(source), "-o", str(out), "--chunk-size", chunk]) == 0
        )
        outputs.append(
            [
                (r["text"], [(s["start"], s["end"], s["label"]) for s in r["spans"]])
                for r in _records(out)
            ]
        )
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == len(LINES) * 5


def test_stdin_keeps_line_alignment(tiny_checkpoint, monkeypatch, capsys):
    checkpoint, _ = tiny_checkpoint
    raw = "".join(f"{line}\n" for line in LINES).encode("utf-8")

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    assert main(["predict", checkpoint, "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["text"] for line in out] == LINES


def test_progress_bar_on_stderr(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    source = _write_lines(tmp_path / "in.txt", LINES)
    assert main(["predict", checkpoint, str(source), "-o", str(tmp_path / "o"), "--progress"]) == 0
    err = capsys.readouterr().err
    assert f"{len(LINES)}/{len(LINES)}" in err and "lines" in err


def test_streaming_reads_lazily_and_flushes_every_chunk(tmp_path):
    pulled = []
    flushed_at = []

    def texts():
        for k in range(10):
            pulled.append(k)
            yield f"text {k}"

    class Writer:
        done, last_text = 0, None

        def __init__(self):
            self.records = []

        def write(self, text, spans, scores):
            self.records.append(text)

        def flush(self):
            flushed_at.append((len(self.records), len(pulled)))

    def predict(batch):
        assert len(batch) <= 3
        return [[(Span(0, 4, "X"), 1.0)] for _ in batch]

    writer = Writer()
    assert predict_stream(predict, texts(), writer, chunk_size=3) == 10
    # every chunk is written and flushed before more than one further chunk is read
    assert flushed_at == [(3, 3), (6, 6), (9, 9), (10, 10)]


def test_text_lines_and_count_lines_agree(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffa\r\n\nb\u2028c\rd\nlast".encode())
    with open(path, "rb") as f:
        lines = list(text_lines(f))
    # only \n breaks lines (a BOM is dropped); \u2028 and a lone \r stay in the text
    assert lines == ["a", "", "b\u2028c\rd", "last"]
    assert count_lines(path) == 4
    path.write_bytes(b"ok\n\xff\n")
    with open(path, "rb") as f, pytest.raises(ValueError, match=r"t\.txt:2: not valid UTF-8"):
        list(text_lines(f, str(path)))


@pytest.mark.parametrize("fmt", ["label-studio", "doccano", "brat"])
def test_predictions_import_into_annotation_tools(tiny_checkpoint, tmp_path, fmt):
    checkpoint, _ = tiny_checkpoint
    source = _write_lines(tmp_path / "in.txt", LINES)
    reference = tmp_path / "ref.jsonl"
    args = ["--threshold", "-1"]
    assert main(["predict", checkpoint, str(source), "-o", str(reference), *args]) == 0
    out = tmp_path / ("out" if fmt == "brat" else f"out.{fmt}")
    assert main(["predict", checkpoint, str(source), "-o", str(out), "--format", fmt, *args]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # label-studio: "read from model predictions"
        got = read(out, format=fmt)
    expected = [
        Example(r["text"], sorted(Span(s["start"], s["end"], s["label"]) for s in r["spans"]))
        for r in _records(reference)
    ]
    assert got == expected
    if fmt == "label-studio":
        tasks = json.loads(out.read_text(encoding="utf-8"))
        scores = [[s["probability"] for s in r["spans"]] for r in _records(reference)]
        for task, probs in zip(tasks, scores):
            assert [x["score"] for x in task["predictions"][0]["result"]] == probs
            assert task["predictions"][0]["model_version"].startswith("gpner ")


def test_resume_after_a_kill_keeps_what_was_written_and_finishes(tiny_checkpoint, tmp_path):
    checkpoint, _ = tiny_checkpoint
    texts = [ex.text for ex in _synthetic_examples(1500, seed=7)]
    texts[::37] = [""] * len(texts[::37])
    source = _write_lines(tmp_path / "big.txt", texts)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gpner", "predict", checkpoint, str(source), "-o", str(out)]
    proc = subprocess.Popen([*command, "--chunk-size", "8"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_file() and out.stat().st_size > 0):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no output within 2 minutes"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes()
    kept = before[: before.rfind(b"\n") + 1]  # a torn last line may follow
    kept_lines = kept.decode("utf-8").splitlines()
    assert 0 < len(kept_lines) < len(texts), "the kill should land mid-run"
    assert [json.loads(x)["text"] for x in kept_lines] == texts[: len(kept_lines)]

    assert main(["predict", checkpoint, str(source), "-o", str(out), "--resume"]) == 0
    after = out.read_bytes()
    assert after.startswith(kept)  # nothing written before the kill changed
    records = _records(out)
    assert [r["text"] for r in records] == texts
    # the resumed records are the model's predictions for their texts
    sample = list(range(len(kept_lines), len(texts), 97)) + [len(texts) - 1]
    fresh = tmp_path / "fresh.jsonl"
    _write_lines(tmp_path / "sample.txt", [texts[k] for k in sample])
    assert main(["predict", checkpoint, str(tmp_path / "sample.txt"), "-o", str(fresh)]) == 0
    for k, record in zip(sample, _records(fresh)):
        assert [(s["start"], s["end"], s["label"]) for s in records[k]["spans"]] == [
            (s["start"], s["end"], s["label"]) for s in record["spans"]
        ]

    # resuming a finished run writes nothing more
    assert main(["predict", checkpoint, str(source), "-o", str(out), "--resume"]) == 0
    assert out.read_bytes() == after


def test_predict_reads_any_data_format(tiny_checkpoint, tmp_path):
    checkpoint, _ = tiny_checkpoint
    gold = [Example("张三在上海工作。", [Span(0, 2, "PER")]), Example("", [])]
    brat = tmp_path / "brat"
    with open_writer(brat, "brat") as writer:
        for ex in gold:
            writer.write(ex.text, ex.spans)
    out = tmp_path / "out.jsonl"
    assert main(["predict", checkpoint, str(brat), "-o", str(out)]) == 0
    assert [r["text"] for r in _records(out)] == [ex.text for ex in gold]


def test_streaming_and_resume_with_the_onnxruntime_backend(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="pip install gpner[onnx]")
    pytest.importorskip("onnx", reason="pip install gpner[onnx]")
    checkpoint, _ = tiny_checkpoint
    onnx_model = tmp_path / "model.onnx"
    assert main(["export", checkpoint, str(onnx_model)]) == 0
    source = _write_lines(tmp_path / "in.txt", LINES * 3)
    torch_out, ort_out = tmp_path / "torch.jsonl", tmp_path / "ort.jsonl"
    args = ["--threshold", "-1", "--chunk-size", "4"]
    assert main(["predict", checkpoint, str(source), "-o", str(torch_out), *args]) == 0
    ort = ["predict", str(onnx_model), str(source), "-o", str(ort_out), "--backend", "onnxruntime"]
    assert main([*ort, *args]) == 0
    spans = [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in _records(ort_out)]
    assert spans == [
        [(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in _records(torch_out)
    ]
    # killed after 7 records (one torn): the onnxruntime run resumes like the torch one
    whole = ort_out.read_bytes()
    cut = whole.split(b"\n")
    ort_out.write_bytes(b"\n".join(cut[:7]) + b"\n" + cut[7][:5])
    assert main([*ort, *args, "--resume"]) == 0
    assert ort_out.read_bytes() == whole
    assert "after the 7 already there" in capsys.readouterr().err
