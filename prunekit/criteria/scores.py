"""Running a criterion: group scores for structured pruning, weight scores for masks, checked in one place.

Every score a criterion returns passes :func:`check_scores` (the right number or shape, every value finite),
so a custom criterion that returns NaN, inf or the wrong length fails with one line naming it, before any
ranking.

>>> import torch
>>> check_scores(torch.ones(3), (3,), "mine", "group 0")
tensor([1., 1., 1.])
>>> check_scores(torch.tensor([1.0, float("nan")]), (2,), "mine", "group 0")
Traceback (most recent call last):
...
prunekit.errors.ConfigError: criterion 'mine' returned 1 non-finite score (NaN or inf) for group 0: ...
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.criteria.base import Criterion
from prunekit.criteria.context import ScoreContext
from prunekit.errors import ConfigError


def check_scores(scores: Any, shape: tuple[int, ...], name: str, where: str) -> torch.Tensor:
    """``scores`` as a float tensor of ``shape`` (``(width,)``: any layout of that many numbers), or raise."""
    try:
        s = torch.as_tensor(scores).detach()
    except (TypeError, ValueError, RuntimeError) as e:
        what = type(scores).__name__
        raise ConfigError(f"criterion {name!r} returned {what} for {where}, not a tensor") from e
    if s.is_complex() or s.dtype == torch.bool:
        raise ConfigError(f"criterion {name!r} returned {s.dtype} scores for {where}: give real numbers")
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if len(shape) == 1:
        s = s.reshape(-1)
    if tuple(s.shape) != tuple(shape):
        got = s.numel() if len(shape) == 1 else tuple(s.shape)
        want = f"width {shape[0]}" if len(shape) == 1 else f"shape {tuple(shape)}"
        raise ConfigError(f"criterion {name!r} returned {got} scores for {where} of {want}")
    bad = int((~torch.isfinite(s)).sum())
    if bad:
        raise ConfigError(
            f"criterion {name!r} returned {bad} non-finite score{'s' if bad > 1 else ''} (NaN or inf) for "
            f"{where}: fix the criterion (NaN weights or a 0/0 in it?) or use another"
        )
    return s


def group_scores(groups: Iterable[Any], criterion: Criterion, ctx: ScoreContext) -> dict[int, torch.Tensor]:
    """One checked float64 score per unit of each group, by group id."""
    out = {}
    for g in groups:
        s = check_scores(criterion(g, ctx), (g.width,), criterion.name, f"group {g.id}")
        out[g.id] = s.to(torch.float64)
    return out


def weight_param(module: nn.Module, name: str) -> str:
    """The parameter name holding layer ``name``'s weight (the unmasked original when it carries a mask).

    >>> weight_param(nn.Linear(2, 2), "fc"), weight_param(nn.Linear(2, 2), "")
    ('fc.weight', 'weight')
    """
    masked = hasattr(module, "parametrizations") and "weight" in module.parametrizations
    leaf = "parametrizations.weight.original" if masked else "weight"
    return f"{name}.{leaf}" if name else leaf


def check_unstructured(criterion: Criterion, data: Any) -> None:
    """Raise unless ``criterion`` can mask single weights here (element scores or a mask method, data)."""
    why = criterion.unstructured_error()
    if why:
        raise ConfigError(why)
    if criterion.needs_data and data is None:
        raise ConfigError(f"criterion {criterion.name!r} is data-driven: pass data=<iterable of batches>")


def layer_scores(
    model: nn.Module, names: list[str], criterion: Criterion, ctx: ScoreContext
) -> dict[str, torch.Tensor]:
    """Checked weight-shaped scores of the named layers (module names of ``model``), from ``weight_scores``.

    >>> from prunekit.criteria import get_criterion
    >>> net = nn.Sequential(nn.Linear(2, 3))
    >>> layer_scores(net, ["0"], get_criterion("l1"), ScoreContext.of(net, None))["0"].shape
    torch.Size([3, 2])
    """
    check_unstructured(criterion, ctx.data)
    modules = dict(model.named_modules())
    params = {name: weight_param(modules[name], name) for name in names}
    got = criterion.weight_scores(ctx, list(params.values()))
    out = {}
    for name, pname in params.items():
        if pname not in got:
            raise ConfigError(f"criterion {criterion.name!r} cannot score layer {name!r}; exclude it")
        shape = tuple(modules[name].weight.shape)
        out[name] = check_scores(got[pname], shape, criterion.name, f"layer {name!r}")
    return out
