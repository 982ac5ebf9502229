"""Random O(1)-scale weights for exactness checks, so that no channel is trivially zero."""

from __future__ import annotations

import math

import torch
from torch import nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every float parameter/buffer O(1)-scale random values, in place; return ``model``.

    Library initialisations set some tensors to zero or near zero (a ViT head, ConvNeXt's layer scale 1e-6,
    BN bias 0), which makes an exactness check of the pruned model vacuous there. Running variances become
    uniform in [0.5, 1.5), running means and biases N(0, 0.01), norm weights and layer scales uniform in
    [0.5, 1.5), other weights N(0, 1/fan_in). Integer tensors are left as they are.

    Args:
        model: the module whose tensors are overwritten.
        seed: seed of the generator, so that two calls give the same values.

    >>> net = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    >>> bool((net[1].bias != 0).all()), bool((net[1].running_var >= 0.5).all())
    (True, True)
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif leaf == "running_mean" or leaf == "bias" or (t.dim() == 1 and leaf != "weight"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() <= 1 or sum(s > 1 for s in t.shape) <= 1:  # norm weights, layer scales
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t.numel() // t.shape[0]
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(max(1, fan_in)))
    return model
