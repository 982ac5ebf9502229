"""Progress bars: silent unless switched on, then on stderr only; library code prints nothing when off."""

from __future__ import annotations

import pytest
import torch
from helpers_models import tiny_model
from torch import nn
from typer.testing import CliRunner

from prunekit import progress
from prunekit.cli import app
from prunekit.recover import finetune

TINY = f"{tiny_model.__module__}:tiny_model"


def _data():
    torch.manual_seed(0)
    return [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(3)]


def test_off_when_stderr_is_not_a_terminal_even_with_the_cli_default_on(capfd, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(progress, "_cli", {"on": True})
    assert not progress.enabled()  # pytest's stderr is no terminal
    assert list(progress.track(range(3), "work")) == [0, 1, 2]
    finetune(nn.Linear(6, 3), _data(), epochs=2, lr=0.01)
    assert capfd.readouterr() == ("", "")


def test_forced_on_it_draws_a_bar_with_an_eta_on_stderr_and_nothing_on_stdout(capfd, monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled() and not progress.enabled(False)
    finetune(nn.Linear(6, 3), _data(), epochs=2, lr=0.01)
    out, err = capfd.readouterr()
    assert out == ""
    assert "finetune" in err and "6/6" in err and "eta" in err
    assert "epoch 1: loss" in err and "epoch 2: loss" in err


def test_one_bar_at_a_time(capfd):
    with progress.progress_bar("outer", 2, progress=True) as bar:
        assert list(progress.track(range(2), "inner", progress=True)) == [0, 1]
        bar.advance(2)
    err = capfd.readouterr().err
    assert "outer" in err and "inner" not in err


def test_cli_quiet_and_piped_output_show_no_bar(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    runner = CliRunner()
    args = ["sensitivity", TINY, "--input-shape", "2,4,8,8", "--ratios", "0.5"]
    piped = runner.invoke(app, args)
    assert piped.exit_code == 0 and piped.stderr == ""
    quiet = runner.invoke(app, ["--quiet", *args])
    assert quiet.exit_code == 0 and quiet.stderr == "" and not progress._cli["on"]
    monkeypatch.setenv(progress.ENV, "1")
    forced = runner.invoke(app, args)
    assert forced.exit_code == 0 and "sensitivity" in forced.stderr and "eta" in forced.stderr


def test_check_shows_its_stages_with_an_eta_only_when_on(monkeypatch):
    """`check` advances one bar through its named stages (MACs, trace + score, masked reference, ...); the
    bar redraws ten times a second, so only the first stage and the end are sure to be drawn."""
    runner = CliRunner()
    args = ["check", TINY, "--input-shape", "2,4,8,8", "--ratio", "0.5"]
    monkeypatch.delenv(progress.ENV, raising=False)
    piped = runner.invoke(app, args)
    assert piped.exit_code == 0 and piped.stderr == "", piped.output
    monkeypatch.setenv(progress.ENV, "1")
    forced = runner.invoke(app, args)
    assert forced.exit_code == 0, forced.output
    err = forced.stderr
    assert "check" in err and "eta" in err and "7/7" in err
    assert "MACs of the model" in err and "done" in err  # drawn at the start and at the end
    assert "exact" in forced.stdout and "eta" not in forced.stdout  # the verdict on stdout, the bar not


def test_sparsegpt_shows_a_bar_per_layer(capfd, monkeypatch):
    from prunekit import sparsify

    monkeypatch.setenv(progress.ENV, "1")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    sparsify(model, 0.5, criterion="sparsegpt", data=[torch.randn(16, 8)])
    out, err = capfd.readouterr()
    assert out == "" and "sparsegpt" in err and "2/2" in err and "eta" in err


def test_exports_and_bench_show_bars(tmp_path, monkeypatch):
    """`export --onnx` (export, check, verify), its static INT8 (per calibration batch), `export --format`
    (convert, compare) and `bench` (per model and setting) each draw a bar when on."""
    import numpy as np

    pytest.importorskip("onnxruntime", reason="exports are checked in onnxruntime")
    monkeypatch.setenv(progress.ENV, "1")
    runner = CliRunner()
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((6, 4, 8, 8), dtype=np.float32))
    args = ["export", TINY, "--input-shape", "2,4,8,8", "--onnx", tmp_path / "t.onnx"]
    result = runner.invoke(
        app, [str(a) for a in [*args, "--int8", "static", "--calib", tmp_path / "calib.npy"]]
    )
    assert result.exit_code == 0, result.output
    assert "onnx export, check, verify" in result.stderr and "3/3" in result.stderr
    assert "int8 static" in result.stderr and "5/5" in result.stderr  # prepare, 3 batches of 2, check
    args = ["export", TINY, "--input-shape", "2,4,8,8", "--format", "onnx", "--out", tmp_path / "f.onnx"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0 and "onnxruntime: convert, compare" in result.stderr, result.output
    args = ["bench", TINY, "--vs", TINY, "--input-shape", "2,4,8,8", "--runs", "2", "--batch-sizes", "1,2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "bench" in result.stderr and "4/4" in result.stderr, result.output
