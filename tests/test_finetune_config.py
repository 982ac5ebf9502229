"""TrainConfig / DistillConfig: the config and keyword forms of finetune, their checks, and their users."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import prunekit
from prunekit.cli.recover import distill_config, train_config
from prunekit.errors import ConfigError
from prunekit.recipe import recipe_from_dict, run_recipe
from prunekit.recover import DistillConfig, TrainConfig, finetune


def blobs(n: int = 48) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_config_and_keywords_train_to_the_same_weights() -> None:
    options = {"steps": 7, "lr": 0.05, "optimizer": "sgd", "momentum": 0.5, "schedule": "cosine", "seed": 4}
    base, teacher = mlp(), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    by_keywords, by_config = copy.deepcopy(base), copy.deepcopy(base)

    kd = {"teacher": teacher, "kd_alpha": 0.7, "kd_temperature": 2.0}
    finetune(by_keywords, blobs(), **options, **kd, progress=False)
    distill = DistillConfig(teacher=teacher, alpha=0.7, temperature=2.0)
    finetune(by_config, blobs(), TrainConfig(**options), distill=distill, progress=False)

    assert all(torch.equal(a, b) for a, b in zip(weights(by_keywords), weights(by_config), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights(base), weights(by_config), strict=True))


def test_a_keyword_repeating_the_config_is_accepted_and_one_disagreeing_is_refused() -> None:
    cfg = TrainConfig(steps=2, lr=0.01)
    finetune(mlp(), blobs(), cfg, lr=0.01, progress=False)
    with pytest.raises(ConfigError, match=r"lr=0.02 conflicts with config.lr=0.01"):
        finetune(mlp(), blobs(), cfg, lr=0.02, progress=False)
    distill = DistillConfig(teacher=mlp(), alpha=0.3)
    with pytest.raises(ConfigError, match=r"alpha=0.5 conflicts with config.alpha=0.3"):
        finetune(mlp(), blobs(), cfg, distill=distill, kd_alpha=0.5, progress=False)
    with pytest.raises(ConfigError, match=r"conflicts with config\.teacher"):
        finetune(mlp(), blobs(), cfg, distill=distill, teacher=mlp(), progress=False)


@pytest.mark.parametrize(
    "config, distill, message",
    [
        ({"steps": 2}, {"steps": 2}, "config must be a TrainConfig, got dict"),
        (None, "teacher", "distill must be a DistillConfig, got str"),
    ],
)
def test_a_config_of_the_wrong_type_is_refused(config, distill, message) -> None:
    with pytest.raises(ConfigError, match=message):
        finetune(mlp(), blobs(), config, distill=distill, steps=2, progress=False)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": 1.5}, r"kd_alpha must be a number in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, r"kd_alpha must be a number in \[0, 1\]"),
        ({"temperature": 0.0}, "kd_temperature must be a finite number > 0"),
        ({"temperature": float("inf")}, "kd_temperature must be a finite number > 0"),
        ({"feature_kd_weight": -1.0}, "feature_kd_weight must be a finite number >= 0"),
        ({"feature_kd": "0"}, "feature_kd must be a list of module names"),
        ({"teacher": "dense.pt"}, "teacher must be a torch.nn.Module, got str"),
    ],
)
def test_distill_config_checks_its_values_when_built(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**({"teacher": mlp()} | options))


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "exactly one of steps or epochs"),
        ({"steps": 2, "epochs": 1}, "exactly one of steps or epochs"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2, "lr": 0.0}, "lr must be a finite number > 0"),
        ({"steps": 2, "optimizer": "lion"}, "optimizer must be one of adam, sgd"),
        ({"steps": 2, "eval_every": 3}, "no eval_fn"),
        ({"steps": 2, "max_grad_norm": -1}, "max_grad_norm must be a finite number > 0"),
        ({"steps": 2, "restore_best": 1}, "restore_best must be True or False"),
        ({"steps": 2, "seed": 1.5}, "seed must be an int or None"),
    ],
)
def test_train_config_checks_its_values_when_built(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_feature_kd_given_as_a_list_or_a_mapping_is_the_same_config() -> None:
    teacher = mlp()
    assert DistillConfig(teacher, feature_kd=["0"]) == DistillConfig(teacher, feature_kd={"0": "0"})
    d = DistillConfig(teacher, feature_kd={"0": "1"})
    assert d.to_dict()["feature_kd"] == [["0", "1"]]


def test_the_configs_are_exported_from_prunekit() -> None:
    assert prunekit.TrainConfig is TrainConfig and prunekit.DistillConfig is DistillConfig


def test_a_recipe_finetune_section_is_a_train_config_checked_when_read(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="finetune: lr must be a finite number > 0"):
        recipe_from_dict({"method": "structured", "ratio": 0.5, "finetune": {"steps": 2, "lr": -1}})
    seen = []

    def spy(model, data, config=None, **kw):
        seen.append((config, kw))
        return finetune(model, data, config, **kw)

    monkeypatch.setattr(importlib.import_module("prunekit.recover.finetune"), "finetune", spy)
    recipe = recipe_from_dict({"method": "structured", "ratio": 0.5, "seed": 3, "finetune": {"steps": 2}})
    run_recipe(recipe, mlp(), torch.zeros(1, 4), train_data=blobs())
    assert seen == [(TrainConfig(steps=2, seed=3), {"progress": False})]


def test_the_cli_options_map_onto_the_configs() -> None:
    cfg = train_config(None, 5, 0.01, True, 2, val=None)
    assert cfg == TrainConfig(steps=5, lr=0.01, keep_zeros=True, seed=2) and cfg.eval_fn is None
    assert train_config(1, None, 0.01, False, 0, val=blobs()).eval_fn is not None
    teacher = mlp()
    assert distill_config(teacher, None, 2.0) == DistillConfig(teacher, temperature=2.0)
    assert distill_config(None, None, None) is None
