"""FPGM (He et al. 2019): filters near the geometric median of their layer are redundant.

A filter's score is the sum of its Euclidean distances to every other filter of the same layer (the usual
approximation of the distance to the geometric median): small = replaceable = pruned first. The output
filters of Conv / Linear weights are judged; a group that cuts no output filter (attention heads, the
columns of an embedding, a transposed conv's outputs) is judged on the slices of every 2-D-or-more weight it
cuts, along the cut dim, the same way.

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(2, 3, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]))
>>> [round(v, 4) for v in FPGM().dim_scores(ScoreContext.of(net, None), "weight", 0).tolist()]
[6.0, 9.2426, 5.2426]
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria.base import Criterion, owner

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _distances(t: torch.Tensor, dim: int) -> torch.Tensor:
    w = t.detach().double().movedim(dim, 0).flatten(1)
    return torch.cdist(w, w).sum(1)


class FPGM(Criterion):
    """Sum of L2 distances from each output filter to the layer's other filters."""

    name = "fpgm"

    def dim_scores(self, ctx: ScoreContext, name: str, dim: int) -> torch.Tensor | None:
        _, module, attr = owner(ctx.model, name)
        if not isinstance(module, _LAYERS) or attr != "weight" or dim != 0:
            return None
        return _distances(ctx.tensors[name], 0)

    def __call__(self, group, ctx: ScoreContext) -> torch.Tensor:
        if any(self.dim_scores(ctx, m.name, m.dim) is not None for m in group.members if m.kind == "param"):
            return super().__call__(group, ctx)
        return _SlicesFPGM()(group, ctx)


class _SlicesFPGM(Criterion):
    """FPGM over the slices of every weight of 2 or more dims a group cuts (groups with no output filter)."""

    name = "fpgm"

    def dim_scores(self, ctx: ScoreContext, name: str, dim: int) -> torch.Tensor | None:
        t = ctx.tensors[name]
        return _distances(t, dim) if t.dim() >= 2 and t.is_floating_point() else None


register_criterion("fpgm", FPGM())
