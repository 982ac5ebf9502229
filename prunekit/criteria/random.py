"""Random importance: seeded uniform noise per element (a baseline every criterion should beat).

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(3, 2)
>>> s = RandomScore(seed=1).weight_scores(ScoreContext.of(net, None), ["weight"])["weight"]
>>> again = RandomScore(seed=1).weight_scores(ScoreContext.of(net, None), ["weight"])["weight"]
>>> s.shape, bool((s == again).all())
(torch.Size([2, 3]), True)
"""

from __future__ import annotations

import zlib

import torch

from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria.base import Criterion


class RandomScore(Criterion):
    """Uniform [0, 1) scores, the same for the same ``seed`` and parameter name (order does not matter)."""

    name = "random"

    def __init__(self, seed: int = 0, reduction: str = "sum") -> None:
        super().__init__(reduction)
        self.seed = seed

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for n in names:
            if n in ctx.tensors:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(n.encode()))
                out[n] = torch.rand(ctx.tensors[n].shape, generator=gen, dtype=torch.float64)
        return out


register_criterion("random", RandomScore())
