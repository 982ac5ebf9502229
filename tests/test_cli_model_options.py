"""Every command that loads a model offers MODEL and the same loading options, with the same help."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.cli._common import ModelSource, model_command

LOADING = ("--arch", "--trust-pickle", "--trust-code", "--input-shape", "--seed")
COMMANDS = (
    "analyze", "accelerate", "export", "save", "finetune", "sensitivity", "sparsify", "prune", "check",
    "bench",
)  # fmt: skip
OWN_HELP = {("finetune", "--seed"), ("sparsify", "--seed"), ("bench", "--arch")}  # say what else they drive


def _options(command: str) -> dict[str, str]:
    click_command = typer.main.get_command(app).commands[command]
    return {opt: param.help or "" for param in click_command.params for opt in param.opts}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_loading_command_has_the_shared_options(command: str) -> None:
    options = _options(command)
    assert set(LOADING) <= set(options), sorted(set(LOADING) - set(options))
    shared = _options("analyze")
    for opt in LOADING:
        if (command, opt) not in OWN_HELP:
            assert options[opt] == shared[opt], (command, opt)


def test_a_command_keeps_its_own_seed_help_and_the_source_gets_the_value() -> None:
    assert "shuffling" in _options("finetune")["--seed"]
    seen: list[ModelSource] = []
    tiny = typer.Typer()

    @tiny.command()
    @model_command
    def show(source: ModelSource, seed: int = 3, loud: bool = False) -> None:
        seen.append(source)
        typer.echo(f"{seed} {loud}")

    result = CliRunner().invoke(tiny, ["torchvision:resnet18", "--seed", "7", "--arch", "x:y", "--loud"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "7 True"
    assert seen == [ModelSource("torchvision:resnet18", arch="x:y", seed=7)]


def test_model_command_refuses_a_command_declaring_model() -> None:
    def bad(source: ModelSource, model: str = "") -> None: ...

    with pytest.raises(TypeError, match="declares model"):
        model_command(bad)
