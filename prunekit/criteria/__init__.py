"""Importance criteria for structured pruning: one score per unit of a group (higher = keep).

A group criterion is any callable ``criterion(group, ctx) -> torch.Tensor`` returning a float tensor of
shape ``(group.width,)``. ``ctx`` (:class:`ScoreContext`) gives the model, the example inputs, every
parameter/buffer by name and a ``cache`` dict a criterion may use to compute something once per call of
``prune`` (e.g. gradients for Taylor scores). Data-driven criteria (taylor, hessian, activation, apoz, wanda)
read ``ctx.data`` (an iterable of batches) and ``ctx.loss_fn`` (see :mod:`prunekit.criteria._data`).
Register new ones with :func:`register_criterion`; the shared interface for weights and groups is
:class:`prunekit.criteria.base.Criterion`.

>>> get_criterion("l2").__name__
'l2_magnitude'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError


@dataclass
class ScoreContext:
    """What a criterion may look at."""

    model: nn.Module
    example_inputs: Any
    tensors: dict[str, torch.Tensor]
    cache: dict[str, Any] = field(default_factory=dict)
    data: Any = None  # an iterable of batches (inputs or (inputs, target)) for data-driven criteria
    loss_fn: Callable[..., torch.Tensor] | None = None  # loss_fn(output, target); None: cross-entropy

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


GroupCriterion = Callable[[Any, ScoreContext], torch.Tensor]
_REGISTRY: dict[str, GroupCriterion] = {}


def register_criterion(name: str, fn: GroupCriterion) -> GroupCriterion:
    """Make ``fn`` available as ``criterion=name`` in :func:`prunekit.prune`."""
    _REGISTRY[name] = fn
    return fn


def get_criterion(criterion: str | GroupCriterion) -> GroupCriterion:
    """Look up a criterion by name, or pass a callable through."""
    if callable(criterion):
        return criterion
    from prunekit.criteria import (  # noqa: F401  (each module registers its criteria)
        activation,
        bnscale,
        fpgm,
        hessian,
        magnitude,
        random,
        taylor,
        wanda,
    )

    if criterion not in _REGISTRY:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[criterion]
