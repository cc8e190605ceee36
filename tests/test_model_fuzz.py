"""A saved model directory, mutated many ways: every load fails with gpner's own error naming the
file at fault, or (a flipped bit among the weights' values) loads as a working model; never
another exception, never a hang.

The mutations: ``model.safetensors`` truncated at every interesting length and with bits flipped
in its header length, header and body, tensors missing, extra, reshaped or of another dtype;
``gpner.json`` with each field of a wrong type, each key missing, unknown and malformed format
versions, not JSON, not UTF-8; ``tokenizer.json`` (an HF encoder's) corrupt, empty or missing.
The number of cases run is printed (``pytest -s``) and checked against a floor.
"""

import json
import random
import signal
from pathlib import Path

import pytest
import torch

import gpner
from gpner.checkpoints import CheckpointError
from gpner.config import ConfigError, load_config
from gpner.data.readers import read
from gpner.model import build_model, build_tokenizer
from tests.conftest import tiny_config_overrides, write_tiny_hf_model

CASE_SECONDS = 60  # a hang fails the case instead of the run


def _save(tiny_data, root: Path, **extra) -> Path:
    config = load_config(None, tiny_config_overrides(*tiny_data, root / "unused", **extra))
    texts = [ex.text for ex in read(tiny_data[0])]
    torch.manual_seed(0)
    model = build_model(config, ["LOC", "ORG", "PER"], build_tokenizer(config, texts), texts)
    return gpner.save(model, root / "model")


class _Hang(Exception):
    pass


def _problem(path: Path, blame: str) -> str | None:
    """Load ``path`` (and predict with it if it loads): None when that works or fails with
    CheckpointError/ConfigError naming ``blame`` in one line, else what went wrong."""

    def hang(*args):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(CASE_SECONDS)
    try:
        gpner.predict(gpner.load(path), ["张三在上海工作。"])
    except (CheckpointError, ConfigError) as error:
        if blame not in str(error):
            return f"the error does not name {blame}: {error}"
        if "\n" in str(error).strip():
            return f"a multi-line error: {error}"
    except _Hang:
        return f"no answer within {CASE_SECONDS} s"
    except Exception as error:  # what the test is about
        return f"{type(error).__name__} instead of gpner's error: {str(error)[:300]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return None


