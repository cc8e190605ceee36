"""The command line's help, and every error path: the message and the exit status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpner import __version__
from gpner.cli import build_parser, main
from gpner.data import Example, Span, read
from gpner.data.writers import write
from tests.conftest import _synthetic_examples, tiny_config_overrides


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _usage_error(capsys, *argv: str) -> str:
    """argparse's own errors exit with status 2 and a ``gpner ...: error:`` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------- help


def test_help_has_no_markup_and_there_is_a_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and "|" not in text
    for command in ("train", "evaluate", "predict", "convert"):
        assert command in text
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpner {__version__}"


def test_every_option_of_every_command_is_documented():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"gpner {name}: {action.dest} has no help"
    predict = commands["predict"].format_help()
    for words in ("raw GlobalPointer logit", "sigmoid(score)", "half-open", "--resume"):
        assert words in predict


# --------------------------------------------------------------------------------- evaluate


@pytest.fixture
def labelled(tmp_path):
    path = tmp_path / "dev.jsonl"
    write(_synthetic_examples(12, seed=3), path)
    return path


def test_evaluate_reports_scores_and_skipped_items(tiny_checkpoint, labelled, capsys):
    checkpoint, _ = tiny_checkpoint
    code, out, err = _run(capsys, "evaluate", checkpoint, labelled)
    assert code == 0
    metrics = json.loads(out)
    assert metrics["skipped_items"] == 0 and "unseen_gold_labels" not in metrics
    assert "on 12 examples" in err
    with open(labelled, "a", encoding="utf-8") as f:
        f.write('{"text": "x", "spans": [{"start": 0, "end": 5, "label": "PER"}]}\n')
    code, out, err = _run(capsys, "evaluate", checkpoint, labelled)
    assert code == 2
    assert err.startswith(f"gpner: error: {labelled}:13: span 0 (PER): offsets [0, 5)")
    assert "--lenient" not in out
    code, out, err = _run(capsys, "evaluate", checkpoint, labelled, "--lenient")
    assert code == 0
    assert json.loads(out)["skipped_items"] == 1
    assert "(1 bad items skipped)" in err
    assert "gpner: warning:" in err and "skipped 1 bad record(s) (--lenient)" in err


