"""Activation-based importance from forward hooks over calibration batches.

Each output channel of a Conv / Linear / BatchNorm layer is measured at that layer's output (before a
following activation function), over all batches and positions:

- ``"activation"``: mean ``|a|`` (Hu et al. style magnitude of activations);
- ``"apoz"``: ``1 - APoZ`` where APoZ (Hu et al. 2016) is the fraction of outputs ``<= 0``, i.e. of zeros
  after a ReLU; channels that are mostly zero score low.

A group combines the channels of every such layer among its members (the criterion's ``reduction``).

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(1, 2, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[1.0], [-1.0]]))
>>> ctx = ScoreContext.of(net, None, data=[torch.tensor([[2.0], [-4.0]])])
>>> Activation().dim_scores(ctx, "weight", 0).tolist()
[3.0, 3.0]
>>> Activation("apoz").dim_scores(ctx, "weight", 0).tolist()
[0.5, 0.5]
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit._inputs import call_model, eval_mode
from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria._data import batches
from prunekit.criteria.base import Criterion, owner
from prunekit.errors import ConfigError

_CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)
_LAYERS = (nn.Linear, *_CHANNEL_FIRST)


def activation_stats(ctx: ScoreContext) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per module name: (sum |a|, count of a <= 0, positions) per output channel, all batches (cached)."""
    if "activation:stats" in ctx.cache:
        return ctx.cache["activation:stats"]
    stats: dict[str, list] = {}

    def hook(name: str, channel_first: bool):
        def fn(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            a = out.detach().double()
            a = a.movedim(1, -1) if channel_first else a
            a = a.reshape(-1, a.shape[-1])
            s = stats.setdefault(
                name, [torch.zeros(a.shape[1], dtype=torch.float64), torch.zeros_like(a[0]), 0]
            )
            s[0] += a.abs().sum(0)
            s[1] += (a <= 0).double().sum(0)
            s[2] += a.shape[0]

        return fn

    handles = [
        m.register_forward_hook(hook(name, isinstance(m, _CHANNEL_FIRST)))
        for name, m in ctx.model.named_modules()
        if isinstance(m, _LAYERS)
    ]
    try:
        with eval_mode(ctx.model), torch.no_grad():
            for inputs, _ in batches(ctx.data, "activation"):
                call_model(ctx.model, inputs)
    finally:
        for h in handles:
            h.remove()
    ctx.cache["activation:stats"] = {k: (v[0], v[1], v[2]) for k, v in stats.items()}
    return ctx.cache["activation:stats"]


class Activation(Criterion):
    """Mean ``|activation|`` (``mode="mean"``) or ``1 - APoZ`` (``mode="apoz"``) per output channel."""

    needs_data = True

    def __init__(self, mode: str = "mean", reduction: str = "sum") -> None:
        if mode not in ("mean", "apoz"):
            raise ConfigError(f"activation mode must be 'mean' or 'apoz', got {mode!r}")
        self.mode = mode
        self.name = "activation" if mode == "mean" else "apoz"
        super().__init__(reduction)

    def dim_scores(self, ctx: ScoreContext, name: str, dim: int) -> torch.Tensor | None:
        mod_name, module, attr = owner(ctx.model, name)
        if not isinstance(module, _LAYERS) or attr != "weight" or dim != 0:
            return None
        stats = activation_stats(ctx).get(mod_name)
        if stats is None:  # the layer never ran on the calibration data
            return None
        abs_sum, nonpos, n = stats
        return abs_sum / n if self.mode == "mean" else 1.0 - nonpos / n


register_criterion("activation", Activation("mean"))
register_criterion("apoz", Activation("apoz"))
