"""Calibration batches and losses for data-driven criteria.

A batch is either ``inputs`` (a tensor, a tuple of positional args or a dict of kwargs, see
:func:`prunekit._inputs.call_model`) or a pair ``(inputs, target)`` (a 2-item tuple/list, as a
``DataLoader`` over a ``TensorDataset(x, y)`` yields). A model taking two positional tensors is given
``((a, b), None)``. The loss is ``loss_fn(output, target)`` (``loss_fn(output)`` when there is no target);
without ``loss_fn``, pairs use ``torch.nn.functional.cross_entropy``.

>>> split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1].tolist()
[0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import call_model, eval_mode
from prunekit.errors import ConfigError


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a batch (target None for a bare input)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def batches(data: Any, who: str) -> Iterator[tuple[Any, Any]]:
    """Iterate ``(inputs, target)`` over ``data``; a clear error when there is none."""
    if data is None:
        raise ConfigError(
            f"criterion {who!r} is data-driven: pass data=<iterable of batches>, e.g. a DataLoader"
        )
    n = 0
    for batch in data:
        n += 1
        yield split_batch(batch)
    if n == 0:
        raise ConfigError(f"criterion {who!r} got data with no batches")


def batch_loss(
    model: nn.Module, inputs: Any, target: Any, loss_fn: Callable[..., torch.Tensor] | None, who: str
) -> torch.Tensor:
    """The scalar loss of one batch."""
    out = call_model(model, inputs)
    if loss_fn is not None:
        loss = loss_fn(out) if target is None else loss_fn(out, target)
    elif target is not None:
        loss = F.cross_entropy(out, target)
    else:
        raise ConfigError(f"criterion {who!r} needs a loss: pass loss_fn, or (inputs, target) batches")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ConfigError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    return loss.reshape(())


def per_batch_grads(ctx: Any, who: str, create_graph: bool = False) -> Iterator[tuple[dict, torch.Tensor]]:
    """For each batch: ``({param name: dL/dparam}, loss)``; ``.grad`` fields and BN stats are untouched.

    Every name of a shared parameter gets the same gradient; unused parameters get zeros.
    """
    named = [(n, p) for n, p in ctx.model.named_parameters(remove_duplicate=False) if p.requires_grad]
    unique: dict[int, torch.Tensor] = {}
    for _, p in named:
        unique.setdefault(id(p), p)
    params = list(unique.values())
    if not params:
        raise ConfigError(f"criterion {who!r} needs parameters with requires_grad=True")
    with eval_mode(ctx.model):
        for inputs, target in batches(ctx.data, who):
            loss = batch_loss(ctx.model, inputs, target, ctx.loss_fn, who)
            grads = torch.autograd.grad(loss, params, allow_unused=True, create_graph=create_graph)
            by_id = {
                id(p): (g if g is not None else torch.zeros_like(p))
                for p, g in zip(params, grads, strict=True)
            }
            yield {n: by_id[id(p)] for n, p in named}, loss
