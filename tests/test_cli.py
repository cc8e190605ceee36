"""The command line is a thin shell: each command runs end to end on a tiny model."""

import json

import pytest

from gpner.cli import main
from gpner.data.readers import read, write_jsonl
from tests.conftest import tiny_config_overrides


@pytest.fixture
def trained(tmp_path, tiny_data):
    sets = []
    for item in tiny_config_overrides(*tiny_data, tmp_path / "run", **{"train.epochs": 4}):
        sets += ["--set", item]
    assert main(["train", *sets]) == 0
    return tmp_path / "run" / "best"


def test_train_evaluate_predict_convert(trained, tiny_data, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    assert main(["evaluate", str(trained), str(tiny_data[1])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"micro", "macro", "per_type"}

    # predict from a file in any supported format, and from stdin
    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(trained), str(tiny_data[1]), "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    dev = read(tiny_data[1])
    assert len(records) == len(dev)
    # The records carry exactly the library's predictions, and there are some to check.
    import gpner

    expected = gpner.predict(gpner.load(trained), [ex.text for ex in dev])
    got = [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in records]
    assert got == [[(s.start, s.end, s.label) for s, _ in spans] for spans in expected]
    assert sum(map(len, got)) > 0, "the trained model predicts no span: nothing was checked"
    for record in records:
        for span in record["spans"]:
            assert record["text"][span["start"] : span["end"]] == span["text"]
            assert span["score"] > 0
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("张三在上海工作。\n\n北京大学的赵敏来了\n"))
    assert main(["predict", str(trained), "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # one record per input line, the empty line included
    assert [json.loads(x)["text"] for x in lines] == ["张三在上海工作。", "", "北京大学的赵敏来了"]

    # convert: column data -> jsonl, read back identically
    conll = tmp_path / "x.conll"
    conll.write_text("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n")
    target = tmp_path / "x.jsonl"
    assert main(["convert", str(conll), str(target), "--from", "conll", "--scheme", "IOB2"]) == 0
    assert read(target) == read(conll, format="conll", scheme="IOB2")
    write_jsonl(read(target), tmp_path / "y.jsonl")
    assert (tmp_path / "y.jsonl").read_text() == target.read_text()


def test_bad_config_fails_before_training(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nepochs = 2\nlearning_rate = 0.1\n")
    assert main(["train", str(cfg), "--set", f'output_dir="{tmp_path / "o"}"']) == 2
    assert "train.learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
