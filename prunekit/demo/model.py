"""DigitsCNN: a small but real convolutional network for 8x8 digits.

Layers and parameter counts (weights + biases; BatchNorm has weight + bias)::

    conv1  Conv2d(1, 32, 3, padding=1)    1*32*9   + 32  =    320     8x8
    bn1    BatchNorm2d(32)                             =     64
    conv2  Conv2d(32, 64, 3, padding=1)   32*64*9  + 64  = 18,496     8x8 -> maxpool -> 4x4
    bn2    BatchNorm2d(64)                             =    128
    conv3  Conv2d(64, 128, 3, padding=1)  64*128*9 + 128 = 73,856     4x4 -> maxpool -> 2x2
    bn3    BatchNorm2d(128)                            =    256
    fc1    Linear(512, 128)               512*128  + 128 = 65,664
    fc2    Linear(128, 10)                128*10   + 10  =  1,290
    total                                                 160,074

About 2.4 M multiply-accumulates per image; enough weights that 90-95 % sparsity is a real test, small enough
to train in seconds on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from prunekit.demo.data import NUM_CLASSES

DIGITS_CNN_PARAMS = 160_074


class DigitsCNN(nn.Module):
    """Three conv-BN-ReLU blocks (two max-pools), then a two-layer classifier with dropout.

    >>> model = DigitsCNN()
    >>> tuple(model(torch.zeros(2, 1, 8, 8)).shape), sum(p.numel() for p in model.parameters())
    ((2, 10), 160074)
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(128 * 2 * 2, 128)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = self.drop(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def build_model(seed: int = 0) -> DigitsCNN:
    """A fresh :class:`DigitsCNN`, the same weights for the same ``seed`` (the global RNG is untouched).

    >>> torch.equal(build_model(0).fc2.weight, build_model(0).fc2.weight)
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsCNN()
