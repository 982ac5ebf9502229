"""What a criterion may look at while scoring: :class:`ScoreContext`.

>>> import torch
>>> sorted(ScoreContext.of(torch.nn.Linear(2, 1), None).tensors)
['bias', 'weight']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ScoreContext:
    """The model, its example inputs, every parameter/buffer by name, a per-call cache, calibration data."""

    model: nn.Module
    example_inputs: Any
    tensors: dict[str, torch.Tensor]
    cache: dict[str, Any] = field(default_factory=dict)
    data: Any = None  # an iterable of batches (inputs or (inputs, target)) for data-driven criteria
    loss_fn: Callable[..., torch.Tensor] | None = None  # loss_fn(output, target); None: cross-entropy
    #: group id -> how that group was scored when not by the criterion's own rule (a fallback and why);
    #: the structured pipeline records these in the plan's ``meta["scored_by"]``
    notes: dict[int, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        example_inputs: Any,
        data: Any = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
    ) -> ScoreContext:
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(dict(model.named_buffers(remove_duplicate=False)))
        return cls(model, example_inputs, tensors, data=data, loss_fn=loss_fn)
