"""First-order Taylor importance (Molchanov et al. 2017/2019): ``|w · dL/dw|`` per element.

The term is accumulated over EVERY calibration batch (mean over batches of ``|w ⊙ g_b|``) and is computed for
every parameter, BatchNorm weights and biases included, so a channel's score counts its BN parameters too.

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(2, 1, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[2.0, -1.0]]))
>>> data = [torch.tensor([[1.0, 3.0]])]
>>> ctx = ScoreContext.of(net, None, data=data, loss_fn=lambda out: out.sum())
>>> Taylor().weight_scores(ctx, ["weight"])["weight"].tolist()
[[2.0, 3.0]]
"""

from __future__ import annotations

import torch

from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria._data import per_batch_grads
from prunekit.criteria.base import Criterion


def taylor_terms(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Mean over batches of ``|w ⊙ dL/dw|`` for every trainable parameter (cached in ``ctx.cache``)."""
    if "taylor:terms" not in ctx.cache:
        acc: dict[str, torch.Tensor] = {}
        n = 0
        for grads, _ in per_batch_grads(ctx, "taylor"):
            n += 1
            for name, g in grads.items():
                term = (ctx.tensors[name].detach() * g).abs().double()
                acc[name] = acc[name] + term if name in acc else term
        ctx.cache["taylor:terms"] = {name: t / n for name, t in acc.items()}
    return ctx.cache["taylor:terms"]


class Taylor(Criterion):
    """``|w · dL/dw|`` accumulated over all batches; needs ``data`` (``loss_fn`` unless (x, y) batches)."""

    name = "taylor"
    needs_data = True

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        terms = taylor_terms(ctx)
        return {n: terms[n] for n in names if n in terms}


register_criterion("taylor", Taylor())
