"""Example inputs: a tensor, a tuple/list of positional arguments, or a dict of keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

ExampleInputs = torch.Tensor | tuple | list | Mapping[str, Any]


def call_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Run ``model`` on ``example_inputs`` the way a user would.

    A tensor is passed as the single positional argument, a tuple or list is unpacked as positional
    arguments, and a mapping is unpacked as keyword arguments.

    >>> call_model(nn.Linear(3, 2), torch.zeros(1, 3)).shape
    torch.Size([1, 2])
    """
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def batch_size_of(example_inputs: ExampleInputs) -> int:
    """Leading dimension of the first tensor found in ``example_inputs`` (1 if there is none)."""
    if isinstance(example_inputs, torch.Tensor):
        return int(example_inputs.shape[0]) if example_inputs.dim() else 1
    values = example_inputs.values() if isinstance(example_inputs, Mapping) else example_inputs
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 1
