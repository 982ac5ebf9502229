"""Extension point (a): an op rule added from outside the package, with one registration line."""

from __future__ import annotations

import torch
from torch import nn

import prunekit as pk
from prunekit.graph.rules import RULES, rule
from prunekit.graph.rules_shape import elementwise


class SincNet(nn.Module):
    """torch.sinc has no rule in prunekit: the channels flowing into it stay."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.sinc(self.a(x)))


def test_a_rule_registered_from_outside_makes_its_op_prunable() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 10, 10)
    before = pk.groups(SincNet(), x)
    assert not before.prunable_groups
    assert any("no propagation rule" in r for g in before.pinned_groups for r in g.reasons)
    assert torch.sinc not in RULES
    try:
        rule(objs=(torch.sinc, torch.Tensor.sinc))(elementwise)  # the one registration line
        rep = pk.check(SincNet(), x, ratio=0.5)
        assert rep.ok and rep.removed_units == 8
    finally:
        RULES.pop(torch.sinc, None)
        RULES.pop(torch.Tensor.sinc, None)
