"""Wanda (Sun et al. 2023): ``|W_ij| · ‖X_j‖₂`` — weight magnitude times the L2 norm of its input feature.

``‖X_j‖₂`` is taken over every token / position of every calibration batch (hooks on the layer's input).
Linear layers read their input features directly; Conv2d layers use the unfolded input (one norm per input
channel and kernel position, so each weight entry gets its own). Other layers are not judged.

>>> import torch
>>> from prunekit.criteria import ScoreContext
>>> net = torch.nn.Linear(2, 1, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0]]))
>>> ctx = ScoreContext.of(net, None, data=[torch.tensor([[3.0, 0.0], [4.0, 1.0]])])
>>> Wanda().weight_scores(ctx, ["weight"])["weight"].tolist()
[[5.0, 2.0]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import call_model, eval_mode
from prunekit.criteria import ScoreContext, register_criterion
from prunekit.criteria._data import batches
from prunekit.criteria.base import Criterion, owner


def unfold_input(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Conv2d input as rows of ``(C_in * kh * kw)`` patches, one per output position."""
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_sq_norms(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Per Linear / Conv2d module name: the sum over all batches of ``x_j²`` per input column (cached)."""
    if "wanda:norms" in ctx.cache:
        return ctx.cache["wanda:norms"]
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().double()
            if isinstance(module, nn.Conv2d):
                if isinstance(module.padding, str) or module.padding_mode != "zeros":
                    return
                rows = unfold_input(module, x if x.dim() == 4 else x.unsqueeze(0))
            else:
                rows = x.reshape(-1, x.shape[-1])
            s = rows.pow(2).sum(0)
            sums[name] = sums[name] + s if name in sums else s

        return fn

    handles = [
        m.register_forward_pre_hook(hook(name))
        for name, m in ctx.model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    try:
        with eval_mode(ctx.model), torch.no_grad():
            for inputs, _ in batches(ctx.data, "wanda"):
                call_model(ctx.model, inputs)
    finally:
        for h in handles:
            h.remove()
    ctx.cache["wanda:norms"] = sums
    return sums


class Wanda(Criterion):
    """``|W| · ‖X_j‖₂`` for Linear and Conv2d weights; needs ``data`` (inputs only, no loss)."""

    name = "wanda"
    needs_data = True

    def weight_scores(self, ctx: ScoreContext, names: list[str]) -> dict[str, torch.Tensor]:
        norms = input_sq_norms(ctx)
        out = {}
        for n in names:
            mod_name, module, attr = owner(ctx.model, n)
            if attr != "weight" or mod_name not in norms:
                continue
            w = ctx.tensors[n].detach().double()
            col = norms[mod_name].sqrt()
            if isinstance(module, nn.Conv2d):  # columns (C_in, kh, kw); each group reads its own slice
                g = module.groups
                per = col.reshape(g, -1)
                rows = torch.arange(w.shape[0]) // (w.shape[0] // g)
                out[n] = w.abs() * per[rows].reshape(w.shape)
            else:
                out[n] = w.abs() * col
        return out


register_criterion("wanda", Wanda())