def _safetensors_cases(raw: bytes, rng: random.Random):
    """(name, mutated bytes) of a safetensors file: truncations and bit flips."""
    header = int.from_bytes(raw[:8], "little")
    for cut in sorted({0, 1, 7, 8, 9, 8 + header // 2, 8 + header - 1, 8 + header,
                       8 + header + 1, (8 + header + len(raw)) // 2, len(raw) - 1}):  # fmt: skip
        yield f"truncated at {cut}", raw[:cut]
    for value in (0, 1, header + 1, len(raw), 2**40, 2**64 - 1):
        yield f"header length {value}", value.to_bytes(8, "little") + raw[8:]
    for k in range(40):
        at = rng.randrange(8, 8 + header)
        flipped = bytearray(raw)
        flipped[at] ^= 1 << rng.randrange(8)
        yield f"header bit flip {k} at {at}", bytes(flipped)
    for k in range(10):
        at = rng.randrange(8 + header, len(raw))
        flipped = bytearray(raw)
        flipped[at] ^= 1 << rng.randrange(8)
        yield f"body bit flip {k} at {at}", bytes(flipped)
    yield "garbage", bytes(rng.randrange(256) for _ in range(256))
    yield "a pickle", b"\x80\x04\x95" + raw[3:]


def _tensor_cases(tensors: dict):
    """(name, change) pairs over the weights' tensor dict."""
    first = sorted(tensors)[0]
    yield "missing tensor", lambda t: t.pop(first)
    yield "extra tensor", lambda t: t.update(surplus=torch.zeros(3))
    yield "no tensors", lambda t: t.clear()
    yield "wrong shape", lambda t: t.update({first: torch.zeros(*t[first].shape, 2)})
    yield "transposed", lambda t: t.update({first: t[first].reshape(-1)})
    yield "wrong dtype int", lambda t: t.update({first: t[first].to(torch.int64)})
    yield "wrong dtype half", lambda t: t.update({first: t[first].to(torch.float16)})
    yield "scalar", lambda t: t.update({first: torch.tensor(1.0)})


_WRONG = [None, 0, 1.5, True, "x", [], {}, [1, 2], {"a": 1}]


def _metadata_cases(meta: dict):
    """(name, gpner.json text) mutations."""
    for key in meta:
        missing = {k: v for k, v in meta.items() if k != key}
        yield f"missing {key}", json.dumps(missing)
        for value in _WRONG:
            yield f"{key} = {value!r}", json.dumps({**meta, key: value})
    for version in (0, -1, 2, 99, "1", 1.0, 1.5, None, 2**70):
        yield f"format_version {version!r}", json.dumps({**meta, "format_version": version})
    for section in ("config", "tokenizer", "encoder"):
        for key in meta[section]:
            yield (
                f"{section} without {key}",
                json.dumps({**meta, section: {k: v for k, v in meta[section].items() if k != key}}),
            )
            for value in _WRONG:
                changed = {**meta[section], key: value}
                yield f"{section}.{key} = {value!r}", json.dumps({**meta, section: changed})
    yield "labels of ints", json.dumps({**meta, "labels": [1, 2, 3]})
    yield "duplicate labels", json.dumps({**meta, "labels": ["A", "A", "B"]})
    yield "no labels", json.dumps({**meta, "labels": []})
    yield "an array", json.dumps([meta])
    yield "truncated", json.dumps(meta)[:50]
    yield "empty", ""
    yield "not UTF-8", "\udcff"  # written with surrogateescape: a lone 0xff byte


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # a zero size in a spec
def test_mutated_model_directories_fail_with_gpners_error(tiny_data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    rng = random.Random(0)
    path = _save(tiny_data, tmp_path / "char")
    weights, meta_path = path / "model.safetensors", path / "gpner.json"
    raw, meta_text = weights.read_bytes(), meta_path.read_text(encoding="utf-8")
    problems: dict[str, str | None] = {}
    for name, mutated in _safetensors_cases(raw, rng):
        weights.write_bytes(mutated)
        problems[f"model.safetensors {name}"] = _problem(path, "model.safetensors")
    weights.write_bytes(raw)
    for name, change in _tensor_cases(load_file(weights)):
        weights.write_bytes(raw)
        tensors = load_file(weights)
        change(tensors)
        save_file(tensors, weights, metadata={"format": "pt"})
        problems[f"weights: {name}"] = _problem(path, "model.safetensors")
    weights.write_bytes(raw)
    for name, text in _metadata_cases(json.loads(meta_text)):
        _write_text(meta_path, text)
        problems[f"gpner.json: {name}"] = _problem(path, "gpner.json")
    meta_path.write_text(meta_text, encoding="utf-8")
    weights.unlink()
    problems["no model.safetensors"] = _problem(path, "model.safetensors")

    hf = _save(tiny_data, tmp_path / "hf", **{
        "encoder.kind": '"hf"',
        "encoder.path": f'"{write_tiny_hf_model(tmp_path / "tiny-bert")}"',
    })  # fmt: skip
    tokenizer = hf / "tokenizer.json"
    good = tokenizer.read_text(encoding="utf-8")
    corrupt = {
        "truncated": good[: len(good) // 2],
        "empty": "",
        "not JSON": "tokenizer",
        "an array": "[]",
        "no model": json.dumps({k: v for k, v in json.loads(good).items() if k != "model"}),
        "wrong model type": json.dumps({**json.loads(good), "model": {"type": "Nope"}}),
        "not UTF-8": "\udcff\udcfe",
    }
    for name, text in corrupt.items():
        _write_text(tokenizer, text)
        problems[f"tokenizer.json {name}"] = _problem(hf, "tokenizer.json")
    tokenizer.unlink()
    problems["no tokenizer.json"] = _problem(hf, "tokenizer.json")

    with capsys.disabled():
        print(f"\nmodel-directory fuzz: {len(problems)} mutated directories loaded")
    failed = {case: problem for case, problem in problems.items() if problem}
    assert not failed, "\n".join(f"{case}: {problem}" for case, problem in failed.items())
    assert len(problems) >= 300
