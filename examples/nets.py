"""A small network built by a factory, for ``module.path:factory`` model specs (``examples.nets:build_net``).

Every layer's input width is a multiple of 4, so ``N:M`` patterns such as ``2:4`` apply to all of them.
"""

from __future__ import annotations

import torch
from torch import nn


def build_net(num_classes: int = 10) -> nn.Module:
    """An MLP over flattened 3x32x32 images (seeded random weights, eval mode).

    >>> build_net()(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        ).eval()
