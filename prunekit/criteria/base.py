"""One criterion interface for weights (unstructured) and coupled groups (structured).

A :class:`Criterion` scores *elements*: :meth:`Criterion.weight_scores` gives one score per entry of each
named parameter it can judge (``|w|``, ``|w·g|``, ``h·w²/2``, ``|W|·‖X‖``...). Per-channel criteria (FPGM,
activations) instead give one score per index of a parameter dim (:meth:`Criterion.dim_scores`). A
structured unit's score is the ``reduction`` (``"sum"``, ``"mean"`` or ``"max"``) over every scored element
it would remove, across all members of its group; members the criterion cannot judge (e.g. a bias for BN
scale) are left out, and a group with no judged member is an error rather than a silent zero.

This is THE interface: an element criterion (:meth:`weight_scores`) works in ``sparsify``, the schedules and,
reduced over a group's elements, in structured pruning; an index criterion (:meth:`dim_scores`) works in
structured pruning only. A method that makes masks itself (SparseGPT) implements :meth:`masks`. A plain
function ``fn(group, ctx) -> scores`` is a :class:`GroupFunction` (structured only).

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> from prunekit.criteria.magnitude import Magnitude
>>> from prunekit.graph.groups import build_groups
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
>>> g = build_groups(net, torch.zeros(1, 2)).prunable_groups[0]
>>> Magnitude(p=1, reduction="max")(g, ScoreContext.of(net, None)).shape
torch.Size([3])
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.criteria.context import ScoreContext
from prunekit.errors import ConfigError

REDUCTIONS = ("sum", "mean", "max")


def owner(model: nn.Module, name: str) -> tuple[str, nn.Module, str]:
    """``(module name, module, attribute)`` holding parameter ``name``; a masked weight maps to ``weight``.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> owner(net, "0.weight")[0], owner(net, "0.weight")[2]
    ('0', 'weight')
    """
    parts = name.split(".")
    if len(parts) >= 3 and parts[-3] == "parametrizations" and parts[-1] == "original":
        mod_name, attr = ".".join(parts[:-3]), parts[-2]
    else:
        mod_name, attr = ".".join(parts[:-1]), parts[-1]
    return mod_name, model.get_submodule(mod_name), attr


class Criterion:
    """Base class: subclasses implement :meth:`weight_scores` and/or :meth:`dim_scores` (or :meth:`masks`).

    ``needs_data`` criteria read ``ctx.data`` (an iterable of batches) and ``ctx.loss_fn``. Expensive work is
    done once per :class:`ScoreContext` and kept in ``ctx.cache``. Calling the criterion on a group gives
    one float64 score per unit (higher = keep).
    """

    name = "criterion"
    needs_data = False

    def __init__(self, reduction: str = "sum") -> None:
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction
        self.__name__ = self.name

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        """Per-element scores (shaped like the parameter) for the names this criterion can judge."""
        return {}

    def dim_scores(self, ctx: ScoreContext, name: str, dim: int) -> torch.Tensor | None:
        """One score per index of ``name``'s dim ``dim``, or None when the criterion has none."""
        return None

    def masks(
        self, model: nn.Module, names: list[str], sparsity: float, pattern: Any, scope: str, data: Any
    ) -> dict[str, torch.Tensor] | None:
        """Keep-masks of the named layers when the criterion is a method that makes them (None: a score)."""
        return None

    @property
    def scores_weights(self) -> bool:
        """True when the criterion gives element scores, i.e. works in ``sparsify`` and the schedules."""
        return type(self).weight_scores is not Criterion.weight_scores

    @property
    def makes_masks(self) -> bool:
        """True for a method that makes masks itself (:meth:`masks`) instead of giving scores."""
        return type(self).masks is not Criterion.masks

    def unstructured_error(self) -> str:
        """Why this criterion cannot score single weights (``""`` when it can)."""
        if self.scores_weights or self.makes_masks:
            return ""
        if type(self).dim_scores is not Criterion.dim_scores:
            return (
                f"criterion {self.name!r} scores whole channels (one score per index of a dim), not single "
                "weights: use it in prunekit.prune, or a weight criterion (magnitude, taylor, ...) here"
            )
        return (
            f"criterion {self.name!r} scores structured groups only (a function (group, ctx)): use it in "
            "prunekit.prune, or give a Criterion subclass with weight_scores for unstructured masks"
        )

    def seeded(self, seed: int) -> Criterion:
        """This criterion with its random draws seeded by ``seed`` (itself when it draws nothing)."""
        if "seed" not in vars(self) or self.seed == seed:
            return self
        out = copy.copy(self)
        out.seed = seed
        return out

    def _key(self) -> str:
        """Cache key: the name and every setting (two configurations never share cached scores)."""
        settings = sorted((k, repr(v)) for k, v in vars(self).items() if k != "__name__")
        return f"{self.name}:{type(self).__qualname__}:{settings}"

    def _stats(self, ctx: ScoreContext, name: str, dim: int) -> tuple[torch.Tensor, ...] | None:
        """(sum, count, max) of the scored elements at each index of ``name``'s dim ``dim``."""
        key = f"{self._key()}:stats:{name}:{dim}"
        if key in ctx.cache:
            return ctx.cache[key]
        per = self.dim_scores(ctx, name, dim)
        if per is not None:
            per = per.detach().double()
            out = (per, torch.ones_like(per), per)
        else:
            el = self._elements(ctx, name)
            if el is None:
                out = None
            else:
                el = el.detach().double().movedim(dim, 0).reshape(el.shape[dim], -1)
                out = (el.sum(1), torch.full_like(el[:, 0], el.shape[1]), el.amax(1))
        ctx.cache[key] = out
        return out

    def _elements(self, ctx: ScoreContext, name: str) -> torch.Tensor | None:
        key = f"{self._key()}:elements"
        cached = ctx.cache.setdefault(key, {})
        if name not in cached:
            cached[name] = self.weight_scores(ctx, [name]).get(name)
        return cached[name]

    def __call__(self, group, ctx: ScoreContext) -> torch.Tensor:
        if self.makes_masks and not self.scores_weights:
            raise ConfigError(
                f"criterion {self.name!r} is a method that makes masks and new weights, not a score, so "
                "it cannot rank structured groups: use it in prunekit.sparsify, or criterion='taylor' or 'l2'"
            )
        total = torch.zeros(group.width, dtype=torch.float64)
        count = torch.zeros(group.width, dtype=torch.float64)
        peak = torch.full((group.width,), -torch.inf, dtype=torch.float64)
        judged = False
        for m in group.members:
            if m.kind != "param":
                continue
            stats = self._stats(ctx, m.name, m.dim)
            if stats is None:
                continue
            judged = True
            units, index = torch.as_tensor(m.units), torch.as_tensor(m.index)
            total.index_add_(0, units, stats[0][index])
            count.index_add_(0, units, stats[1][index])
            if self.reduction == "max":
                peak.scatter_reduce_(0, units, stats[2][index], reduce="amax")
        if not judged:
            names = ", ".join(f"{m.name}[{m.dim}]" for m in group.members[:3])
            raise ConfigError(
                f"criterion {self.name!r} cannot score group {group.id} ({names}): ignore it or use another"
            )
        if self.reduction == "sum":
            return total
        if self.reduction == "mean":
            return total / count.clamp_min(1)
        return torch.where(count > 0, peak, torch.zeros_like(peak))


class GroupFunction(Criterion):
    """A plain function ``fn(group, ctx) -> Tensor[group.width]`` as a criterion (structured groups only).

    >>> GroupFunction(lambda group, ctx: torch.ones(group.width), "ones").name
    'ones'
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")
        super().__init__("sum")

    def __call__(self, group, ctx: ScoreContext) -> torch.Tensor:
        return self.fn(group, ctx)
