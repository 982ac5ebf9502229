"""Diagonal-Hessian saliency (Optimal Brain Damage, LeCun et al. 1990): ``h_ii · w_i² / 2`` per element.

The diagonal is estimated over EVERY calibration batch and averaged (Torch-Pruning's keeps only the last):

- ``method="fisher"`` (default): the empirical Fisher, mean over batches of ``(dL_b/dw)²``;
- ``method="hutchinson"``: mean over batches of ``z ⊙ (H_b z)`` with Rademacher ``z`` (``samples`` per batch).

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(1, 1, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.fill_(2.0)
>>> data = [torch.tensor([[1.0]]), torch.tensor([[3.0]])]
>>> ctx = ScoreContext.of(net, None, data=data, loss_fn=lambda out: out.sum())
>>> Hessian().weight_scores(ctx, ["weight"])["weight"].tolist()  # mean(1², 3²) * 2² / 2
[[10.0]]
"""

from __future__ import annotations

import torch

from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria._data import grad, per_batch_grads
from prunekit.criteria.base import Criterion
from prunekit.errors import ConfigError


def hessian_diagonal(ctx: ScoreContext, method: str = "fisher", samples: int = 1, seed: int = 0) -> dict:
    """Mean over all batches of the diagonal-Hessian estimate, per parameter name (cached)."""
    key = f"hessian:{method}:{samples}:{seed}"
    if key in ctx.cache:
        return ctx.cache[key]
    acc: dict[str, torch.Tensor] = {}
    n = 0
    gen = torch.Generator().manual_seed(seed)
    who = "hessian" if method == "fisher" else "hessian_hutchinson"
    for grads, _ in per_batch_grads(ctx, who, create_graph=method == "hutchinson"):
        n += 1
        if method == "fisher":
            diag = {name: g.detach().double().pow(2) for name, g in grads.items()}
        else:
            names = list(grads)
            uniq: dict[int, str] = {}
            for name in names:
                uniq.setdefault(id(ctx.tensors[name]), name)
            keys = list(uniq.values())
            params = [ctx.tensors[k] for k in keys]
            est = [torch.zeros_like(p, dtype=torch.float64) for p in params]
            for s in range(samples):
                zs = [torch.randint(0, 2, p.shape, generator=gen).to(p) * 2 - 1 for p in params]
                dot = sum((grads[k] * z).sum() for k, z in zip(keys, zs, strict=True))
                hz = grad(dot, params, who, second_order=True, retain_graph=s < samples - 1)
                for i, (z, h) in enumerate(zip(zs, hz, strict=True)):
                    if h is not None:
                        est[i] += (z * h).detach().double() / samples
            by_id = {id(p): e for p, e in zip(params, est, strict=True)}
            diag = {name: by_id[id(ctx.tensors[name])] for name in names}
        for name, d in diag.items():
            acc[name] = acc[name] + d if name in acc else d
    ctx.cache[key] = {name: d / n for name, d in acc.items()}
    return ctx.cache[key]


class Hessian(Criterion):
    """OBD saliency ``h · w² / 2`` with the diagonal ``h`` accumulated over all batches; needs ``data``."""

    name = "hessian"
    needs_data = True

    def __init__(
        self, method: str = "fisher", samples: int = 1, seed: int = 0, reduction: str = "sum"
    ) -> None:
        super().__init__(reduction)
        if method not in ("fisher", "hutchinson"):
            raise ConfigError(f"hessian method must be 'fisher' or 'hutchinson', got {method!r}")
        if not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"hessian samples must be a positive int, got {samples!r}")
        self.method, self.samples, self.seed = method, samples, seed

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        diag = hessian_diagonal(ctx, self.method, self.samples, self.seed)
        return {n: diag[n] * ctx.tensors[n].detach().double().pow(2) / 2 for n in names if n in diag}


register_criterion("hessian", Hessian())
register_criterion("hessian_hutchinson", Hessian(method="hutchinson"))
