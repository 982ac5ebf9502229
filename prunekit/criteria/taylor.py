"""First-order Taylor importance (Molchanov et al. 2017/2019): ``|w · dL/dw|`` per element.

With ``per_sample=True`` (the default) the gradient is that of each calibration row's own loss and the
score is the mean over rows of ``|w ⊙ g_i|``. With ``per_sample=False`` it is the mean over batches of
``|w ⊙ g_b|`` with the batch-mean gradient ``g_b`` (registered as ``"taylor_batch"``): on a trained model
``g_b`` is close to zero, since the model fits its data, so that variant ranks little better than random
(docs/RESULTS.md, "Structured criteria on digits"). The term is computed for every parameter, BatchNorm
weights and biases included, so a channel's score counts its BN parameters too.

On a model that is nearly certain on its calibration rows, a few rows carry almost all the gradient; a
softened loss spreads it over all of them (``loss_fn=lambda out, y: F.cross_entropy(out / 20, y)``, which
ranked better on the trained digits CNN at 70 %).

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(2, 1, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[2.0, -1.0]]))
>>> data = [torch.tensor([[1.0, 3.0], [-1.0, 3.0]])]
>>> ctx = ScoreContext.of(net, None, data=data, loss_fn=lambda out: out.sum())
>>> Taylor().weight_scores(ctx, ["weight"])["weight"].tolist()  # rows: |2·1|, |2·-1| -> 2; 3 and 3
[[2.0, 3.0]]
>>> Taylor(per_sample=False).weight_scores(ctx, ["weight"])["weight"].tolist()  # batch gradient (0, 6)
[[0.0, 6.0]]
"""

from __future__ import annotations

import torch

from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria._data import per_batch_grads, per_sample_grads
from prunekit.criteria.base import Criterion


def taylor_terms(ctx: ScoreContext, per_sample: bool = True) -> dict[str, torch.Tensor]:
    """Mean of ``|w ⊙ dL/dw|`` over rows (``per_sample``) or batches, each trainable parameter (cached)."""
    key = f"taylor:terms:{'sample' if per_sample else 'batch'}"
    if key not in ctx.cache:
        acc: dict[str, torch.Tensor] = {}
        n = 0
        if per_sample:
            for grads in per_sample_grads(ctx, "taylor"):
                n += next(iter(grads.values())).shape[0]
                for name, g in grads.items():
                    term = (ctx.tensors[name].detach() * g).abs().double().sum(0)
                    acc[name] = acc[name] + term if name in acc else term
        else:
            for grads, _ in per_batch_grads(ctx, "taylor_batch"):
                n += 1
                for name, g in grads.items():
                    term = (ctx.tensors[name].detach() * g).abs().double()
                    acc[name] = acc[name] + term if name in acc else term
        ctx.cache[key] = {name: t / n for name, t in acc.items()}
    return ctx.cache[key]


class Taylor(Criterion):
    """``|w · dL/dw|`` averaged over calibration rows (``per_sample``) or batches; needs ``data``.

    ``loss_fn`` is needed unless the batches are ``(x, y)`` pairs (cross-entropy).
    """

    name = "taylor"
    needs_data = True

    def __init__(self, per_sample: bool = True, reduction: str = "sum", name: str | None = None) -> None:
        super().__init__(reduction)
        self.per_sample = bool(per_sample)
        if name is not None:
            self.name = self.__name__ = name

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        terms = taylor_terms(ctx, self.per_sample)
        return {n: terms[n] for n in names if n in terms}


register_criterion("taylor", Taylor())
register_criterion("taylor_batch", Taylor(per_sample=False, name="taylor_batch"))
