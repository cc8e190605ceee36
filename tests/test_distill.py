"""Distillation: the teacher's cells mapped onto the student's tokens by character offsets, the
teacher cache, the objective, the label check and tiny teacher -> student runs of the CLI."""

import json

import pytest
import torch

from gpner import functional as F
from gpner.config import Config, ConfigError
from gpner.data.batching import collate, encode_examples
from gpner.data.spans import Example, Span
from gpner.data.tokenizers import CharTokenizer, HFTokenizer
from gpner.distill import KD_TERMS, Distillation, _Cached, _Live, label_channels
from gpner.teacher import (
    TeacherLogits,
    cached_teacher_logits,
    compute_teacher_logits,
    student_targets,
    token_map,
)
from tests.conftest import pretrained_tokenizer, tiny_config_overrides

# Latin words (cased: the teacher lower-cases), digits, emoji, CJK, spaces and punctuation
TEXTS = [
    "Hello 2024中国😀",
    "iPhone 15发布了😀！",
    "2024年GDP增长5.2%",
    "COVID-19疫情 hello中国",
]


def _wordpiece_tokenizer(directory):
    """A lower-casing WordPiece whose pieces split words and numbers mid-way."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hel", "##lo", "20", "##24", "中", "国", "年"]
    vocab += ["i", "##ph", "##one", "1", "##5", "co", "##vid", "-", "19", "%", ".", "5", "2"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return HFTokenizer(directory)


@pytest.fixture
def wordpiece(tmp_path):
    return _wordpiece_tokenizer(tmp_path / "wp")


def _expected_cell(student, teacher, i, j):
    """By brute force: the teacher cell covering exactly the characters of student cell (i, j)."""
    start, end = student[i][0], student[j][1]
    if start < 0 or end < 0:
        return None
    starts = [k for k, (a, _) in enumerate(teacher) if a == start]
    ends = [k for k, (_, b) in enumerate(teacher) if b == end]
    pairs = [(a, b) for a in starts for b in ends if a <= b]
    return (min(a for a, _ in pairs), max(b for _, b in pairs)) if pairs else None


def _check_mapping(student, teacher):
    first, last = token_map(student, teacher)
    mapped = unmapped = 0
    for i in range(len(student)):
        for j in range(i, len(student)):
            want = _expected_cell(student, teacher, i, j)
            got = (int(first[i]), int(last[j]))
            if want is None:
                assert got[0] < 0 or got[1] < 0 or got[0] > got[1], (i, j, got)
                unmapped += 1
            else:
                assert got == want, (i, j, got, want)
                mapped += 1
    return mapped, unmapped


def test_char_cells_map_onto_wordpiece_cells_by_their_characters(wordpiece):
    chars = CharTokenizer.build(TEXTS)
    text = TEXTS[0]  # "Hello 2024中国😀": hel ##lo | 20 ##24 | 中 | 国 | [UNK]
    teacher = wordpiece.encode(text).offsets
    assert teacher == [(0, 3), (3, 5), (6, 8), (8, 10), (10, 11), (11, 12), (12, 13)]
    student = chars.encode(text).offsets  # one token per character, the space skipped
    first, last = token_map(student, teacher)

    def cell(a, b):  # the student cell of characters [a, b) -> its teacher cell or None
        i = [k for k, (x, _) in enumerate(student) if x == a][0]
        j = [k for k, (_, y) in enumerate(student) if y == b][0]
        return (int(first[i]), int(last[j])) if first[i] >= 0 and last[j] >= 0 else None

    assert cell(0, 5) == (0, 1)  # "Hello" = hel ##lo
    assert cell(0, 3) == (0, 0)  # "Hel" = hel
    assert cell(1, 5) is None  # "ello" starts inside a wordpiece: masked
    assert cell(0, 4) is None  # "Hell" ends inside one
    assert cell(6, 10) == (2, 3)  # "2024" = 20 ##24
    assert cell(6, 9) is None  # "202"
    assert cell(0, 10) == (0, 3)  # "Hello 2024": across the space
    assert cell(10, 12) == (4, 5)  # "中国"
    assert cell(12, 13) == (6, 6)  # the emoji, an [UNK] piece
    for text in TEXTS:
        mapped, unmapped = _check_mapping(
            chars.encode(text).offsets, wordpiece.encode(text).offsets
        )
        assert mapped and unmapped


def test_mapping_with_the_packaged_m3e_tokenizer():
    m3e = pretrained_tokenizer("m3e-small")
    chars = CharTokenizer.build(TEXTS)
    for text in TEXTS:
        teacher = m3e.encode(text).offsets
        assert any(b - a > 1 for a, b in teacher), "m3e should have multi-character pieces here"
        mapped, unmapped = _check_mapping(chars.encode(text).offsets, teacher)
        assert mapped and unmapped
    # the student with special tokens around its windows (wordpieces both sides, one text)
    _check_mapping([(-1, -1)] + m3e.encode(TEXTS[2]).offsets + [(-1, -1)], teacher)


# ------------------------------------------------------------------------ the teacher's logits


class FakeTeacher:
    """A teacher whose logit of cell (c, i, j) is ``c + id_i / 4 + id_j / 16`` (exact in float16),
    whatever the context: what a student cell must receive is known exactly."""

    def __init__(self, tokenizer, labels=("LOC", "ORG", "PER"), max_length=7, max_width=None):
        self.tokenizer, self.labels = tokenizer, list(labels)
        self.config = Config()
        self.config.data.max_length, self.config.data.stride = max_length, 2
        self.config.head.max_width = max_width

    @property
    def label2id(self):
        return {label: i for i, label in enumerate(self.labels)}

    def value(self, c, a, b):
        return c + a / 4 + b / 16

    def __call__(self, ids, mask):
        ids = ids.double()
        c = torch.arange(len(self.labels)).double()[None, :, None, None]
        out = (c + ids[:, None, :, None] / 4 + ids[:, None, None, :] / 16).float()  # (B, C, L, L)
        width = self.config.head.max_width
        return out if width is None else F.dense_to_band(out, width)  # (B, C, L, W)


def _student_rows(texts, max_length=64):
    chars = CharTokenizer.build(texts)
    features, _ = encode_examples([Example(t, []) for t in texts], chars, {}, max_length)
    return chars, features


@pytest.mark.parametrize("max_width", [None, 3])
def test_student_targets_hold_the_teacher_cell_of_the_same_characters(wordpiece, max_width):
    teacher = FakeTeacher(wordpiece, max_length=7)  # windows of 5 wordpieces: long texts split
    floor = 1.0
    logits = compute_teacher_logits(teacher, TEXTS, floor, batch_size=3)
    _, features = _student_rows(TEXTS)
    rows = [(f.example_index, f.offsets) for f in features]
    length = max(len(f.offsets) for f in features)
    channels = torch.tensor([2, 0, 1])  # the student's types in another order than the teacher's
    got, mask = student_targets(logits, rows, length, channels)
    checked = masked = 0
    for b, f in enumerate(features):
        t_ids = wordpiece.encode(TEXTS[f.example_index]).ids
        t_off = wordpiece.encode(TEXTS[f.example_index]).offsets
        windows = [tuple(w) for w in logits.text(f.example_index)[1].tolist()]
        for i in range(length):
            for j in range(length):
                pair = None
                if i <= j < len(f.offsets):
                    pair = _expected_cell(f.offsets, t_off, i, j)
                if pair is not None and not any(s <= pair[0] and pair[1] < e for s, e in windows):
                    pair = None  # no teacher window held the whole span
                if pair is None:
                    assert not mask[b, 0, i, j]
                    masked += 1
                    continue
                assert mask[b, 0, i, j]
                for c in range(3):
                    want = max(
                        teacher.value(int(channels[c]), t_ids[pair[0]], t_ids[pair[1]]), floor
                    )
                    assert float(got[b, c, i, j]) == want
                checked += 1
    assert checked > 50 and masked > 50
    assert len(logits.windows) > len(TEXTS)  # some texts took several teacher windows
    if max_width is not None:
        band, band_mask = student_targets(logits, rows, length, channels, max_width)
        torch.testing.assert_close(band, F.dense_to_band(got, max_width, fill=0.0))
        assert torch.equal(band_mask, F.dense_to_band(mask, max_width))


def test_a_teacher_with_max_width_leaves_wider_cells_unknown(wordpiece):
    logits = compute_teacher_logits(FakeTeacher(wordpiece, max_width=2), TEXTS, -100.0)
    _, known = logits.dense(0, 3)
    width = torch.arange(known.shape[0])[None, :] - torch.arange(known.shape[0])[:, None]
    assert known.any() and not known[width >= 2].any()


def test_cache_round_trip_reuse_and_size(wordpiece, tmp_path):
    teacher = FakeTeacher(wordpiece, max_length=32)
    weights = tmp_path / "teacher.bin"  # what the fingerprint hashes
    weights.write_bytes(b"weights")
    first, path, hit = cached_teacher_logits(teacher, weights, TEXTS, 2.0, tmp_path / "cache")
    assert not hit and path.is_file()
    again, path2, hit = cached_teacher_logits(teacher, weights, TEXTS, 2.0, tmp_path / "cache")
    assert hit and path2 == path
    for name in TeacherLogits.TENSORS:
        assert torch.equal(getattr(first, name), getattr(again, name))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["bytes_per_example"] == first.nbytes / len(TEXTS) == again.meta["bytes_per_example"]
    assert meta["labels"] == teacher.labels and meta["floor"] == 2.0
    assert first.values.dtype == torch.float16 and first.cells.dtype == torch.int16
    assert bool((first.values.float() > 2.0).all())  # only the cells above the floor are kept
    # another floor, other texts or other teacher files: another cache file
    assert cached_teacher_logits(teacher, weights, TEXTS, 1.0, tmp_path / "cache")[1] != path
    assert cached_teacher_logits(teacher, weights, TEXTS[:2], 2.0, tmp_path / "cache")[1] != path
    weights.write_bytes(b"other weights")
    assert cached_teacher_logits(teacher, weights, TEXTS, 2.0, tmp_path / "cache")[1] != path


# ------------------------------------------------------------------------------- the objective


class _Student(torch.nn.Module):
    """A tiny char model: embedding + GlobalPointer head."""

    def __init__(self, vocab, types=3):
        super().__init__()
        from gpner.heads import build_head

        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(vocab, 16)
        self.head = build_head("global_pointer", 16, types, 8, None)

    def span_factors(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        return self.head.factors(self.embedding(input_ids), attention_mask)


def test_unlabelled_rows_get_no_cross_entropy_and_live_equals_cached(wordpiece):
    texts = ["张三在北京工作。", "Hello 2024中国😀", "iPhone 15发布了"]
    examples = [Example(texts[0], [Span(0, 2, "PER"), Span(3, 5, "LOC")])]
    examples += [Example(t, []) for t in texts[1:]]  # unlabelled: indices 1 and 2
    chars = CharTokenizer.build(texts)
    label2id = {"LOC": 0, "ORG": 1, "PER": 2}
    features, _ = encode_examples(examples, chars, label2id, 64)
    teacher = FakeTeacher(wordpiece, max_length=32)
    channels = torch.arange(3)
    logits = compute_teacher_logits(teacher, texts, -1.0)
    model = _Student(chars.vocab_size)
    cached = Distillation(_Cached(logits), channels, 1, "gp_kl", 0.5, 2.0, -1.0)
    live = Distillation(_Live(teacher, texts, -1.0, 8), channels, 1, "gp_kl", 0.5, 2.0, -1.0)
    both = collate(features, chars.pad_id)
    loss, parts = cached(model, both)
    loss_live, parts_live = live(model, both)
    assert parts == parts_live and torch.equal(loss, loss_live)
    assert parts["kd"] > 0
    factors = model.span_factors(both.input_ids, both.attention_mask)
    ce_labelled = F.fused_crossentropy(factors, both.spans, "none")[:1].mean()
    assert parts["ce"] == pytest.approx(ce_labelled.item())
    only_unlabelled = collate(features[1:], chars.pad_id)
    loss, parts = cached(model, only_unlabelled)
    assert parts["ce"] == 0.0 and loss.item() == pytest.approx(0.5 * parts["kd"])
    loss.backward()  # the KD term alone trains the student
    assert model.embedding.weight.grad.abs().sum() > 0


def test_kd_terms_are_registered_and_reach_config_validation():
    from gpner.config import load_config

    assert list(KD_TERMS) == ["gp_kl", "softmax_kl", "mse"]
    for name in KD_TERMS:
        assert load_config(None, [f"distill.kd={name}"]).distill.kd == name
    with pytest.raises(ConfigError, match=r"distill\.kd"):
        load_config(None, ["distill.kd=kl"])
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        load_config(None, ["distill.temperature=0"])


def test_a_different_label_set_is_refused():
    assert label_channels(["LOC", "PER"], ["LOC", "PER"]).tolist() == [0, 1]
    assert label_channels(["PER", "LOC"], ["LOC", "PER"]).tolist() == [1, 0]
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*lacks \['ORG'\]"):
        label_channels(["LOC", "PER"], ["LOC", "ORG", "PER"])


# ----------------------------------------------------------------------------------- the CLI


def _sets(items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


@pytest.fixture
def hf_teacher(tmp_path, tiny_data, tiny_hf_dir):
    """A tiny wordpiece (BERT) teacher trained for seconds on the synthetic data."""
    from gpner.cli import main

    extra = {"encoder.kind": '"hf"', "encoder.path": f'"{tiny_hf_dir}"', "train.epochs": 2}
    assert main(["train", *_sets(tiny_config_overrides(*tiny_data, tmp_path / "t", **extra))]) == 0
    return tmp_path / "t" / "best"


def test_distil_a_wordpiece_teacher_into_a_char_bilstm(tmp_path, tiny_data, hf_teacher, capsys):
    import gpner
    from gpner.cli import main

    unlabeled = tmp_path / "texts.txt"
    unlabeled.write_text("张三在北京工作。\n\n李四去了上海。\n", encoding="utf-8")
    extra = {"encoder.kind": '"bilstm"', "distill.beta": 0.25, "distill.temperature": 2.0}
    args = _sets(tiny_config_overrides(*tiny_data, tmp_path / "s", **extra))
    capsys.readouterr()
    assert main(["distill", str(hf_teacher), *args, "--unlabeled", str(unlabeled)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.splitlines()[-1])
    assert summary["epochs_run"] == 2
    assert "2 unlabelled texts" in captured.err and "written to" in captured.err
    records = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_kd"] > 0 and r["train_ce"] > 0 for r in records)
    (meta_file,) = (tmp_path / "s" / "teacher_logits").glob("*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["examples"] == 48 + 2 and meta["bytes_per_example"] > 0
    student = gpner.load(summary["checkpoint"])
    assert student.config.distill.teacher == str(hf_teacher)
    assert student.config.distill.unlabeled == str(unlabeled)
    # A second student with the same teacher and texts reads the cache.
    cache = tmp_path / "s" / "teacher_logits"
    more = _sets([f'distill.cache_dir="{cache}"', "distill.kd=mse", "head.max_width=4"])
    args = _sets(tiny_config_overrides(*tiny_data, tmp_path / "s2", **extra)) + more
    assert main(["distill", str(hf_teacher), *args, "--unlabeled", str(unlabeled)]) == 0
    assert "read from" in capsys.readouterr().err


def test_a_teacher_with_other_labels_is_refused_before_training(
    tmp_path, tiny_data, tiny_checkpoint, capsys, monkeypatch
):
    from gpner import training
    from gpner.cli import main
    from gpner.data.readers import read, write_jsonl

    monkeypatch.setattr(training, "run_epoch", pytest.fail)
    train, dev = tiny_data
    odd = tmp_path / "odd.jsonl"
    write_jsonl(read(train) + [Example("某某公司", [Span(0, 4, "COMPANY")])], odd)
    args = _sets(tiny_config_overrides(odd, dev, tmp_path / "s"))
    capsys.readouterr()
    assert main(["distill", tiny_checkpoint[0], *args]) == 2
    err = capsys.readouterr().err
    assert "distill.teacher" in err and "COMPANY" in err
    assert not (tmp_path / "s" / "metrics.jsonl").exists()
    assert main(["distill", str(tmp_path / "nope"), *args]) == 2
    assert "distill.teacher: no such model" in capsys.readouterr().err


def test_an_onnx_teacher(tmp_path, tiny_data, tiny_checkpoint, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    import gpner
    from gpner.cli import main
    from gpner.export import export_onnx

    onnx_file = export_onnx(gpner.load(tiny_checkpoint[0]), tmp_path / "teacher.onnx")
    args = _sets(tiny_config_overrides(*tiny_data, tmp_path / "s", **{"train.epochs": 1}))
    assert main(["distill", str(onnx_file), *args, "--set", "distill.cache=false"]) == 0
    assert "runs on every batch" in capsys.readouterr().err


def test_distill_help_lists_the_kd_terms(capsys):
    from gpner.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = capsys.readouterr().out
    assert "distill.kd" in out and all(name in out for name in KD_TERMS)
    assert "TEACHER" in out.upper() and "--unlabeled" in out
