"""The exactness oracle's tolerance follows the outputs' own scale (an untrained model's ~1e-9 outputs)."""

import copy

import torch
from torch import nn

from prunekit.structured import check
from prunekit.structured.oracle import compare


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.mul_(1e-3) if name.endswith("weight") else p.zero_()  # outputs ~1e-9
    return net.eval()


def test_a_wrong_cut_on_tiny_outputs_fails() -> None:
    net, x = _tiny_cnn(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
        wrong = copy.deepcopy(net)
        wrong[3].weight[:, 0].zero_()  # an input channel the plan did not remove
        got = wrong(x)
    assert 0 < float(ref.abs().max()) < 1e-6
    assert float((got - ref).abs().max()) < 1e-4  # the old absolute floor would have passed it
    cmp = compare([got], [ref])
    assert not cmp.ok and cmp.rel_err > 1e-3 and cmp.tiny


def test_a_right_cut_on_tiny_outputs_passes_and_is_flagged() -> None:
    rep = check(_tiny_cnn(), torch.randn(2, 3, 16, 16), ratio=0.5)
    assert rep.ok and rep.tiny_outputs and rep.rel_err < 1e-4
    assert rep.to_dict()["tiny_outputs"] is True


def test_exact_zero_outputs_use_the_absolute_epsilon() -> None:
    zero = torch.zeros(3)
    assert compare([zero], [zero]).ok
    assert not compare([zero + 1e-12], [zero]).ok
