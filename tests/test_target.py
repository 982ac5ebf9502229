"""Global allocation (max_ratio caps, exact totals) and pruning to a MACs / params / latency target."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph.groups import build_groups
from prunekit.measure import count_macs, count_params
from prunekit.structured import apply, plan_prune, prune
from prunekit.structured.select import choose_units
from prunekit.structured.target import Target, prune_to_target


class ThreeConv(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.c2 = nn.Conv2d(12, 20, 3, padding=1)
        self.c3 = nn.Conv2d(20, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)
        with torch.no_grad():  # group of c2 has tiny weights: a plain global ranking would empty it
            self.c2.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))))


X = torch.randn(1, 3, 12, 12)


def _macs_of_plan(model: nn.Module, plan) -> int:
    m = copy.deepcopy(model)
    apply(m, plan, X)
    return count_macs(m, X)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.85])
@pytest.mark.parametrize("max_ratio", [0.5, 0.9])
def test_global_selection_hits_target_exactly_and_never_empties_a_group(
    ratio: float, max_ratio: float
) -> None:
    torch.manual_seed(0)
    model = ThreeConv(scale=1e-3)
    rep = build_groups(model, X)
    groups = rep.prunable_groups
    assert [g.width for g in groups] == [12, 20, 16]
    scores = {
        g.id: torch.rand(g.width, dtype=torch.float64) * (1e-3 if g.width == 20 else 1.0) for g in groups
    }
    removed = choose_units(rep, scores, ratio, "global", None, max_ratio)
    caps = {g.id: min(math.floor(max_ratio * g.width + 1e-9), g.width - 1) for g in groups}
    for g in groups:
        assert len(removed.get(g.id, [])) <= caps[g.id]
        assert g.width - len(removed.get(g.id, [])) >= 1
    target = round(ratio * sum(g.width for g in groups))
    assert sum(len(v) for v in removed.values()) == min(target, sum(caps.values()))


def test_global_reports_under_pruning_when_caps_forbid_the_target() -> None:
    plan, _ = plan_prune(ThreeConv(), X, ratio=0.95, scope="global", max_ratio=0.5)
    assert plan.meta["target_units"] == round(0.95 * 48)
    assert plan.removed_units == 6 + 10 + 8  # every group stops at its cap


def test_target_macs_global_is_exact_to_one_unit() -> None:
    torch.manual_seed(1)
    model = ThreeConv()
    original = copy.deepcopy(model)
    macs0 = count_macs(model, X)
    res = prune_to_target(model, X, Target(macs=0.5))
    assert res.target["requested"] == 0.5
    assert res.macs_after <= 0.5 * macs0 == 0.5 * res.macs_before
    assert res.target["achieved"] == pytest.approx(res.macs_after / macs0)
    assert count_macs(model, X) == res.macs_after
    # independently: the global plan with one unit fewer is above the target
    k = res.removed_units
    fewer, _ = plan_prune(original, X, ratio=(k - 1) / 48, scope="global")
    assert fewer.removed_units == k - 1
    assert _macs_of_plan(original, fewer) > 0.5 * macs0
    assert res.target["achieved_one_unit_less"] == pytest.approx(_macs_of_plan(original, fewer) / macs0)


def test_target_params_local_and_via_prune() -> None:
    torch.manual_seed(2)
    model = ThreeConv()
    p0 = count_params(model).total
    res = prune(model, X, target=Target(params=0.4), scope="local")
    assert count_params(model).total == res.params_after <= 0.4 * p0
    assert res.to_dict()["target"]["metric"] == "params"
    assert res.target["met"] is True


def test_unreachable_target_raises_and_leaves_model_untouched() -> None:
    model = ThreeConv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="unreachable"):
        prune_to_target(model, X, Target(macs=0.01))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_latency_target_generous_means_no_pruning_and_tiny_is_unreachable() -> None:
    model = ThreeConv()
    res = prune_to_target(model, X, Target(latency_ms=1e6), latency_runs=3)
    assert res.removed_units == 0 and res.target["metric"] == "latency_ms"
    with pytest.raises(ConfigError, match="latency_ms"):
        prune_to_target(ThreeConv(), X, Target(latency_ms=1e-9), latency_runs=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"macs": 0.5, "params": 0.5}, "exactly one"),
        ({"macs": 1.5}, r"\(0, 1\]"),
        ({"latency_ms": -1.0}, "> 0"),
        ({"params": "a"}, "number"),
    ],
)
def test_target_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Target(**kwargs)


def test_target_with_a_data_driven_criterion() -> None:
    pytest.importorskip("prunekit.criteria.taylor")
    torch.manual_seed(3)
    model = ThreeConv()
    data = [(torch.randn(4, 3, 12, 12), torch.randn(4, 4, 12, 12))]
    macs0 = count_macs(model, X)
    res = prune_to_target(
        model, X, Target(macs=0.6), criterion="taylor", data=data, loss_fn=nn.functional.mse_loss
    )
    assert res.macs_after <= 0.6 * macs0 < res.target["achieved_one_unit_less"] * macs0
    assert res.plan.meta["criterion"] == "taylor"


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5)])
def test_target_takes_numpy_and_0d_tensor_scalars(value) -> None:
    target = Target(macs=value)
    assert target == Target(macs=0.5) and type(target.macs) is float


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"macs": True}, "must be a number"),
        ({"params": float("nan")}, "must be a finite number"),
        ({"latency_ms": float("inf")}, "must be a finite number"),
        ({"macs": torch.tensor([0.5])}, "must be a number"),
    ],
)
def test_target_refuses_bools_nan_inf_and_arrays(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Target(**kwargs)


def test_prune_with_a_target_searches_globally_like_prune_to_target() -> None:
    model = ThreeConv()
    via_prune = prune(copy.deepcopy(model), X, target=Target(macs=0.5))
    direct = prune_to_target(copy.deepcopy(model), X, Target(macs=0.5))
    assert via_prune.target["scope"] == direct.target["scope"] == "global"
    assert via_prune.plan.removals == direct.plan.removals
    local = prune(ThreeConv(), X, target=Target(macs=0.5), scope="local")
    assert local.target["scope"] == "local"
    assert prune(ThreeConv(), X, ratio=0.5).plan.meta["scope"] == "local"  # a ratio stays local


def test_prune_with_a_target_honours_measure_false(monkeypatch) -> None:
    import prunekit.structured.target as target_mod

    counted = []
    real_count = target_mod.count_params
    monkeypatch.setattr(target_mod, "count_params", lambda m: counted.append(m) or real_count(m))
    res = prune(ThreeConv(), X, target=Target(macs=0.5), measure=False)
    assert (res.params_before, res.params_after, res.macs_before, res.macs_after) == (0, 0, 0, 0)
    assert counted == [] and res.target["achieved"] <= 0.5
    assert prune(ThreeConv(), X, target=Target(macs=0.5)).params_before > 0
