"""Regularised sparse training: loss terms that push whole channels towards zero before they are pruned.

- :func:`bn_l1`: ``sum |gamma|`` over BatchNorm scales, network slimming (Liu et al., ICCV 2017). Train with
  ``loss = task_loss + lam * bn_l1(model)`` (the paper: ``lam`` 1e-4 to 1e-5), then prune the channels with
  the smallest ``|gamma|``.
- :func:`group_lasso`: ``sum_g ||w_g||_2`` over groups (Yuan & Lin 2006; structured sparsity learning, Wen et
  al. 2016), which drives whole groups to exactly zero. :func:`group_lasso` groups every conv filter (one
  output channel of a Conv weight); :func:`coupled_group_lasso` takes the members of one coupled group, e.g.
  a conv's filters, the next BatchNorm's scales and the next conv's input channels, where unit ``i`` of the
  group is slice ``i`` of every member. The structural engine's groups map onto the latter.

Both return a scalar tensor that autograd differentiates (masked weights contribute zero and get no update).

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
>>> bn_l1(model).item(), group_lasso(model).item() > 0
(4.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.sparse import select_layers
from prunekit.sparse.unstructured import Selector

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def bn_l1(model: nn.Module) -> Tensor:
    """``sum |gamma|`` over the scales of every BatchNorm layer of ``model`` (a scalar tensor with grad).

    >>> bn = nn.BatchNorm1d(3)
    >>> with torch.no_grad():
    ...     _ = bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
    >>> bn_l1(nn.Sequential(bn)).item()
    3.5
    """
    scales = [m.weight for m in model.modules() if isinstance(m, BATCH_NORMS) and m.weight is not None]
    if not scales:
        raise ConfigError(
            "bn_l1 needs BatchNorm layers with a learnable scale (affine=True); the model has none"
        )
    return torch.stack([w.abs().sum() for w in scales]).sum()


def coupled_group_lasso(members: Sequence[tuple[Tensor, int]], *, weighted: bool = False) -> Tensor:
    """Group lasso of one coupled group: ``sum_i sqrt(sum_members ||member.select(dim, i)||^2)``.

    ``members`` are ``(tensor, dim)`` pairs with the same size along ``dim`` (the group's width); unit ``i``
    is slice ``i`` of each. ``weighted=True`` multiplies each unit's norm by ``sqrt(unit size)`` (Yuan & Lin),
    so groups of different sizes are penalised alike.

    >>> w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # two units (rows)
    >>> g = torch.tensor([0.0, 1.0])
    >>> coupled_group_lasso([(w, 0), (g, 0)]).item()  # ||(3, 4, 0)|| + ||(0, 0, 1)||
    6.0
    """
    if not members:
        raise ConfigError("a group needs at least one (tensor, dim) member")
    width = None
    squares = []
    size = 0
    for tensor, dim in members:
        if not isinstance(tensor, Tensor) or isinstance(dim, bool) or not isinstance(dim, int):
            raise ConfigError("group members must be (tensor, dim) pairs")
        if not -tensor.dim() <= dim < tensor.dim():
            raise ConfigError(f"dim {dim} is out of range for a tensor of shape {tuple(tensor.shape)}")
        rows = tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)
        if width is None:
            width = rows.shape[0]
        elif rows.shape[0] != width:
            raise ConfigError(f"group members disagree on the width: {width} and {rows.shape[0]} units")
        squares.append(rows.square().sum(dim=1))
        size += rows.shape[1]
    norms = torch.stack(squares).sum(dim=0).sqrt()
    total = norms.sum()
    return total * math.sqrt(size) if weighted else total


def group_lasso(
    model: nn.Module,
    *,
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
    weighted: bool = False,
) -> Tensor:
    """Group lasso over conv filters: ``sum`` over the selected Conv layers of ``sum_o ||W[o]||_2``.

    Layers are selected as in :func:`prunekit.sparsify` (``include``/``exclude``), then only Conv1d/2d/3d are
    kept. A masked conv contributes its effective (masked) weight.

    >>> conv = nn.Conv2d(1, 2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.copy_(torch.tensor([3.0, -4.0]).reshape(2, 1, 1, 1))
    >>> group_lasso(nn.Sequential(conv)).item()
    7.0
    """
    modules = dict(model.named_modules())
    convs = [
        modules[name] for name in select_layers(model, include, exclude) if isinstance(modules[name], CONVS)
    ]
    if not convs:
        raise ConfigError("group_lasso found no Conv layer among the selected layers: check include/exclude")
    return torch.stack([coupled_group_lasso([(conv.weight, 0)], weighted=weighted) for conv in convs]).sum()
