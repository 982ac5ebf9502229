"""YAML recipes: validation names the bad key, runs are reproducible, each method does what it says."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure import count_macs
from prunekit.recipe import Recipe, load_recipe, recipe_from_dict, run_recipe


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )  # fmt: skip


X = torch.randn(4, 3, 8, 8)
TRAIN = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(3)]


def test_load_yaml_and_round_trip(tmp_path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(
        "method: structured\ncriterion: l1\nscope: local\ntarget: {macs: 0.5}\nround_to: 2\n"
        "ignore: ['8']\nfinetune: {steps: 2, lr: 0.01}\nseed: 3\n"
    )
    r = load_recipe(p)
    assert isinstance(r, Recipe)
    assert (r.method, r.criterion, r.scope, r.target, r.round_to, r.ignore) == (
        "structured", "l1", "local", {"macs": 0.5}, 2, ["8"]
    )  # fmt: skip
    assert r.finetune == {"steps": 2, "lr": 0.01} and r.seed == 3 and r.schedule.kind == "one-shot"
    assert recipe_from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "data, match",
    [
        ({"method": "structured", "ratoi": 0.5}, "unknown key 'ratoi'"),
        ({"method": "pruning", "ratio": 0.5}, "method: must be one of"),
        ({"method": "structured"}, "exactly one of ratio, target"),
        ({"method": "structured", "ratio": 0.5, "target": {"macs": 0.5}}, "exactly one of"),
        ({"method": "structured", "ratio": 1.5}, "ratio: must be a number"),
        ({"method": "structured", "target": {"flops": 0.5}}, "target: keys are"),
        ({"method": "structured", "target": {"macs": 2}}, r"target: .*\(0, 1\]"),
        ({"method": "unstructured", "n": 2}, "n: not used by method unstructured"),
        ({"method": "layers", "n": 1, "schedule": "gradual"}, "schedule.kind: method layers"),
        (
            {
                "method": "structured",
                "ratio": 0.5,
                "schedule": {"kind": "gradual", "end_step": 7, "frequency": 2},
            },
            "multiple of frequency",
        ),
        (
            {"method": "structured", "ratio": 0.5, "schedule": {"kind": "gradual"}},
            "schedule.end_step: required",
        ),
        ({"method": "structured", "ratio": 0.5, "schedule": {"kidn": "x"}}, "schedule.kidn: unknown key"),
        (
            {"method": "structured", "ratio": 0.5, "finetune": {"epochs": 1, "lrr": 1}},
            "finetune.lrr: unknown",
        ),
        ({"method": "structured", "ratio": 0.5, "finetune": {"lr": 1}}, "exactly one of steps or epochs"),
        ({"method": "structured", "ratio": 0.5, "ignore": "fc"}, "ignore: must be a list"),
        ([1, 2], "a recipe is a mapping"),
    ],
)
def test_bad_recipes_name_the_key(data, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        recipe_from_dict(data)


def test_bad_yaml_file(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("method: [structured\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_structured_target_recipe_is_reproducible() -> None:
    r = recipe_from_dict({"method": "structured", "target": {"macs": 0.5}, "finetune": {"steps": 2}})
    a, b = _net(), _net()
    macs0 = count_macs(a, X)
    ra = run_recipe(r, a, X, train_data=TRAIN)
    run_recipe(r, b, X, train_data=TRAIN)
    assert ra.result["target"]["achieved"] <= 0.5 and count_macs(a, X) <= 0.5 * macs0
    assert len(ra.finetune) == 1 and ra.finetune[0]["steps"] == 2
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_recipe_without_data_fails_before_touching_the_model() -> None:
    net = _net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match="pass train_data"):
        run_recipe(recipe_from_dict({"method": "structured", "ratio": 0.5, "finetune": {"steps": 1}}), net, X)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_gradual_iterative_unstructured_and_layers_recipes() -> None:
    net = _net()
    sched = {"kind": "gradual", "start_step": 0, "end_step": 4, "frequency": 2}
    res = run_recipe(recipe_from_dict({"method": "structured", "ratio": 0.5, "schedule": sched}), net, X,
                     train_data=TRAIN)  # fmt: skip
    assert res.result["removed_units"] == 16 and net[0].out_channels + net[3].out_channels == 16
    net = _net()
    rec = {"method": "structured", "ratio": 0.75, "scope": "local", "finetune": {"steps": 1}}
    rec["schedule"] = {"kind": "iterative", "steps": 2}
    res = run_recipe(recipe_from_dict(rec), net, X, train_data=TRAIN)
    assert len(res.result["steps"]) == 2 and len(res.finetune) == 2 and net[0].out_channels == 4
    net = _net()
    res = run_recipe(recipe_from_dict({"method": "unstructured", "sparsity": 0.8}), net, X)
    assert res.result["sparsity"] == pytest.approx(0.8, abs=1e-3)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.f(x)

    mlp = nn.Sequential(nn.Linear(4, 8), Res(), Res(), nn.Linear(8, 2))
    res = run_recipe(recipe_from_dict({"method": "layers", "n": 1}), mlp, torch.randn(3, 4))
    assert len(res.result["removed"]) == 1 and mlp(torch.randn(3, 4)).shape == (3, 2)
