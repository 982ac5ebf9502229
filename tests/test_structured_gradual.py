"""Gradual structured pruning: cubic counts at given steps, soft masks hold, finalize is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.schedules.structured_gradual import StructuredGradualPruner


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 3),
    )


@pytest.mark.parametrize("scope", ["global", "local"])
def test_schedule_counts_masks_and_exact_finalize(scope: str) -> None:
    net = _net()
    x = torch.randn(8, 3, 8, 8)
    y = torch.randint(0, 3, (8,))
    pruner = StructuredGradualPruner(net, x, 0.75, start_step=2, end_step=14, frequency=4, scope=scope)
    assert pruner.total_units == 40
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    counts, prev = {}, {}
    for _ in range(16):
        net.train()
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
        counts[pruner.last_step] = pruner.removed_units()
        for gid, units in prev.items():  # removed units stay removed
            assert set(units) <= set(pruner.removed[gid])
        prev = {k: list(v) for k, v in pruner.removed.items()}
        w = net[0].weight.detach()
        gone = pruner.removed.get(pruner.report.prunable_groups[0].id, [])
        assert float(w[gone].abs().sum()) == 0.0 and float(net[1].bias.detach()[gone].abs().sum()) == 0.0
    # s_t = 0.75 (1 - (1 - k/3)^3) at steps 2, 6, 10, 14 -> 0, 0.5278, 0.7222, 0.75
    ratios = {2: 0.0, 6: 0.75 * (1 - (2 / 3) ** 3), 10: 0.75 * (1 - (1 / 3) ** 3), 14: 0.75}
    for step, r in ratios.items():
        assert pruner.ratio_at(step) == pytest.approx(r)
        if scope == "global":
            assert counts[step] == round(r * 40)
        else:
            assert counts[step] == round(r * 16) + round(r * 24)
    assert counts[5] == counts[2] and counts[9] == counts[6] and counts[16] == counts[14]
    net.eval()
    with torch.no_grad():
        soft = net(x)
    plan = pruner.finalize()
    assert plan.removed_units == counts[14] and net[0].out_channels + net[3].out_channels == 40 - counts[14]
    with torch.no_grad():
        assert torch.allclose(net(x), soft, atol=1e-5, rtol=1e-4)


def test_finalize_early_and_bad_config_raise() -> None:
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    pruner = StructuredGradualPruner(net, x, 0.5, start_step=0, end_step=10, frequency=5)
    state = pruner.state_dict()
    with pytest.raises(ConfigError, match="keep calling step"):
        pruner.finalize()
    with pytest.raises(ConfigError, match="multiple of frequency"):
        StructuredGradualPruner(net, x, 0.5, start_step=0, end_step=7, frequency=5)
    with pytest.raises(ConfigError, match="initial_ratio"):
        StructuredGradualPruner(net, x, 0.2, initial_ratio=0.5, start_step=0, end_step=10, frequency=5)
    pruner.load_state_dict(state)
    assert pruner.removed_units() == 0
