"""Put a model in eval mode for a measurement and give every module its own training flag back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: ``model.eval()`` inside, each module's previous ``training`` flag restored on exit.

    Flags are restored per module, so a model that was training with some frozen (eval) sub-modules comes
    back exactly as it was.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training
    True
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
