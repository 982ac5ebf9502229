"""Sensitivity scan: curves equal physically pruned copies, the model is untouched, allocation is exact."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.structured import apply
from prunekit.structured.sensitivity import SensitivityResult, plan_from_ratios, sensitivity


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 4),
    )


X = torch.randn(6, 3, 8, 8)


def _fidelity(ref: torch.Tensor):
    return lambda m: -float((m(X) - ref).pow(2).mean())


def test_scan_matches_pruned_copies_and_leaves_model_untouched() -> None:
    net = _net().eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
        net[4].running_mean.uniform_(-1, 1)
    ref = net(X).detach()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = [id(p) for p in net.parameters()]
    sens = sensitivity(net, X, _fidelity(ref), ratios=[0.25, 0.5, 0.75])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [id(p) for p in net.parameters()] == params and not net.training
    assert sens.baseline == 0.0
    assert [(c.width, c.removed) for c in sens.curves] == [(8, [2, 4, 6]), (12, [3, 6, 9])]
    for c in sens.curves:
        assert all(a >= b for a, b in zip(c.metrics, c.metrics[1:], strict=False))  # more removed, worse
        for r, metric in zip(c.ratios, c.metrics, strict=True):
            pruned = copy.deepcopy(net)
            apply(pruned, plan_from_ratios(net, X, {c.group: r}), X)
            with torch.no_grad():
                expected = _fidelity(ref)(pruned)
            assert metric == pytest.approx(expected, rel=1e-4, abs=1e-7)
    json.dumps(sens.to_dict())


def test_allocation_spares_the_sensitive_group_and_is_exact() -> None:
    net = _net().eval()
    ref = net(X).detach()
    sens = sensitivity(net, X, _fidelity(ref), ratios=[0.25, 0.5, 0.75])
    a, b = sens.curves
    alloc = sens.allocate(0.3)  # 6 of 20 units
    units = {c.group: round(alloc[c.group] * c.width) for c in sens.curves}
    assert sum(units.values()) == 6
    plan = plan_from_ratios(net, X, alloc)
    assert plan.removed_units == 6
    fake = SensitivityResult(
        1.0,
        [0.5],
        "l2",
        [type(a)(a.group, "a", 8, [0.5], [4], [0.1]), type(b)(b.group, "b", 12, [0.5], [6], [0.99])],
    )
    assert fake.allocate(0.25) == {a.group: 0.0, b.group: 5 / 12}  # b barely hurts: pruned first
    assert fake.allocate(0.45) == {a.group: 3 / 8, b.group: 0.5}  # then a, cut short to 9 units in total


def test_plot_and_validation(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    net = _net()
    sens = sensitivity(net, X, lambda m: 1.0, ratios=[0.5])
    out = sens.plot(tmp_path / "s.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="ratios"):
        sensitivity(net, X, lambda m: 1.0, ratios=[1.0])
    with pytest.raises(ConfigError, match="not a prunable group"):
        plan_from_ratios(net, X, {99: 0.5})


def test_cli_sensitivity_json(tmp_path) -> None:
    from helpers_models import tiny_model
    from typer.testing import CliRunner

    import prunekit.cli.sensitivity  # noqa: F401  (registers the command until the lead wires it)
    from prunekit.cli._common import app

    js = tmp_path / "s.json"
    args = [
        "sensitivity",
        f"{tiny_model.__module__}:tiny_model",
        "--input-shape",
        "2,4,8,8",
        "--ratios",
        "0.5",
    ]
    result = CliRunner().invoke(app, [*args, "--allocate", "0.25", "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert [c["width"] for c in data["curves"]] == [8, 16] and data["baseline"] == pytest.approx(1.0)
    assert all(c["metrics"][0] < 1.0 for c in data["curves"])
    assert sum(round(v * w) for v, w in zip(data["allocation"].values(), [8, 16], strict=True)) == 6
    bad = CliRunner().invoke(app, [*args[:-1], "0.5,x"])
    assert bad.exit_code == 2 and "--ratios" in bad.output
