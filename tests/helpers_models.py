"""Small models for the CLI and model-spec tests (referenced as ``tests.helpers_models:tiny_model``).

TinyNet's parameter counts, by hand:
    conv1  Conv2d(4, 8, 3):  4*8*3*3 + 8   =  296
    bn     BatchNorm2d(8):   8 + 8          =   16
    conv2  Conv2d(8, 16, 3): 8*16*3*3 + 16 = 1168
    fc     Linear(16, 10):   16*10 + 10     =  170
    total                                   = 1650
Every weight's input size (36, 72, 16, and in-channels 4, 8, 16) is divisible by 4 and none by 7, so 2:4 fits
every layer and 3:7 fits none. Inputs: 1x4x8x8.
"""

from __future__ import annotations

import torch
from torch import nn

TINY_INPUT_SHAPE = (1, 4, 8, 8)
TINY_PARAMS = {"conv1": 4 * 8 * 9 + 8, "bn": 8 + 8, "conv2": 8 * 16 * 9 + 16, "fc": 16 * 10 + 10}
TINY_WEIGHTS = {"conv1.weight": 4 * 8 * 9, "conv2.weight": 8 * 16 * 9, "fc.weight": 16 * 10}


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def tiny_model() -> TinyNet:
    """A freshly initialised TinyNet with fixed weights (seed 0)."""
    torch.manual_seed(0)
    return TinyNet()


class TiedNet(nn.Module):
    """An embedding and an output layer that share one weight (as in language models)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 12, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embed(tokens))))


def tied_model() -> TiedNet:
    """A TiedNet with fixed weights (seed 0)."""
    torch.manual_seed(0)
    return TiedNet()


def not_a_module() -> int:
    return 3


def broken_factory() -> nn.Module:
    raise RuntimeError("factory exploded")


NOT_CALLABLE = 42
MODULE_INSTANCE = nn.Linear(2, 2)
