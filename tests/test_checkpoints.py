"""Model directories (safetensors + JSON), resume states (weights_only) and old pickles.

The central check: a crafted pickle that would run code when loaded (it writes a marker file) is
refused by every path of the library and the CLI that loads a model or a resume state, and the
marker never appears.
"""

import importlib.util
import json

import numpy as np
import pytest
import torch

import gpner
from gpner import checkpoints
from gpner.cli import main
from gpner.config import ConfigError, config_to_dict, load_config
from gpner.data.readers import read
from gpner.decoding import decode
from gpner.model import NERModel, build_model, build_tokenizer
from gpner.training import train
from tests.conftest import tiny_config_overrides


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(tiny_data, tmp_path, **extra) -> NERModel:
    cfg = load_config(None, tiny_config_overrides(*tiny_data, tmp_path / "unused", **extra))
    examples = read(tiny_data[0])
    torch.manual_seed(0)
    return build_model(cfg, ["LOC", "ORG", "PER"], build_tokenizer(cfg, [e.text for e in examples]))


def _same_outputs(a: NERModel, b: NERModel) -> bool:
    ids = torch.randint(2, 10, (2, 7))
    am = torch.ones(2, 7, dtype=torch.bool)
    am[1, 5:] = False
    return torch.equal(a.eval()(ids, am), b.eval()(ids, am))


def _legacy_payload(model: NERModel) -> dict:
    """What gpner 0.1 pickled into best.pt."""
    return {
        "format": 1,
        "gpner_version": "0.1.0",
        "config": config_to_dict(model.config),
        "labels": list(model.labels),
        "tokenizer": model.tokenizer.state_dict(),
        "encoder_spec": model.encoder.spec(),
        "state_dict": model.state_dict(),
    }


