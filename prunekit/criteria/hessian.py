"""Diagonal-Hessian saliency (Optimal Brain Damage, LeCun et al. 1990): ``h_ii · w_i² / 2`` per element.

The diagonal is estimated over EVERY calibration batch and averaged (Torch-Pruning's keeps only the last):

- ``method="fisher"`` (default): the empirical Fisher, mean over calibration rows of ``(dL_i/dw)²`` with
  each row's own loss ``L_i`` (``per_sample=True``, the default); ``per_sample=False`` squares the
  batch-mean gradient instead (mean over batches of ``(dL_b/dw)²``, registered as ``"hessian_batch"``),
  which on a trained model is close to zero and ranks little better than random;
- ``method="hutchinson"``: mean over batches of ``z ⊙ (H_b z)`` with Rademacher ``z`` (``samples`` per batch).

On a model that is nearly certain on its calibration rows the Fisher rests on the few rows it gets wrong;
a softened loss (``loss_fn=lambda out, y: F.cross_entropy(out / 20, y)``) spreads it over all rows.

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(1, 1, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.fill_(2.0)
>>> data = [torch.tensor([[1.0], [3.0]])]
>>> ctx = ScoreContext.of(net, None, data=data, loss_fn=lambda out: out.sum())
>>> Hessian().weight_scores(ctx, ["weight"])["weight"].tolist()  # mean(1², 3²) * 2² / 2
[[10.0]]
>>> Hessian(per_sample=False).weight_scores(ctx, ["weight"])["weight"].tolist()  # (1 + 3)² * 2² / 2
[[32.0]]
"""

from __future__ import annotations

import torch

from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria._data import grad, per_batch_grads, per_sample_grads
from prunekit.criteria.base import Criterion
from prunekit.errors import ConfigError


def hessian_diagonal(
    ctx: ScoreContext, method: str = "fisher", samples: int = 1, seed: int = 0, per_sample: bool = True
) -> dict:
    """Mean of the diagonal-Hessian estimate over rows (per-sample Fisher) or batches, per name (cached)."""
    per_sample = per_sample and method == "fisher"
    key = f"hessian:{method}:{samples}:{seed}:{per_sample}"
    if key in ctx.cache:
        return ctx.cache[key]
    acc: dict[str, torch.Tensor] = {}
    n = 0
    if per_sample:
        for grads in per_sample_grads(ctx, "hessian"):
            n += next(iter(grads.values())).shape[0]
            for name, g in grads.items():
                d = g.double().pow(2).sum(0)
                acc[name] = acc[name] + d if name in acc else d
        ctx.cache[key] = {name: d / n for name, d in acc.items()}
        return ctx.cache[key]
    gen = torch.Generator().manual_seed(seed)
    who = "hessian_batch" if method == "fisher" else "hessian_hutchinson"
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
    """OBD saliency ``h · w² / 2``, the diagonal ``h`` over all calibration data; needs ``data``.

    ``per_sample`` (Fisher only): ``h`` from each row's own gradient (True) or the batch-mean one.
    """

    name = "hessian"
    needs_data = True

    def __init__(
        self,
        method: str = "fisher",
        samples: int = 1,
        seed: int = 0,
        reduction: str = "sum",
        per_sample: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(reduction)
        if name is not None:
            self.name = self.__name__ = name
        if method not in ("fisher", "hutchinson"):
            raise ConfigError(f"hessian method must be 'fisher' or 'hutchinson', got {method!r}")
        if not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"hessian samples must be a positive int, got {samples!r}")
        self.method, self.samples, self.seed = method, samples, seed
        self.per_sample = bool(per_sample) and method == "fisher"

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        diag = hessian_diagonal(ctx, self.method, self.samples, self.seed, self.per_sample)
        return {n: diag[n] * ctx.tensors[n].detach().double().pow(2) / 2 for n in names if n in diag}


register_criterion("hessian", Hessian())
register_criterion("hessian_batch", Hessian(per_sample=False, name="hessian_batch"))
register_criterion("hessian_hutchinson", Hessian(method="hutchinson"))
