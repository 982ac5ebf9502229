"""Importance criteria: one interface (:class:`Criterion`), one registry by name, for every verb.

A criterion scores elements of named parameters (:meth:`Criterion.weight_scores`) or indices of a parameter
dim (:meth:`Criterion.dim_scores`); called on a structured group it gives one float64 score per unit
(higher = keep). ``ctx`` (:class:`ScoreContext`) gives the model, the example inputs, every parameter/buffer
by name and a ``cache`` a criterion may use to compute something once per call (e.g. gradients for Taylor
scores). Data-driven criteria (taylor, hessian, activation, apoz, wanda, sparsegpt) read ``ctx.data`` (an
iterable of batches) and ``ctx.loss_fn`` (see :mod:`prunekit.criteria._data`). Add one with
:func:`register_criterion` (a call or a decorator); the built-ins below register themselves on import.
Scores are checked in one place (:mod:`prunekit.criteria.scores`: finite, one per unit or weight).

>>> get_criterion("l2").name
'l2'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from prunekit.criteria.base import Criterion, GroupFunction
from prunekit.criteria.context import ScoreContext
from prunekit.criteria.registry import (
    as_criterion,
    criterion_label,
    criterion_names,
    get_criterion,
    register_criterion,
)

GroupCriterion = Callable[[Any, ScoreContext], torch.Tensor]
"""What ``criterion=`` takes besides a name: a :class:`Criterion` or a function ``(group, ctx) -> scores``."""

# the built-ins: each module registers its criteria when imported
from prunekit.criteria import (  # noqa: E402, F401
    activation,
    bnscale,
    fpgm,
    hessian,
    magnitude,
    random,
    sparsegpt,
    taylor,
    wanda,
)

__all__ = [
    "Criterion",
    "GroupCriterion",
    "GroupFunction",
    "ScoreContext",
    "as_criterion",
    "criterion_label",
    "criterion_names",
    "get_criterion",
    "register_criterion",
]
