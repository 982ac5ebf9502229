"""Calibration batches, losses and gradients for data-driven criteria.

A batch is either ``inputs`` (a tensor, a tuple of positional args or a dict of kwargs, see
:func:`prunekit._inputs.call_model`) or a pair ``(inputs, target)`` (a 2-item tuple/list, as a
``DataLoader`` over a ``TensorDataset(x, y)`` yields). A model taking two positional tensors is given
``((a, b), None)``. The loss is ``loss_fn(output, target)`` (``loss_fn(output)`` when there is no target);
without ``loss_fn``, pairs use ``torch.nn.functional.cross_entropy``.

Gradients come per batch (:func:`per_batch_grads`, the gradient of each batch's loss) or per sample
(:func:`per_sample_grads`, the gradient of the loss of each row alone, with ``torch.func.vmap`` where the
model allows it and one backward per row where it does not). On a trained model the batch-mean gradient is
close to zero (the model fits the data), so statistics of it (``|w·g|``, ``g²``) rank by noise; the
per-sample gradients keep their size, which is what Fisher and Taylor importance are defined on.

>>> split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1].tolist()
[0, 1]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import batch_size_of, call_model, eval_mode
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
    return output_loss(call_model(model, inputs), target, loss_fn, who)


def output_loss(out: Any, target: Any, loss_fn: Callable[..., torch.Tensor] | None, who: str) -> torch.Tensor:
    """The scalar loss of the model output ``out`` against ``target`` (see the module docstring)."""
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
    named, params = _trainable(ctx, who)
    with eval_mode(ctx.model):
        for inputs, target in batches(ctx.data, who):
            loss = batch_loss(ctx.model, inputs, target, ctx.loss_fn, who)
            grads = grad(loss, params, who, create_graph=create_graph)
            by_id = {
                id(p): (g if g is not None else torch.zeros_like(p))
                for p, g in zip(params, grads, strict=True)
            }
            yield {n: by_id[id(p)] for n, p in named}, loss


def _trainable(ctx: Any, who: str) -> tuple[list[tuple[str, torch.Tensor]], list[torch.Tensor]]:
    """``(every (name, parameter) that trains, the distinct parameters)``; an error when there is none."""
    named = [(n, p) for n, p in ctx.model.named_parameters(remove_duplicate=False) if p.requires_grad]
    unique: dict[int, torch.Tensor] = {}
    for _, p in named:
        unique.setdefault(id(p), p)
    if not unique:
        raise ConfigError(f"criterion {who!r} needs parameters with requires_grad=True")
    return named, list(unique.values())


def _rows(value: Any, start: int, stop: int, n: int) -> Any:
    """Rows ``start:stop`` of every tensor of ``value`` whose leading dim is the batch size ``n``."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() and value.shape[0] == n else value
    if isinstance(value, Mapping):
        return {k: _rows(v, start, stop, n) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, start, stop, n) for v in value)
    return value


def _batched(value: Any, n: int) -> bool:
    """True when every tensor of ``value`` has leading dim ``n`` and nothing else is in it (vmap-able)."""
    if isinstance(value, torch.Tensor):
        return value.dim() > 0 and value.shape[0] == n
    if isinstance(value, Mapping):
        return bool(value) and all(_batched(v, n) for v in value.values())
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_batched(v, n) for v in value)
    return False


def _vmapped(
    ctx: Any, params: list[torch.Tensor], inputs: Any, target: Any, chunk: int, who: str
) -> list[torch.Tensor]:
    """Per-row gradients ``[rows, *p.shape]`` of each parameter, by ``torch.func.vmap`` over the rows."""
    from torch.func import functional_call, grad, vmap

    names = {id(p): n for n, p in ctx.model.named_parameters(remove_duplicate=False)}
    keys = [names[id(p)] for p in params]

    def one(values: list[torch.Tensor], x: Any, t: Any) -> torch.Tensor:
        x1 = _unsqueezed(x)
        t1 = None if t is None else t.unsqueeze(0)
        args = (x1,) if isinstance(x1, torch.Tensor) else ()
        if isinstance(x1, (tuple, list)):
            args = tuple(x1)
        kwargs = dict(x1) if isinstance(x1, Mapping) else {}
        out = functional_call(ctx.model, dict(zip(keys, values, strict=True)), args, kwargs)
        return output_loss(out, t1, ctx.loss_fn, who)

    values = [p.detach() for p in params]
    fn = vmap(grad(one), in_dims=(None, 0, None if target is None else 0), chunk_size=chunk)
    return list(fn(values, inputs, target))