def test_evaluate_with_the_wrong_format_is_one_error_line(tiny_checkpoint, labelled, capsys):
    checkpoint, _ = tiny_checkpoint
    code, _, err = _run(capsys, "evaluate", checkpoint, labelled, "--format", "conll")
    assert code == 2
    assert err.startswith(f"gpner: error: {labelled}:1: ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "evaluate", checkpoint, labelled, "--format", "bogus")
    assert code == 2
    assert err.startswith("gpner: error: unknown format 'bogus'; expected one of cluener")
    code, _, err = _run(capsys, "evaluate", checkpoint, labelled, "--scheme", "IOB2")
    assert code == 2
    assert err.startswith("gpner: error: --scheme IOB2 only applies to column formats")


def test_format_detection_errors_name_the_flag(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    odd = tmp_path / "odd.data"
    odd.write_text("one\ntwo three four X\n", encoding="utf-8")
    code, _, err = _run(capsys, "evaluate", checkpoint, odd)
    assert code == 2
    assert err.startswith(f"gpner: error: {odd}:1: cannot detect the format")
    assert err.rstrip().endswith("pass --format") and "format=" not in err
    code, _, err = _run(capsys, "convert", odd, tmp_path / "o.jsonl")
    assert code == 2
    assert err.rstrip().endswith("pass --from") and "format=" not in err


def test_evaluate_refuses_unlabelled_data(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    unlabelled = tmp_path / "test.json"  # CLUENER's test split has no "label"
    unlabelled.write_text('{"id": 0, "text": "张三在上海"}\n{"id": 1, "text": "李四"}\n', "utf-8")
    code, _, err = _run(capsys, "evaluate", checkpoint, unlabelled)
    assert code == 2
    assert err.startswith(f"gpner: error: {unlabelled} has no gold entities in its 2 examples")
    plain = tmp_path / "texts.txt"
    plain.write_text("张三在上海\n", encoding="utf-8")
    code, _, err = _run(capsys, "evaluate", checkpoint, plain)
    assert code == 2
    assert err.startswith(f"gpner: error: {plain}: plain text carries no gold entities")
    code, _, err = _run(capsys, "evaluate", checkpoint, "-")
    assert (code, err.strip()) == (
        2,
        "gpner: error: -: plain text carries no gold entities; evaluate needs labelled data "
        "(name its format with --format)",
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("[]", encoding="utf-8")
    code, _, err = _run(capsys, "evaluate", checkpoint, empty, "--format", "jsonl")
    assert (code, err.strip()) == (2, f"gpner: error: {empty}: no examples to evaluate")


def test_evaluate_on_labels_the_model_never_saw(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    foreign = tmp_path / "foreign.jsonl"
    write([Example("张三在上海", [Span(0, 2, "name"), Span(3, 5, "address")])], foreign)
    code, _, err = _run(capsys, "evaluate", checkpoint, foreign)
    assert code == 2
    assert err.startswith(
        f"gpner: error: none of the gold labels of {foreign} (address, name) is a label the "
        "model was trained on (LOC, ORG, PER)"
    )
    mixed = tmp_path / "mixed.jsonl"
    write([Example("张三在上海", [Span(0, 2, "PER"), Span(3, 5, "address")])], mixed)
    code, out, err = _run(capsys, "evaluate", checkpoint, mixed)
    assert code == 0
    assert json.loads(out)["unseen_gold_labels"] == {"address": 1}
    assert (
        f"gpner: warning: {mixed}: gold labels the model never saw: address (1); their 1 of 2 "
        "gold spans can only count as misses"
    ) in err


def test_a_missing_or_bad_model_is_an_error(labelled, tmp_path, capsys):
    code, _, err = _run(capsys, "evaluate", tmp_path / "nope.pt", labelled)
    assert (code, err.strip()) == (2, f"gpner: error: no such model: {tmp_path / 'nope.pt'}")
    code, _, err = _run(capsys, "predict", tmp_path / "nope.pt", labelled)
    assert (code, err.strip()) == (2, f"gpner: error: no such model: {tmp_path / 'nope.pt'}")


# ---------------------------------------------------------------------------------- predict


def test_predict_usage_errors(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    texts = tmp_path / "in.txt"
    texts.write_text("张三\n李四\n", encoding="utf-8")
    code, _, err = _run(capsys, "predict", checkpoint, texts, "--resume")
    assert (code, err.strip()) == (
        2,
        "gpner: error: --resume continues an output file: pass it with -o/--output",
    )
    err = _usage_error(capsys, "predict", checkpoint, texts, "--format", "conll")
    assert (
        "gpner predict: error: argument --format/--to: 'conll' is not an output format "
        "(jsonl, brat, doccano, label-studio); conll names an input format: pass it with --from"
    ) in err
    code, _, err = _run(capsys, "predict", checkpoint, texts, "--format", "brat")
    assert code == 2
    assert err.strip() == (
        "gpner: error: brat output is a directory of .txt/.ann files: pass -o DIR"
    )
    code, _, err = _run(capsys, "predict", checkpoint, tmp_path / "missing.txt")
    assert (code, err.strip()) == (
        2,
        f"gpner: error: no such input file: {tmp_path / 'missing.txt'}",
    )
    code, _, err = _run(capsys, "predict", checkpoint, texts, "-o", tmp_path)
    assert (code, err.strip()) == (
        2,
        f"gpner: error: {tmp_path} is a directory; this format writes a file",
    )
    code, _, err = _run(capsys, "predict", checkpoint, texts, "--chunk-size", "0")
    assert (code, err.strip()) == (
        2,
        "gpner: error: --chunk-size and --batch-size must be positive",
    )
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    code, _, err = _run(capsys, "predict", checkpoint, bad, "-o", tmp_path / "b.jsonl")
    assert code == 2
    assert err.startswith(f"gpner: error: {bad}:2: not valid UTF-8")


def test_predict_resume_refuses_output_of_other_input(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    first, other = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("张三\n李四\n王五\n", encoding="utf-8")
    other.write_text("张三\n赵六\n王五\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(checkpoint), str(first), "-o", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:2]), encoding="utf-8")  # as if killed after two records
    code, _, err = _run(capsys, "predict", checkpoint, other, "-o", out, "--resume")
    assert code == 2
    assert err.strip() == (
        f"gpner: error: {out}: the output's record 2 is for the text '李四', but input text 2 "
        "is '赵六'; the output was written for other input"
    )
    short = tmp_path / "short.txt"
    short.write_text("张三\n", encoding="utf-8")
    code, _, err = _run(capsys, "predict", checkpoint, short, "-o", out, "--resume")
    assert code == 2
    assert "already holds 2 records but the input has only 1 texts" in err
    brat = tmp_path / "brat"
    assert main(["predict", str(checkpoint), str(first), "-o", str(brat), "--format", "brat"]) == 0
    code, _, err = _run(capsys, "predict", checkpoint, first, "-o", brat, "--format", "brat")
    assert code == 2
    assert err.startswith(f"gpner: error: {brat} already holds brat documents")


# ---------------------------------------------------------------------------------- convert


def test_convert_detects_the_format_and_writes_any_tool_format(tmp_path, capsys):
    conll = tmp_path / "x.conll"
    conll.write_text("EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER\n", encoding="utf-8")
    target = tmp_path / "x.jsonl"
    code, _, err = _run(capsys, "convert", conll, target)  # --from detected
    assert code == 0 and err.strip() == f"wrote 2 examples to {target}"
    assert read(target) == read(conll, format="conll")
    for fmt in ("brat", "doccano", "label-studio"):
        out = tmp_path / f"as-{fmt}"
        assert _run(capsys, "convert", target, out, "--to", fmt)[0] == 0
        back = tmp_path / f"back-{fmt}.jsonl"
        assert _run(capsys, "convert", out, back)[0] == 0  # detected again
        assert back.read_text(encoding="utf-8") == target.read_text(encoding="utf-8")
    err = _usage_error(capsys, "convert", target, tmp_path / "y", "--to", "cluener")
    assert "argument --to: 'cluener' is not an output format" in err
    code, _, err = _run(capsys, "convert", target, tmp_path / "as-brat", "--to", "brat")
    assert code == 2
    assert err.startswith(f"gpner: error: {tmp_path / 'as-brat'} already holds brat documents")
    code, _, err = _run(capsys, "convert", tmp_path / "none.json", tmp_path / "z.jsonl")
    assert (code, err.strip()) == (
        2,
        f"gpner: error: no such data file: {tmp_path / 'none.json'}",
    )


def test_convert_lenient_skips_discontinuous_brat_entities(tmp_path, capsys):
    root = tmp_path / "brat"
    root.mkdir()
    (root / "a.txt").write_text("张三在上海", encoding="utf-8")
    (root / "a.ann").write_text(
        "T1\tPER 0 2\t张三\nT2\tLOC 0 1;3 5\t张 上海\nR1\tIn Arg1:T1 Arg2:T2\n", encoding="utf-8"
    )
    out = tmp_path / "a.jsonl"
    code, _, err = _run(capsys, "convert", root, out)
    assert code == 2
    assert err.strip() == (
        f"gpner: error: {root / 'a.ann'}:2: T2 (LOC): discontinuous entity (fragments 0 1;3 5); "
        "gpner spans are contiguous, pass --lenient to skip such entities"
    )
    code, _, err = _run(capsys, "convert", root, out, "--lenient")
    assert code == 0
    assert f"wrote 1 examples to {out} (1 bad items skipped)" in err
    assert "gpner: warning:" in err and "ignored 1 relations" in err
    assert read(out) == [Example("张三在上海", [Span(0, 2, "PER")])]


# ------------------------------------------------------------------------------------ train


def _train_args(tmp_path: Path, train: Path, **extra) -> list[str]:
    dev = tmp_path / "dev.jsonl"
    write(_synthetic_examples(8, seed=2), dev)
    sets = []
    values = {"train.epochs": 1, **extra}
    for item in tiny_config_overrides(train, dev, tmp_path / "run", **values):
        sets += ["--set", item]
    return sets


def test_train_resume_needs_a_checkpoint(tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    write(_synthetic_examples(16, seed=1), train)
    code, _, err = _run(capsys, "train", *_train_args(tmp_path, train), "--resume")
    assert code == 2
    assert err.strip() == (
        f"gpner: error: --resume: there is no {tmp_path / 'run' / 'last.pt'} to resume from; "
        "run without --resume to start fresh (or pass --resume-if-exists)"
    )
    assert not (tmp_path / "run").exists()
    err = _usage_error(capsys, "train", "--resume", "--resume-if-exists")
    assert "argument --resume-if-exists: not allowed with argument --resume" in err


def test_train_lenient_data_counts_skipped_items(tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    write(_synthetic_examples(24, seed=1), train)
    with open(train, "a", encoding="utf-8") as f:
        f.write('{"text": "坏", "spans": [{"start": 0, "end": 3, "label": "PER"}]}\n')
        f.write("{not json\n")
    code, _, err = _run(capsys, "train", *_train_args(tmp_path, train))
    assert code == 2
    assert err.startswith(f"gpner: error: {train}:25: span 0 (PER): offsets [0, 3)")
    lenient = _train_args(tmp_path, train, **{"data.strict": "false"})
    code, out, err = _run(capsys, "train", *lenient, "--resume-if-exists")
    assert code == 0
    assert json.loads(out)["skipped_items"] == 2
    assert f"no {tmp_path / 'run' / 'last.pt'} to resume from: starting fresh" in err
    assert f"data: skipped 2 bad item(s) (data.strict = false): {{'{train}': 2}}" in err
    assert "gpner: warning:" in err and "skipped 2 bad record(s) (data.strict = false)" in err
    log = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["skipped_items"] for line in log] == [2]


# -------------------------------------------------------------- messages that point the right way


def test_onnx_files_and_model_files_get_directions_that_work(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really")
    texts = tmp_path / "texts.txt"
    texts.write_text("张三在上海\n", encoding="utf-8")
    for command in (["serve", onnx], ["render", onnx, texts, "-o", tmp_path / "p.html"]):
        code, _, err = _run(capsys, *command)
        assert code == 2 and len(err.strip().splitlines()) == 1
        # neither command has --backend: the message must not tell the user to pass it to them
        assert f"gpner {command[0]} takes a model directory" in err
        assert "gpner predict and gpner evaluate run .onnx files with --backend onnxruntime" in err
    weights = Path(checkpoint) / "model.safetensors"
    code, _, err = _run(capsys, "predict", weights, texts)
    assert (code, err.strip()) == (
        2,
        f"gpner: error: {weights} is one file of a gpner model directory; pass the directory "
        f"itself: {checkpoint}",
    )
    assert "convert-checkpoint" not in err and "pickle" not in err


def test_a_mistyped_path_is_reported_where_it_was_typed(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    checkpoint, _ = tiny_checkpoint
    root = tmp_path / "data-root"
    (root / "sub").mkdir(parents=True)
    monkeypatch.setenv("GPNER_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    Path("here.txt").write_text("张三在上海\n", encoding="utf-8")
    (root / "sub" / "there.txt").write_text("李四去了北京\n", encoding="utf-8")
    # as typed first, then under the data root
    assert _run(capsys, "predict", checkpoint, "here.txt")[0] == 0
    code, out, _ = _run(capsys, "predict", checkpoint, "sub/there.txt")
    assert code == 0 and json.loads(out)["text"] == "李四去了北京"
    code, _, err = _run(capsys, "predict", checkpoint, "hree.txt")
    assert (code, err.strip()) == (
        2,
        "gpner: error: no such input file: hree.txt (looked for as typed, and under the data "
        f"root as {root / 'hree.txt'})",
    )
    code, _, err = _run(capsys, "evaluate", checkpoint, "dve.json")
    assert code == 2
    assert err.strip() == (
        "gpner: error: no such data file: dve.json (looked for as typed, and under the data "
        f"root as {root / 'dve.json'})"
    )
    code, _, err = _run(capsys, "train", "--set", "data.train=trian.json")
    assert code == 2
    assert "data.train: data file trian.json (looked for as typed" in err
    assert str(root / "trian.json") in err


def test_evaluate_with_a_format_the_file_is_not_in_says_so(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    cluener = tmp_path / "dev.json"
    cluener.write_text(
        '{"text": "张三在上海", "label": {"PER": {"张三": [[0, 1]]}, "LOC": {"上海": [[3, 4]]}}}\n',
        encoding="utf-8",
    )
    assert _run(capsys, "evaluate", checkpoint, cluener)[0] == 0  # detected, it is scored
    code, _, err = _run(capsys, "evaluate", checkpoint, cluener, "--format", "jsonl")
    assert (code, err.strip()) == (
        2,
        f"gpner: error: {cluener} does not look like jsonl data (it has no gold entities as "
        "jsonl); its content looks like cluener: pass --format cluener, or leave --format out "
        "to detect it",
    )


def test_a_bare_string_is_not_predicted_character_by_character(tiny_checkpoint):
    import gpner

    model = gpner.load(tiny_checkpoint[0])
    with pytest.raises(TypeError, match=r"not one string; for one text: \[text\]"):
        gpner.predict(model, "张三在上海")
    assert len(gpner.predict(model, ["张三在上海"])) == 1


def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    from gpner import training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    code, _, err = _run(capsys, "train", "--set", f"output_dir={tmp_path / 'o'}")
    assert (code, err) == (130, "gpner: train interrupted\n")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tiny_checkpoint, tmp_path, umask):
    import stat

    import gpner
    from gpner.atomic import atomic_write_json

    model = gpner.load(tiny_checkpoint[0])
    previous = os.umask(umask)
    try:
        path = gpner.save(model, tmp_path / "m")
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    for file in [*path.iterdir(), tmp_path / "r.json"]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file.name
