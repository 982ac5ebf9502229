"""L1 / L2 magnitude importance of structural units.

A unit's score is the p-norm^p of every parameter entry it would remove, summed over all members of the
group (conv filters, the next layer's input columns, BN weight and bias, ...). Members are *not* normalised
individually: a unit that removes more weight mass scores higher. Buffers (BN running stats) do not count.

>>> import torch
>>> from prunekit.graph.groups import build_groups
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
>>> g = build_groups(net, torch.zeros(1, 2)).prunable_groups[0]
>>> l1_magnitude(g, ScoreContext.of(net, None)).shape
torch.Size([3])
"""

from __future__ import annotations

import torch

from prunekit.criteria import ScoreContext, register_criterion


def _magnitude(group, ctx: ScoreContext, p: int) -> torch.Tensor:
    scores = torch.zeros(group.width, dtype=torch.float64)
    for m in group.members:
        if m.kind != "param":
            continue
        key = f"magnitude:{p}:{m.name}:{m.dim}"
        per = ctx.cache.get(key)
        if per is None:  # a dim shared by several groups (concat consumers) is reduced once
            w = ctx.tensors[m.name].detach().float()
            other = [d for d in range(w.dim()) if d != m.dim]
            per = torch.linalg.vector_norm(w, ord=p, dim=other) if other else w.abs()
            per = ctx.cache[key] = per.double().pow(p)
        scores.index_add_(0, torch.as_tensor(m.units), per[torch.as_tensor(m.index)])
    return scores


def l1_magnitude(group, ctx: ScoreContext) -> torch.Tensor:
    """Sum of |w| over everything each unit removes."""
    return _magnitude(group, ctx, 1)


def l2_magnitude(group, ctx: ScoreContext) -> torch.Tensor:
    """Sum of w² over everything each unit removes (the squared L2 norm; same ranking as L2)."""
    return _magnitude(group, ctx, 2)


register_criterion("l1", l1_magnitude)
register_criterion("l2", l2_magnitude)
