"""BatchNorm scale (network slimming, Liu et al. 2017): a channel's importance is ``|gamma|``.

Only BatchNorm weights are judged. A group without a BatchNorm weight (a Linear stack, a conv without BN)
is scored by the ``fallback`` criterion, ``"l1"`` by default: its units rank by the L1 mass they remove,
a ``UserWarning`` names the first, and each is noted in ``ScoreContext.notes`` (the structured pipeline
records them in the plan's ``meta["scored_by"]``, in the ``--json`` and the checkpoint). With
``fallback=None`` such a group is an error naming it (ignore that layer or use another criterion). Train
with :mod:`prunekit.regularize` BN-L1 to sparsify gammas.

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
>>> with torch.no_grad():
...     _ = net[1].weight.copy_(torch.tensor([-3.0, 0.5]))
>>> BNScale().weight_scores(ScoreContext.of(net, None), ["1.weight", "0.weight"])["1.weight"].tolist()
[3.0, 0.5]
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from prunekit.criteria import ScoreContext, get_criterion, register_criterion
from prunekit.criteria.base import Criterion, owner
from prunekit.errors import ConfigError


class BNScale(Criterion):
    """``|gamma|`` of BatchNorm weights; a group without one is scored by ``fallback`` (None: an error)."""

    name = "bn_scale"

    def __init__(self, reduction: str = "sum", fallback: str | None = "l1") -> None:
        super().__init__(reduction)
        if fallback is not None and not isinstance(fallback, str):
            raise ConfigError(f"bn_scale fallback must be a criterion name or None, got {fallback!r}")
        self.fallback = fallback

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for n in names:
            _, module, attr = owner(ctx.model, n)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and attr == "weight":
                out[n] = ctx.tensors[n].detach().abs()
        return out

    def __call__(self, group, ctx: ScoreContext) -> torch.Tensor:
        if self.fallback is None or any(self._stats(ctx, m.name, m.dim) for m in _params(group)):
            return super().__call__(group, ctx)
        seen = ctx.cache.setdefault(f"{self._key()}:fallback", set())
        if not seen:
            warnings.warn(
                f"bn_scale: group {group.id} ({group.members[0].name}) has no BatchNorm weight; it and any "
                f"other such group are scored by {self.fallback!r} (BNScale(fallback=None) raises instead)",
                UserWarning,
                stacklevel=2,
            )
        seen.add(group.id)
        ctx.notes[group.id] = f"{self.fallback} (bn_scale fallback: no BatchNorm weight in the group)"
        return get_criterion(self.fallback)(group, ctx)


def _params(group) -> list:
    return [m for m in group.members if m.kind == "param"]


register_criterion("bn_scale", BNScale())
