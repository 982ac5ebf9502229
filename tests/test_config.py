"""PruneConfig / SparsifyConfig: one validated config per road, taken by every verb instead of keywords."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from _engine_helpers import built_results
from torch import nn

import prunekit as pk
from prunekit.config import PruneConfig, SparsifyConfig, Target
from prunekit.errors import ConfigError
from prunekit.plan import Plan
from prunekit.recipe import recipe_from_dict
from prunekit.structured.target import prune_to_target


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 4, 1),
    )  # fmt: skip


X = torch.randn(1, 3, 12, 12)
OPTIONS = {"ratio": 0.4, "criterion": "l1", "scope": "global", "round_to": 4, "max_ratio": 0.8}
OPTIONS["ignore"] = ["5"]


def test_config_and_keywords_give_the_same_plan() -> None:
    cfg = PruneConfig(**OPTIONS)
    by_config = pk.plan_prune(_net(), X, cfg)[0].to_dict()
    by_keywords = pk.plan_prune(_net(), X, **OPTIONS)[0].to_dict()
    assert by_config == by_keywords and by_config["groups"]
    pruned = pk.prune(_net(), X, config=cfg).plan.to_dict()
    assert pruned["removals"] == by_keywords["removals"]
    assert pk.check(_net(), X, cfg).plan.to_dict() == by_config


def test_a_config_round_trips_through_the_plan_json() -> None:
    cfg = PruneConfig(**OPTIONS, measure=False)
    plan = pk.prune(_net(), X, cfg).plan
    meta = Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).meta
    assert PruneConfig.from_dict(meta["config"]) == cfg
    assert meta["ratio"] == 0.4 and meta["scope"] == "global" and meta["criterion"] == "l1"
    with pytest.raises(ConfigError, match="unknown key 'rate'"):
        PruneConfig.from_dict({"rate": 0.5})


def test_ignored_modules_are_recorded_by_name() -> None:
    net = _net()
    plan = pk.plan_prune(net, X, ratio=0.5, ignore=net[3])[0]
    assert plan.meta["config"]["ignore"] == ["3"]
    assert "3.weight" not in plan.removals


def test_config_and_conflicting_keywords_are_refused() -> None:
    cfg = PruneConfig(ratio=0.3, scope="local")
    with pytest.raises(ConfigError, match=r"ratio=0.5 conflicts with config.ratio=0.3"):
        pk.prune(_net(), X, cfg, ratio=0.5)
    with pytest.raises(ConfigError, match="scope='global' conflicts"):
        pk.plan_prune(_net(), X, cfg, scope="global")
    with pytest.raises(ConfigError, match="conflicts"):
        pk.check(_net(), X, config=cfg, criterion="l1")
    same = pk.plan_prune(_net(), X, cfg, ratio=0.3)[0]  # repeating the config's value is no conflict
    assert same.meta["ratio"] == 0.3
    data = [torch.randn(2, 3, 12, 12)]
    with pytest.raises(ConfigError, match="data="):
        pk.prune(_net(), X, cfg.replace(data=data), data=list(data))  # equal batches, another object
    with pytest.raises(ConfigError, match="config must be a PruneConfig"):
        pk.prune(_net(), X, {"ratio": 0.5})


def test_a_positional_ratio_still_works_and_warns() -> None:
    with pytest.warns(DeprecationWarning, match="positional ratio is deprecated"):
        old = pk.plan_prune(_net(), X, 0.4)[0]
    assert old.to_dict() == pk.plan_prune(_net(), X, ratio=0.4)[0].to_dict()
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="given twice"):
        pk.prune(_net(), X, 0.4, ratio=0.4)
    with pytest.warns(DeprecationWarning, match="positional ratio, criterion, scope is deprecated"):
        old = pk.check(_net(), X, 0.4, "l1", "global")
    new = pk.plan_prune(_net(), X, ratio=0.4, criterion="l1", scope="global")[0]
    assert old.ok and old.plan.to_dict() == new.to_dict()


def test_bad_values_fail_when_the_config_is_built() -> None:
    for bad, message in [
        ({"ratio": 1.0}, "ratio must be in"),
        ({"scope": "per-layer"}, "scope must be"),
        ({"criterion": "l7"}, "unknown criterion"),
        ({"round_to": 0}, "round_to must be"),
        ({"max_ratio": 0.0}, "max_ratio must be"),
        ({"target": 0.5}, "target must be a prunekit.Target"),
        ({"measure": "no"}, "measure must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PruneConfig(**bad)
    assert PruneConfig(target={"macs": 0.5}).target == Target(macs=0.5)


def test_the_default_scope_follows_ratio_or_target() -> None:
    assert PruneConfig().effective_scope == "local"
    assert PruneConfig(target=Target(macs=0.5)).effective_scope == "global"
    assert PruneConfig(scope="local", target=Target(macs=0.5)).effective_scope == "local"


def test_every_prune_builds_its_result_through_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    built = built_results(monkeypatch)
    results = [
        pk.prune(_net(), X, ratio=0.5),
        pk.prune(_net(), X, target=Target(macs=0.5)),
        prune_to_target(_net(), X, Target(params=0.5)),
        pk.prune(_net(), X, PruneConfig(ratio=0.5, measure=False)),
    ]
    assert len(built) == len(results) and all(r.plan is p for r, p in zip(results, built, strict=True))
    keys = {tuple(r.to_dict()) for r in results}
    assert len(keys) == 1 and {"params_ratio", "macs_ratio", "target", "plan"} <= set(keys.pop())
    assert all(sorted(r.seconds) == ["apply", "measure", "plan"] for r in results)
    assert results[1].target["met"] and results[0].target is None and results[3].params_after == 0


def test_target_search_and_prune_to_target_agree_with_a_config() -> None:
    cfg = PruneConfig(target=Target(macs=0.5), criterion="l1")
    via_prune = pk.prune(_net(), X, cfg)
    via_direct = prune_to_target(_net(), X, config=cfg)
    assert via_prune.plan.to_dict() == via_direct.plan.to_dict()
    with pytest.raises(ConfigError, match="needs a target"):
        prune_to_target(_net(), X)
    with pytest.raises(ConfigError, match=r"a target is searched by prunekit\.prune"):
        pk.plan_prune(_net(), X, cfg)


def test_gradual_and_sensitivity_plans_carry_the_config() -> None:
    net = _net()
    cfg = PruneConfig(criterion="l1", max_ratio=0.5)
    pruner = pk.StructuredGradualPruner(net, X, 0.5, start_step=0, end_step=2, frequency=1, config=cfg)
    for _ in range(2):
        pruner.step()
    plan = pruner.finalize()
    assert plan.meta["config"]["criterion"] == "l1" and plan.meta["scope"] == "global"
    assert plan.meta["schedule"] == "cubic"
    with pytest.raises(ConfigError, match="conflicts"):
        pk.StructuredGradualPruner(_net(), X, 0.5, start_step=0, end_step=2, frequency=1, config=cfg,
                                   criterion="l2")  # fmt: skip
    from prunekit.structured.sensitivity import plan_from_ratios

    gid = pk.groups(_net(), X).prunable_groups[0].id
    meta = plan_from_ratios(_net(), X, {gid: 0.5}).meta
    assert meta["scope"] == "per-group" and meta["config"]["criterion"] == "l2" and meta["target_units"] > 0


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_sparsify_takes_a_config_or_keywords() -> None:
    by_config, by_keywords = _mlp(), _mlp()
    cfg = SparsifyConfig(0.5, pattern="unstructured", scope="global", exclude=("2",))
    pk.sparsify(by_config, cfg)
    pk.sparsify(by_keywords, 0.5, scope="global", exclude="2")
    for a, b in zip(by_config.state_dict().values(), by_keywords.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert int((by_config[0].weight == 0).sum()) > 0 and int((by_config[2].weight == 0).sum()) == 0
    with pytest.raises(ConfigError, match="scope='local' conflicts"):
        pk.sparsify(_mlp(), config=cfg, scope="local")
    assert SparsifyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="keeps 2 of every 4"):
        SparsifyConfig(pattern="2:4", scope="global")


def test_recipes_build_the_configs_and_name_the_sparse_amount_sparsity() -> None:
    rec = recipe_from_dict({"method": "structured", "ratio": 0.25, "round_to": 2, "ignore": ["5"]})
    assert rec.prune_config() == PruneConfig(ratio=0.25, round_to=2, ignore=("5",), scope="global")
    with pytest.warns(DeprecationWarning, match="'ratio' is deprecated"):
        old = recipe_from_dict({"method": "unstructured", "ratio": 0.75})
    assert old.sparsity == 0.75 and old.to_dict()["sparsity"] == 0.75 and "ratio" not in old.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = recipe_from_dict({"method": "unstructured", "sparsity": 0.75})
    assert new.sparsify_config() == SparsifyConfig(0.75, scope="global")


def test_cli_options_map_to_one_config() -> None:
    from prunekit.cli.structured import prune_config

    cfg = prune_config(0.4, "l1", "global", ["5"], 4, 0.8)
    assert cfg == PruneConfig(**OPTIONS)
    model = _net()
    assert copy.deepcopy(cfg).ignore == ("5",) and pk.plan_prune(model, X, cfg)[0].removed_units > 0