def _unsqueezed(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.unsqueeze(0)
    if isinstance(value, Mapping):
        return {k: _unsqueezed(v) for k, v in value.items()}
    return type(value)(_unsqueezed(v) for v in value)


def _looped(ctx: Any, params: list[torch.Tensor], inputs: Any, target: Any, n: int, who: str) -> list:
    """Per-row gradients by one backward per row (any model, any input structure)."""
    rows: list[list[torch.Tensor]] = [[] for _ in params]
    for i in range(n):
        t = _rows(target, i, i + 1, n)
        loss = batch_loss(ctx.model, _rows(inputs, i, i + 1, n), t, ctx.loss_fn, who)
        grads = grad(loss, params, who)
        for acc, p, g in zip(rows, params, grads, strict=True):
            acc.append(torch.zeros_like(p) if g is None else g)
    return [torch.stack(r) for r in rows]


def per_sample_grads(ctx: Any, who: str, max_elements: int = 1 << 25) -> Iterator[dict[str, torch.Tensor]]:
    """For each chunk of calibration rows: ``{param name: per-row dL_i/dparam, shape [rows, *param.shape]}``.

    ``L_i`` is the loss of row ``i`` alone (``loss_fn(model(x[i:i+1]), target[i:i+1])``, see
    :func:`batch_loss`), the model in eval mode (BN running statistics, dropout off). Rows are taken in
    chunks of at most ``max_elements // parameter count`` so memory stays bounded. Each batch's loss is
    checked once with ordinary autograd (shapes, in-place ops, a loss that reaches no parameter: one
    error line); ``torch.func.vmap`` then gives the per-row gradients, or, where the model cannot be
    vmapped (data-dependent control flow, inputs with non-tensor parts), one backward per row does.
    ``.grad`` fields and BN statistics are untouched. Every name of a shared parameter gets the same
    gradient; unused parameters get zeros.

    >>> from prunekit.criteria import ScoreContext
    >>> data = [torch.tensor([[1.0, 0.0], [0.0, 2.0]])]
    >>> ctx = ScoreContext.of(nn.Linear(2, 1, bias=False), None, data=data, loss_fn=lambda out: out.sum())
    >>> next(per_sample_grads(ctx, "demo"))["weight"].tolist()
    [[[1.0, 0.0]], [[0.0, 2.0]]]
    """
    named, params = _trainable(ctx, who)
    chunk = max(1, max_elements // max(1, sum(p.numel() for p in params)))
    with eval_mode(ctx.model):
        for inputs, target in batches(ctx.data, who):
            grad(batch_loss(ctx.model, inputs, target, ctx.loss_fn, who), params, who)  # checks, once
            n = batch_size_of(inputs)
            vmappable = _batched(inputs, n) and (target is None or _batched(target, n))
            for start in range(0, n, chunk):
                x, t = _rows(inputs, start, start + chunk, n), _rows(target, start, start + chunk, n)
                rows = min(chunk, n - start)
                got = None
                if vmappable:
                    try:
                        got = _vmapped(ctx, params, x, t, chunk, who)
                    except (RuntimeError, NotImplementedError, TypeError, ValueError):
                        vmappable = False  # the model does something vmap cannot batch: one row at a time
                if got is None:
                    got = _looped(ctx, params, x, t, rows, who)
                by_id = {id(p): g.detach() for p, g in zip(params, got, strict=True)}
                yield {name: by_id[id(p)] for name, p in named}
