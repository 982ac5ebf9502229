"""BatchNorm scale (network slimming, Liu et al. 2017): a channel's importance is ``|gamma|``.

Only BatchNorm weights are judged, so a group without a BatchNorm weight cannot be scored (an error naming it:
ignore that layer or use another criterion). Train with :mod:`prunekit.regularize` BN-L1 to sparsify gammas.

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
>>> with torch.no_grad():
...     _ = net[1].weight.copy_(torch.tensor([-3.0, 0.5]))
>>> BNScale().weight_scores(ScoreContext.of(net, None), ["1.weight", "0.weight"])["1.weight"].tolist()
[3.0, 0.5]
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria.base import Criterion, owner


class BNScale(Criterion):
    """``|gamma|`` of BatchNorm weights; every other parameter is not judged."""

    name = "bn_scale"

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for n in names:
            _, module, attr = owner(ctx.model, n)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and attr == "weight":
                out[n] = ctx.tensors[n].detach().abs()
        return out


register_criterion("bn_scale", BNScale())
