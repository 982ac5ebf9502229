"""Progress bars: silent unless switched on, then on stderr only; library code prints nothing when off."""

from __future__ import annotations

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
