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

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import call_model, eval_mode
from prunekit.errors import ConfigError, PruneError


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


def _autograd_error(e: RuntimeError, who: str, second_order: bool) -> PruneError:
    """One actionable line for a torch autograd failure inside criterion ``who``."""
    msg = str(e)
    missing = re.search(r"derivative for (\S+) is not implemented", msg)
    if missing:
        if second_order:
            return PruneError(
                f"criterion {who!r} needs second derivatives, which torch does not implement for "
                f"{missing.group(1)} (used by the model): use criterion='hessian' (Fisher), 'taylor' or 'l1'"
            )
        return PruneError(
            f"criterion {who!r} needs gradients, which torch does not implement for {missing.group(1)}: "
            "use a weight criterion such as 'l1' or 'fpgm'"
        )
    if "modified by an inplace operation" in msg:
        found = re.search(r"which is output \d+ of (\w+?)(?:Backward\d*)?,", msg)
        op = found.group(1) if found else "an op"
        return PruneError(
            f"criterion {who!r} cannot backpropagate: the model modifies the output of {op} in place "
            "(e.g. x.relu_(), nn.ReLU(inplace=True), +=) while the gradient still needs it: replace that "
            "in-place op by its out-of-place form, or use criterion='l1'"
        )
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return PruneError(f"criterion {who!r} failed computing gradients: {first}")


def grad(
    output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    who: str,
    *,
    second_order: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(output, inputs, allow_unused=True, ...)`` whose failures are one PruneError line.

    ``second_order`` says the output is itself a gradient (Hessian-vector products), for the message.

    >>> w = torch.ones(2, requires_grad=True)
    >>> grad((w * w).sum(), [w], "demo")[0].tolist()
    [2.0, 2.0]
    >>> grad(torch.tensor(1.0), [w], "demo")
    Traceback (most recent call last):
    ...
    prunekit.errors.PruneError: criterion 'demo': the loss reaches no trainable parameter ...
    """
    if not output.requires_grad:
        raise PruneError(
            f"criterion {who!r}: the loss reaches no trainable parameter (loss_fn returned a tensor with no "
            "grad_fn): make loss_fn depend on the model output, or use criterion='l1'"
        )
    try:
        grads = torch.autograd.grad(output, list(inputs), allow_unused=True, **kwargs)
    except RuntimeError as e:
        raise _autograd_error(e, who, second_order) from e
    if not second_order and all(g is None for g in grads):
        raise PruneError(
            f"criterion {who!r}: the loss reaches no trainable parameter (no parameter gets a gradient): "
            "make loss_fn depend on the model output, or use criterion='l1'"
        )
    return grads


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
            grads = grad(loss, params, who, create_graph=create_graph)
            by_id = {
                id(p): (g if g is not None else torch.zeros_like(p))
                for p, g in zip(params, grads, strict=True)
            }
            yield {n: by_id[id(p)] for n, p in named}, loss