class _RunsCode:
    """Pickles to a call of ``exec`` that creates the marker file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


# ---------------------------------------------------------------------------- model directories


def test_model_directory_round_trip_is_exact_and_plain(tmp_path, tiny_data):
    model = _model(tiny_data, tmp_path)
    path = gpner.save(model, tmp_path / "m")
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "gpner.json"}
    meta = json.loads((path / "gpner.json").read_text(encoding="utf-8"))
    assert meta["format"] == "gpner-model" and meta["format_version"] == 1
    assert meta["gpner_version"] == gpner.__version__
    assert meta["labels"] == ["LOC", "ORG", "PER"]
    assert meta["tokenizer"]["type"] == "char" and "张" in meta["tokenizer"]["vocab"]
    assert meta["encoder"]["kind"] == "char_transformer"
    assert meta["config"]["encoder"]["hidden_size"] == 32
    # safetensors: an 8-byte header length, then a JSON header; no pickle opcodes
    raw = (path / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "head.proj.weight" in header
    again = gpner.load(path)
    assert not again.training
    assert _same_outputs(model, again)
    assert again.tokenizer.state_dict() == model.tokenizer.state_dict()
    assert again.config == model.config


def test_hf_model_directory_keeps_its_tokenizer_beside_it(tmp_path, tiny_data, tiny_hf_dir):
    import shutil

    extra = {"encoder.kind": '"hf"', "encoder.path": f'"{tiny_hf_dir}"'}
    model = _model(tiny_data, tmp_path, **extra)
    path = gpner.save(model, tmp_path / "m")
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "gpner.json", "tokenizer.json"}
    meta = json.loads((path / "gpner.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"]["file"] == "tokenizer.json"
    assert "tokenizer_json" not in meta["tokenizer"]
    shutil.rmtree(tiny_hf_dir)  # the saved model never needs the original directory
    again = gpner.load(path)
    assert again.tokenizer.state_dict() == model.tokenizer.state_dict()
    assert _same_outputs(model, again)


def test_save_replaces_a_model_but_never_deletes_other_files(tmp_path, tiny_data):
    a = _model(tiny_data, tmp_path)
    b = _model(tiny_data, tmp_path, **{"head.kind": '"efficient_global_pointer"'})
    gpner.save(a, tmp_path / "m")
    gpner.save(b, tmp_path / "m")
    assert type(gpner.load(tmp_path / "m").head).__name__ == "EfficientGlobalPointer"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(checkpoints.CheckpointError, match="notes.txt"):
        gpner.save(a, tmp_path / "m")
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_broken_model_directories_get_clear_errors(tmp_path, tiny_data):
    model = _model(tiny_data, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gpner.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="no gpner.json"):
        gpner.load(tmp_path / "empty")
    path = gpner.save(model, tmp_path / "m")
    meta = json.loads((path / "gpner.json").read_text())
    (path / "gpner.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(checkpoints.CheckpointError, match="upgrade gpner"):
        gpner.load(path)
    (path / "gpner.json").write_text(json.dumps({**meta, "labels": ["A", "B"]}))
    with pytest.raises(checkpoints.CheckpointError, match="does not match"):
        gpner.load(path)
    (path / "gpner.json").write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="gpner.json: not valid JSON"):
        gpner.load(path)


def _rewrite_weights(path, change) -> None:
    """Rewrite ``path``/model.safetensors with ``change(tensors)`` applied to its tensor dict."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_weights_that_do_not_match_gpner_json_get_a_checkpoint_error(tmp_path, tiny_data, capsys):
    path = gpner.save(_model(tiny_data, tmp_path), tmp_path / "m")
    _rewrite_weights(path, lambda t: t.pop("head.proj.weight"))
    with pytest.raises(checkpoints.CheckpointError, match=r"missing \['head\.proj\.weight'\]"):
        gpner.load(path)
    # the command line shows one error line, not a traceback
    assert main(["evaluate", str(path), str(tiny_data[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpner: error: ") and "model.safetensors" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    _rewrite_weights(path, lambda t: t.update(extra=torch.zeros(2)))
    with pytest.raises(checkpoints.CheckpointError, match=r"unexpected \['extra'\]"):
        gpner.load(path)


# ------------------------------------------------------------------------ crafted pickles


@pytest.fixture
def crafted(tmp_path, tiny_data):
    """(a .pt file that runs code when unpickled, the marker file that code would create)."""
    marker = tmp_path / "MARKER"
    model = _model(tiny_data, tmp_path)
    payload = {**_legacy_payload(model), "optimizer": {}, "hook": _RunsCode(marker)}
    path = tmp_path / "shared.pt"
    torch.save(payload, path)
    return path, marker


def test_the_crafted_pickle_really_runs_code(crafted):
    path, marker = crafted
    torch.load(path, weights_only=False)  # what gpner 0.1 did
    assert marker.read_text() == "ran"


def test_no_load_path_runs_code_from_a_crafted_pickle(crafted, tmp_path, tiny_data, capsys):
    path, marker = crafted
    # the library
    with pytest.raises(checkpoints.CheckpointError, match="convert-checkpoint"):
        gpner.load(path)
    with pytest.raises(checkpoints.CheckpointError, match="not a plain-tensor resume state"):
        checkpoints.load_state(path)
    with pytest.raises(checkpoints.CheckpointError, match="--trust-pickle"):
        checkpoints.convert_checkpoint(path, tmp_path / "converted")
    # the pickle posing as the weights of a model directory
    good = gpner.save(_model(tiny_data, tmp_path), tmp_path / "m")
    (good / "model.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(checkpoints.CheckpointError, match="safetensors"):
        gpner.load(good)
    # the CLI: every command that loads a model or a state
    dev = str(tiny_data[1])
    capsys.readouterr()
    assert main(["predict", str(path), dev]) == 2
    assert "convert-checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(path), dev]) == 2
    assert main(["predict", str(good), dev]) == 2
    assert main(["convert-checkpoint", str(path), str(tmp_path / "c")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["export", str(path), str(tmp_path / "x.onnx")]) == 2
    assert main(["serve", str(path), "--port", "0"]) == 2
    if importlib.util.find_spec("onnxruntime") is not None:
        assert main(["predict", str(path), dev, "--backend", "onnxruntime"]) == 2
        assert "not a readable ONNX model" in capsys.readouterr().err
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(path.read_bytes())
    sets = []
    for item in tiny_config_overrides(*tiny_data, out, **{"train.epochs": 1}):
        sets += ["--set", item]
    assert main(["train", *sets, "--resume"]) == 2
    assert "not a plain-tensor resume state" in capsys.readouterr().err
    assert not marker.exists()


# ----------------------------------------------------------------------------- conversion


def test_old_model_checkpoint_converts_without_unpickling(tmp_path, tiny_data, capsys):
    model = _model(tiny_data, tmp_path)
    torch.save(_legacy_payload(model), tmp_path / "best.pt")
    with pytest.raises(checkpoints.CheckpointError, match="convert-checkpoint"):
        gpner.load(tmp_path / "best.pt")
    assert main(["convert-checkpoint", str(tmp_path / "best.pt"), str(tmp_path / "best")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "pickle" in err and "model directory" in err
    assert _same_outputs(model, gpner.load(tmp_path / "best"))


def test_old_resume_state_converts_only_when_trusted_and_resumes(tmp_path, tiny_data):
    out = tmp_path / "run"
    cfg = load_config(None, tiny_config_overrides(*tiny_data, out, **{"train.epochs": 2}))
    cfg.train.epochs = 1
    train(cfg)
    state = checkpoints.load_state(out / "last.pt")
    # rewrite it as gpner 0.1 did: the model payload, numpy's RNG state as an array
    model = checkpoints.model_from_payload(state)
    name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    old = {
        **_legacy_payload(model),
        **{k: state[k] for k in ("optimizer", "scheduler", "history", "best_f1", "best_epoch")},
        "epoch": state["epoch"],
        "rng": {**state["rng"], "numpy": (name, keys.numpy().astype(np.uint32), pos, 0, 0.0)},
    }
    old["config"]["train"]["epochs"] = 2
    torch.save(old, out / "last.pt")
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.load_state(out / "last.pt")
    with pytest.raises(checkpoints.CheckpointError, match="--trust-pickle"):
        checkpoints.convert_checkpoint(out / "last.pt", out / "last.pt")
    kind = checkpoints.convert_checkpoint(out / "last.pt", out / "last.pt", trust=True)
    assert kind == "state"
    converted = checkpoints.load_state(out / "last.pt")
    assert converted["epoch"] == 1 and torch.equal(converted["rng"]["numpy"][1], keys)
    cfg.train.epochs = 2
    resumed = train(cfg, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_resume_state_is_plain_tensors_and_containers(tmp_path, tiny_data):
    out = tmp_path / "run"
    train(load_config(None, tiny_config_overrides(*tiny_data, out, **{"train.epochs": 1})))
    state = torch.load(out / "last.pt", weights_only=True)  # the restricted unpickler accepts it
    assert state["format"] == "gpner-train-state"
    assert {"optimizer", "scheduler", "rng", "history", "state_dict"} <= set(state)
    assert _same_outputs(checkpoints.model_from_payload(state), gpner.load(out / "best"))


def test_a_saved_max_width_of_zero_never_reaches_inference(tmp_path, tiny_data):
    # The old bug: 0 meant "no limit" to the model builder but was passed on to decoding. A model
    # directory that says 0 is now refused at load, naming the file and the field.
    path = gpner.save(_model(tiny_data, tmp_path), tmp_path / "m")
    meta = json.loads((path / "gpner.json").read_text())
    meta["config"]["head"]["max_width"] = 0
    (path / "gpner.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"gpner\.json.*head\.max_width: must be >= 1, got 0"):
        gpner.load(path)
    with pytest.raises(ValueError, match="max_width"):
        decode(torch.zeros(1, 1, 4, 4), 0.0, False, torch.ones(1, 4, dtype=torch.bool), max_width=0)
