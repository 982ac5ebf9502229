"""One criterion interface for weights (unstructured) and coupled groups (structured).

A :class:`Criterion` scores *elements*: :meth:`Criterion.weight_scores` gives one score per entry of each
named parameter it can judge (``|w|``, ``|w·g|``, ``h·w²/2``, ``|W|·‖X‖``...). Per-channel criteria (FPGM,
activations) instead give one score per index of a parameter dim (:meth:`Criterion.dim_scores`). A
structured unit's score is the ``reduction`` (``"sum"``, ``"mean"`` or ``"max"``) over every scored element
it would remove, across all members of its group; members the criterion cannot judge (e.g. a bias for BN
scale) are left out, and a group with no judged member is an error rather than a silent zero.

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

import torch
from torch import nn

from prunekit.criteria import ScoreContext
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
    """Base class: subclasses implement :meth:`weight_scores` and/or :meth:`dim_scores`.

    ``needs_data`` criteria read ``ctx.data`` (an iterable of batches) and ``ctx.loss_fn``. Expensive work is
    done once per :class:`ScoreContext` and kept in ``ctx.cache``.
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

    def _key(self) -> str:
        """Cache key: the name and every setting (two configurations never share cached scores)."""
        settings = sorted((k, repr(v)) for k, v in vars(self).items() if k != "__name__")
        return f"{self.name}:{settings}"

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
            s, c, mx = (t[index] for t in stats)
            total.index_add_(0, units, s)
            count.index_add_(0, units, c)
            peak.scatter_reduce_(0, units, mx, reduce="amax")
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
