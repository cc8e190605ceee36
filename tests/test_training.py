"""End-to-end training: checkpoints, load, predict, exact resume, data parallel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpner.checkpoints import load
from gpner.config import load_config
from gpner.inference import evaluate, predict
from gpner.training import train
from tests.conftest import tiny_config_overrides

ROOT = Path(__file__).resolve().parents[1]


def _config(tiny_data, out, **extra):
    train_path, dev_path = tiny_data
    return load_config(None, tiny_config_overrides(train_path, dev_path, out, **extra))


def test_train_writes_self_contained_checkpoints(tmp_path, tiny_data):
    out = tmp_path / "run"
    result = train(_config(tiny_data, out, **{"train.epochs": 6}))
    assert {p.name for p in out.iterdir()} >= {
        "best",
        "last.pt",
        "metrics.jsonl",
        "training.png",
    }
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert result.best_f1 > 0.3, result.history  # it learns the synthetic task
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    assert not list(out.glob(".*"))  # nor temporary directories
    assert {p.name for p in (out / "best").iterdir()} == {"model.safetensors", "gpner.json"}

    model = load(out / "best")  # nothing but the directory
    assert model.labels == ["LOC", "ORG", "PER"]
    from gpner.data.readers import read

    dev = read(tiny_data[1])
    assert evaluate(model, dev)["micro"]["f1"] == pytest.approx(result.best_f1)
    spans = predict(model, ["张三在上海工作。"])[0]
    assert all(0 <= s.start < s.end <= 8 for s, _ in spans)


@pytest.mark.parametrize("kind", ["rdrop", "vat"])
def test_regularised_training_runs(tmp_path, tiny_data, kind):
    out = tmp_path / kind
    result = train(_config(tiny_data, out, **{"regularizer.kind": f'"{kind}"', "train.epochs": 1}))
    record = result.history[0]
    # Dropout is on (encoder.dropout 0.1): the regulariser ran and measured a real difference.
    assert record["train_reg"] > 0 and torch.isfinite(torch.tensor(record["train_loss"]))


def test_band_head_trains_evaluates_and_predicts(tmp_path, tiny_data):
    out = tmp_path / "band"
    extra = {"head.max_width": 4, "train.epochs": 1, "regularizer.kind": '"rdrop"'}
    result = train(_config(tiny_data, out, **extra))
    model = load(out / "best")
    assert model.head.max_width == 4
    from gpner.data.readers import read

    assert evaluate(model, read(tiny_data[1]))["micro"]["f1"] == pytest.approx(result.best_f1)
    spans = predict(model, ["张三在上海工作。"])[0]
    assert all(0 <= s.start < s.end <= 8 and s.end - s.start <= 4 for s, _ in spans)


def test_compiled_kernels_switch_is_scoped_to_training_steps(tmp_path, tiny_data, monkeypatch):
    from gpner.backends import compiled_kernels_enabled
    from gpner.functional._blocked import kernels

    extra = {"train.epochs": 1, "regularizer.kind": '"rdrop"', "train.max_steps_per_epoch": 3}
    eager = train(_config(tiny_data, tmp_path / "eager", **extra))
    # torch.compile replaced by the identity: the kernel code path runs without a C++ build.
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(kernels, "_compiled", {})
    calls = []
    run_kernel = kernels.run
    monkeypatch.setattr(kernels, "run", lambda *a: calls.append(a[1]) or run_kernel(*a))
    extra["train.compiled_kernels"] = "true"
    fused = train(_config(tiny_data, tmp_path / "compiled", **extra))
    assert {"fwd", "bwd"} <= set(calls)
    assert not compiled_kernels_enabled()  # restored after training
    a, b = eager.history[0], fused.history[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["train_reg"] == pytest.approx(a["train_reg"], rel=1e-3, abs=1e-7)


def _run_cli(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "gpner", *args], env=env, cwd=ROOT, **kwargs)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(tmp_path, tiny_data):
    epochs = 5  # enough that the kill lands mid-run even when the poller is descheduled
    extra = {"train.epochs": epochs}
    straight = train(_config(tiny_data, tmp_path / "straight", **extra))

    out = tmp_path / "killed"
    sets = []
    for item in tiny_config_overrides(*tiny_data, out, **extra):
        sets += ["--set", item]
    proc = _run_cli(["train", *sets], stderr=subprocess.DEVNULL)
    log = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and log.read_text().count("\n") >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = log.read_text().count("\n")
    assert 1 <= done < epochs, "the run must be killed after an epoch, before the end"

    resumed = train(_config(tiny_data, out, **extra), resume=True)
    assert [h["dev"] for h in resumed.history] == [h["dev"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path, tiny_data):
    extra = {"train.epochs": 1, "encoder.dropout": 0.0, "train.batch_size": 8}
    single = train(_config(tiny_data, tmp_path / "single", **extra))
    out = tmp_path / "ddp"
    sets = []
    for item in tiny_config_overrides(*tiny_data, out, **extra):
        sets += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "gpner",
        "train",
        *sets,
    ]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # One summary, from rank 0, with rank 0's scores (not a second "best_dev_f1": -1.0 line).
    summaries = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1, done.stdout
    assert summaries[0]["best_dev_f1"] >= 0 and summaries[0]["best_epoch"] == 1
    a = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    hidden = 32
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("self_attn.in_proj_bias"):
            # The attention key bias has an exactly zero true gradient (softmax ignores a shift
            # shared by all keys), so Adam normalises pure rounding noise into steps of up to
            # lr each: compare it within lr * steps, and everything else tightly.
            steps = single.history[0]["steps"]
            assert (x - y)[hidden : 2 * hidden].abs().max() <= 5e-3 * steps
            x, y = (
                torch.cat([x[:hidden], x[2 * hidden :]]),
                torch.cat([y[:hidden], y[2 * hidden :]]),
            )
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4), key
    assert single.history[0]["train_loss"] == pytest.approx(
        json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train_loss"], rel=1e-3
    )


def test_train_leaves_the_callers_config_alone(tmp_path, tiny_data):
    from gpner.config import config_to_dict

    extra = {"train.epochs": 1, "data.validation_fraction": 0.25}
    cfg = _config(tiny_data, tmp_path / "v", **extra)
    before = config_to_dict(cfg)
    train(cfg)
    assert config_to_dict(cfg) == before
    # the checkpoint records that the dev file was replaced by the carved split
    assert load(tmp_path / "v" / "best").config.data.dev is None


def test_patience_stops_after_epochs_without_a_dev_gain_and_resume_keeps_the_stop(
    tmp_path, tiny_data
):
    # lr = 0: the model never changes, so dev F1 is the same every epoch and epoch 1 stays best.
    out = tmp_path / "patient"
    extra = {"train.epochs": 6, "train.patience": 2, "train.lr": 0.0}
    result = train(_config(tiny_data, out, **extra))
    assert result.stopped_early and result.best_epoch == 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.epochs_run == 3
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    again = train(_config(tiny_data, out, **extra), resume=True)  # a stopped run stays stopped
    assert again.epochs_run == 3 and again.stopped_early
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_patience_never_stops_a_run_that_keeps_improving(tmp_path, tiny_data):
    result = train(_config(tiny_data, tmp_path / "run", **{"train.epochs": 2, "train.patience": 5}))
    assert not result.stopped_early and result.epochs_run == 2


def test_patience_must_be_positive(tmp_path, tiny_data):
    from gpner.config import ConfigError

    with pytest.raises(ConfigError, match="train.patience"):
        train(_config(tiny_data, tmp_path / "run", **{"train.patience": 0}))


def test_without_dev_data_the_last_epoch_is_kept(tmp_path, tiny_data):
    from safetensors.torch import load_file

    out = tmp_path / "nodev"
    result = train(_config(tiny_data, out, **{"train.epochs": 3, "data.dev": "none"}))
    assert result.best_epoch == 3 and result.epochs_run == 3
    best = load_file(out / "best" / "model.safetensors")
    last = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert best.keys() == last.keys()
    assert all(torch.equal(best[k], last[k]) for k in best)  # best/ is the last epoch's model


def test_patience_without_dev_data_is_a_config_error_naming_both_keys(tmp_path, tiny_data):
    from gpner.config import ConfigError

    extra = {"train.patience": 2, "data.dev": "none"}
    with pytest.raises(ConfigError, match=r"train\.patience.*data\.dev"):
        train(_config(tiny_data, tmp_path / "run", **extra))
    assert not (tmp_path / "run").exists()
    # a dev split that holds no examples is refused alike, before any epoch
    extra = {"train.patience": 2, "data.dev": f'"{tiny_data[1]}[:0]"'}
    with pytest.raises(ConfigError, match=r"train\.patience.*data\.dev"):
        train(_config(tiny_data, tmp_path / "run", **extra))


def test_progress_bar_only_on_a_terminal(tmp_path, tiny_data, capsys, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    config = _config(tiny_data, tmp_path / "a", **{"train.progress": "true", "train.epochs": 1})
    train(config)  # capsys: stderr is not a terminal, so no bar garbles a log file
    assert "epoch 1:" not in capsys.readouterr().err
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(_config(tiny_data, tmp_path / "b", **{"train.progress": "true", "train.epochs": 1}))
    assert "epoch 1:" in terminal.getvalue() and "\r" in terminal.getvalue()
