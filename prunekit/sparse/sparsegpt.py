"""SparseGPT (Frantar & Alistarh 2023): one-shot layer-wise pruning with OBS weight reconstruction.

For each layer (in model order, each seeing the inputs produced by the already-pruned layers before it) the
Hessian of the layer-wise reconstruction loss ``‖WX − ŴX‖²`` is ``H = XᵀX / n`` (plus ``percdamp`` times its
mean diagonal). Columns are processed left to right in blocks of ``blocksize``: inside a block the weights
with the lowest ``w² / [H⁻¹]²_jj`` are pruned (unstructured: an exact count per block, so each layer loses
exactly ``floor(sparsity · numel + 0.5)`` weights; ``N:M``: the ``N`` best of every ``M`` consecutive input
channels), and the error of every pruned weight is spread over the not-yet-processed columns through the
Cholesky factor of ``H⁻¹``. Unlike a score, it CHANGES the kept weights. Use it through
``prunekit.sparsify(model, 0.5, criterion="sparsegpt", data=batches)``.


Supported layers: Linear, and Conv2d with ``groups=1`` and numeric zero padding (via ``unfold``; columns are
reordered to (kernel position, input channel) so N:M groups run along input channels as everywhere else).

It lives in ``sparse/`` rather than ``criteria/`` because it is a pruning *method* that produces masks and new
weights together, not an importance score that could rank groups.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> layer = nn.Linear(8, 4)
>>> keep = sparsegpt_masks(nn.Sequential(layer), ["0"], [torch.randn(32, 8)], 0.5, parse_pattern("2:4"))
>>> keep["0"].reshape(-1, 4).sum(1).tolist() == [2] * 8
True
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import call_model, eval_mode
from prunekit.criteria._data import batches
from prunekit.errors import ConfigError
from prunekit.progress import track
from prunekit.sparse.patterns import Pattern, parse_pattern

__all__ = ["check_sparsegpt_layer", "parse_pattern", "sparsegpt_layer", "sparsegpt_masks"]


class _Stop(Exception):
    """Raised by the input hook once the layer's input is recorded: the rest of the forward is skipped."""


def check_sparsegpt_layer(module: nn.Module, name: str) -> None:
    """Raise ConfigError unless SparseGPT can handle ``module``.

    >>> check_sparsegpt_layer(nn.Linear(2, 2), "fc")
    """
    if isinstance(module, nn.Linear):
        return
    if (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and not isinstance(module.padding, str)
        and module.padding_mode == "zeros"
    ):
        return
    raise ConfigError(
        f"sparsegpt handles Linear and plain Conv2d (groups=1, zero padding) layers; exclude {name!r}"
    )


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    x = x if x.dim() == 4 else x.unsqueeze(0)
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _column_order(module: nn.Module) -> torch.Tensor:
    """Permutation of the flattened weight columns into (kernel position, input channel) order."""
    cols = module.weight[0].numel()
    if isinstance(module, nn.Linear):
        return torch.arange(cols)
    cin = module.weight.shape[1]
    return torch.arange(cols).reshape(cin, -1).t().flatten()


def layer_hessian(model: nn.Module, module: nn.Module, data: Any) -> torch.Tensor:
    """``XᵀX / n`` of ``module``'s inputs over every batch (float64, columns in the weight's flat order)."""
    acc: dict[str, Any] = {"h": None, "n": 0}

    def hook(mod: nn.Module, args: tuple) -> None:
        rows = _rows(mod, args[0].detach().double())
        acc["h"] = rows.t() @ rows if acc["h"] is None else acc["h"] + rows.t() @ rows
        acc["n"] += rows.shape[0]
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            for inputs, _ in batches(data, "sparsegpt"):
                try:
                    call_model(model, inputs)
                except _Stop:
                    pass
    finally:
        handle.remove()
    if acc["h"] is None:
        raise ConfigError("sparsegpt: a selected layer never ran on the calibration data; exclude it")
    return acc["h"] / acc["n"]


def _count(sparsity: float, total: int) -> int:
    return math.floor(sparsity * total + 0.5)


def _inverse_cholesky(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    damp = percdamp * float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(6):
        chol, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(hinv, upper=True)
        damp = max(damp * 10, 1e-8)
    raise ConfigError("sparsegpt: the input Hessian is not positive definite even with damping")


def sparsegpt_layer(
    w: torch.Tensor,
    h: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a 2-D weight ``(out, cols)`` given ``H`` ``(cols, cols)``: returns (new weight, keep mask).

    >>> w, keep = sparsegpt_layer(torch.ones(2, 4), torch.eye(4), 0.5, parse_pattern("unstructured"))
    >>> int(keep.sum()), float(w[~keep].abs().sum())
    (4, 0.0)
    """
    w = w.detach().double().clone()
    h = h.double().clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    hinv = _inverse_cholesky(h, percdamp)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    nm = pattern.kind == "n:m"
    if nm:  # a block must hold whole N:M groups
        blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if not nm:
            k = _count(sparsity, rows * i2) - _count(sparsity, rows * i1)
            if k > 0:
                metric = (w1.pow(2) / d.pow(2)).flatten()
                mask1.view(-1)[torch.topk(metric, k, largest=False).indices] = True
        for i in range(i2 - i1):
            if nm and i % pattern.m == 0:
                metric = w1[:, i : i + pattern.m].pow(2) / d[i : i + pattern.m].pow(2)
                low = torch.topk(metric, pattern.m - pattern.n, dim=1, largest=False).indices
                mask1.scatter_(1, i + low, True)
            col = w1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            e = (col - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        pruned[:, i1:i2] = mask1
    return w, ~pruned


def sparsegpt_masks(
    model: nn.Module,
    names: list[str],
    data: Any,
    sparsity: float,
    pattern: Pattern,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Run SparseGPT on the named layers in order; writes the reconstructed weights IN PLACE and returns
    their keep-masks (weight-shaped bool). On any error every touched weight is restored.
    """
    if pattern.kind not in ("unstructured", "n:m"):
        raise ConfigError(f"sparsegpt supports 'unstructured' and 'N:M' patterns, got {pattern}")
    modules = dict(model.named_modules())
    for name in names:
        check_sparsegpt_layer(modules[name], name)
    saved: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    try:
        for name in track(names, "sparsegpt"):
            module = modules[name]
            h = layer_hessian(model, module, data)
            order = _column_order(module)
            w2 = module.weight.detach().reshape(module.weight.shape[0], -1)
            new, keep = sparsegpt_layer(
                w2[:, order], h[order][:, order], sparsity, pattern, blocksize, percdamp
            )
            inv = torch.argsort(order)
            saved[name] = module.weight.detach().clone()
            with torch.no_grad():
                module.weight.copy_(new[:, inv].reshape(module.weight.shape).to(module.weight.dtype))
            masks[name] = keep[:, inv].reshape(module.weight.shape)
    except BaseException:
        with torch.no_grad():
            for name, w in saved.items():
                modules[name].weight.copy_(w)
        raise
    return masks
