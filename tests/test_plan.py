"""Plans are JSON data: round-trip, save/load, replay on a fresh copy, refuse a model they do not fit."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from _engine_helpers import randomize
from torch import nn

from prunekit.errors import PlanError
from prunekit.plan import Plan
from prunekit.structured.api import plan_prune
from prunekit.structured.apply import apply


def _net(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 3),
    )


def test_plan_round_trips_through_json_and_file(tmp_path):
    x = torch.randn(1, 3, 6, 6)
    plan, _ = plan_prune(randomize(_net()), x, ratio=0.5)
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    path = plan.save(tmp_path / "sub" / "plan.json")
    assert Plan.load(path) == plan
    assert plan.removals["0.weight"][0] == plan.removals["1.running_var"][0]
    assert len(plan.removals["0.weight"][0]) == 8 and plan.attrs["0"]["out_channels"] == [16, 8]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["plan.json"]  # no temp file left behind


def test_plan_replays_on_a_fresh_copy_with_identical_outputs():
    x = torch.randn(2, 3, 6, 6)
    a = randomize(_net())
    plan, _ = plan_prune(a, x, ratio=0.5)
    b = _net()
    b.load_state_dict(a.state_dict())
    apply(a, plan, x)
    apply(b, Plan.from_dict(plan.to_dict()), x)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    assert b[3].in_channels == 8 and b[1].num_features == 8


def test_plan_refuses_a_model_it_does_not_fit():
    x = torch.randn(1, 3, 6, 6)
    plan, _ = plan_prune(randomize(_net()), x, ratio=0.5)
    other = _net(width=12)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(PlanError, match=r"0\.weight has shape \[12, 3, 3, 3\]"):
        apply(other, plan)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    pruned = _net()
    apply(pruned, plan)
    with pytest.raises(PlanError):  # applying twice: shapes no longer match
        apply(pruned, plan)


def test_malformed_plans_raise_plan_error(tmp_path):
    with pytest.raises(PlanError, match="version"):
        Plan.from_dict({"version": 99})
    with pytest.raises(PlanError, match="malformed"):
        Plan.from_dict({"version": 1, "removals": {"a": {"x": [1]}}, "attrs": {}, "signature": {}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="cannot read plan"):
        Plan.load(bad)
    plan = Plan(removals={"0.weight": {0: list(range(16))}}, signature={"0.weight": [16, 3, 3, 3]})
    with pytest.raises(PlanError, match="every index"):
        apply(_net(), plan)


def test_an_index_beyond_int64_is_a_plan_error_not_an_overflow(tmp_path):
    net = _net()
    plan, _ = plan_prune(net, torch.randn(1, 3, 6, 6), ratio=0.5)
    data = plan.to_dict()
    name = next(iter(data["removals"]))
    dim = next(iter(data["removals"][name]))
    data["removals"][name][dim] = [2**70]
    with pytest.raises(PlanError, match=r"plan removes index 1180591620717411303424 of '0.weight'"):
        Plan.from_dict(data)
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="indices must be in"):
        Plan.load(path)
    direct = Plan(removals={name: {int(dim): [2**70]}}, signature=plan.signature)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PlanError, match="must be distinct and <"):
        apply(net, direct)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_loading_a_binary_or_non_object_file_is_a_plan_error(tmp_path):
    binary = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, binary)
    with pytest.raises(PlanError, match=r"is not a prunekit plan \(not UTF-8 JSON\)"):
        Plan.load(binary)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(PlanError, match=r"is not a prunekit plan \(JSON list, not an object\)"):
        Plan.load(listed)


def test_apply_refuses_what_is_not_a_plan_or_not_a_module():
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"apply needs a prunekit\.Plan, got dict"):
        apply(_net(), {"removals": {}})
    with pytest.raises(ConfigError, match=r"apply needs a torch\.nn\.Module as model"):
        apply(None, Plan())


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("at", ["_replace", "_set_attr"])
def test_an_interrupt_mid_cut_restores_the_model_and_propagates(monkeypatch, interrupt, at):
    apply_mod = importlib.import_module("prunekit.structured.apply")  # the package exports apply()

    x = torch.randn(1, 3, 6, 6)
    net = randomize(_net()).eval()
    plan, _ = plan_prune(net, x, ratio=0.5)
    want = net(x)
    before = dict(net.state_dict(keep_vars=True))
    calls = {"n": 0}
    real = getattr(apply_mod, at)

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # some tensors (or attributes) already replaced
            raise interrupt()
        real(*args)

    monkeypatch.setattr(apply_mod, at, interrupted)
    with pytest.raises(interrupt):
        apply(net, plan, x)
    after = net.state_dict(keep_vars=True)
    assert after.keys() == before.keys() and all(after[n] is t for n, t in before.items())
    assert net[0].out_channels == 16 and net[1].num_features == 16
    assert torch.equal(net(x), want)


def test_plan_attrs_must_be_allowed_shrinking_ints_consistent_with_the_cut():
    x = torch.randn(1, 3, 6, 6)
    net = randomize(_net())
    plan, _ = plan_prune(net, x, ratio=0.5)
    cases = {
        "padding_mode": (["zeros", "circular"], r"may not change 0.padding_mode \(Conv2d\): only"),
        "out_channels": ([16, 9], r"sets 0.out_channels \(Conv2d\) to 9, but its tensors .* imply 8"),
        "groups": ([1, 0], r"may only shrink an integer"),
        "__class__": ([1, 1], r"not a public attribute name"),
    }
    for attr, (change, match) in cases.items():
        bad = Plan.from_dict(plan.to_dict())
        bad.attrs["0"][attr] = change
        with pytest.raises(PlanError, match=match):
            apply(net, bad)
    assert net[0].out_channels == 16
