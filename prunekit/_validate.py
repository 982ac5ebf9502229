"""Checks of the arguments the public verbs take, each failing with one :class:`ConfigError` line.

Numbers may be Python numbers, numpy scalars or 0-d tensors (:func:`real`, :func:`integer`); bools, NaN and
infinities are refused. A single name where a list of names is expected means that one name (:func:`names`).
A model must be an eager ``nn.Module`` (:func:`eager_module`). Loss-based data criteria get their first
batch tried against the loss before any work (:func:`loss_batches`).

>>> real(torch.tensor(0.25), "ratio", 0.0, 1.0, hi_open=True)
0.25
>>> names("fc")
['fc']
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError

T = TypeVar("T")

#: criteria that differentiate a loss over ``data`` (the others only read activations)
LOSS_CRITERIA = ("taylor", "hessian")


def _scalar(value: Any) -> Any:
    """``value`` as a plain Python number when it is a numpy scalar or a 0-d tensor (else unchanged)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        return value.item()
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        return value.item()
    return value


def real(
    value: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """``value`` as a float in the interval from ``lo`` to ``hi`` (ends excluded when ``*_open``).

    >>> real(np.float32(0.5), "sparsity", 0.0, 1.0, hi_open=True)
    0.5
    >>> real(True, "ratio", 0.0, 1.0)
    Traceback (most recent call last):
    prunekit.errors.ConfigError: ratio must be a number in [0, 1], got True (bool)
    """
    if math.isinf(hi):
        where = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        where = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    plain = _scalar(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Real):
        raise ConfigError(f"{name} must be a number {where}, got {value!r} ({type(value).__name__})")
    number = float(plain)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number {where}, got {number}")
    below = number <= lo if lo_open else number < lo
    above = number >= hi if hi_open else number > hi
    if below or above:
        raise ConfigError(f"{name} must be {where}, got {number}")
    return number


def integer(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int ``>= minimum`` (numpy integers and 0-d integer tensors too; never a bool).

    >>> integer(np.int64(8), "round_to", 1)
    8
    """
    plain = _scalar(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Integral) or plain < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(plain)


def names(items: Iterable[T] | T | None) -> list[T] | None:
    """A list of module names/modules: one string or one module is a list of one (never its characters).

    >>> names(None), names(["a", "b"])
    (None, ['a', 'b'])
    """
    if items is None:
        return None
    if isinstance(items, (str, nn.Module)):
        return [items]
    return list(items)


def eager_module(model: Any, verb: str, *, masks_ok: bool = False) -> nn.Module:
    """Refuse what ``verb`` cannot work on: a non-module, a TorchScript module, a model with masks.

    Structural verbs trace the eager forward and cut ``weight`` tensors, so a ``torch.jit`` module has
    nothing to trace and a parametrized weight (a :func:`prunekit.sparsify` mask, weight norm) is not a
    tensor they can cut; ``masks_ok`` lets :func:`prunekit.sparsify` grow its own masks.

    >>> eager_module(None, "prune")
    Traceback (most recent call last):
    prunekit.errors.ConfigError: prune needs a torch.nn.Module as model, got None
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{verb} needs a torch.nn.Module as model, got {model!r}"[:200])
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError(
            f"{verb} needs the eager module, got a TorchScript {type(model).__name__}: {verb} the "
            "nn.Module, then torch.jit.script the result"
        )
    if not masks_ok:
        from torch.nn.utils import parametrize

        held = [n or "<model>" for n, m in model.named_modules() if parametrize.is_parametrized(m)]
        if held:
            raise ConfigError(
                f"{verb} cuts plain weights, but {held[0]!r} has parametrized weights (sparsify masks?): "
                "call prunekit.remove_masks(model) first (torch.nn.utils.parametrize.remove_parametrizations "
                "for other parametrizations)"
            )
    return model


def loss_batches(
    model: nn.Module, criterion: Any, data: Any, loss_fn: Callable[..., torch.Tensor] | None
) -> None:
    """Try the first ``(inputs, target)`` batch of a loss-based criterion against its loss, without grad.

    A target of the wrong dtype or batch size otherwise surfaces as a raw error from deep inside the
    backward passes; here it is one line naming the criterion and the shapes. One-shot iterators (a
    generator) are not peeked at, so no batch is lost.
    """
    if criterion not in LOSS_CRITERIA or data is None or iter(data) is data:
        return
    from prunekit._inputs import call_model, eval_mode
    from prunekit.criteria._data import split_batch

    first = next(iter(data), None)
    if first is None:
        return
    inputs, target = split_batch(first)
    if target is None:
        return
    with eval_mode(model), torch.no_grad():
        out = call_model(model, inputs)
        try:
            loss_fn(out, target) if loss_fn is not None else F.cross_entropy(out, target)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            loss = "loss_fn" if loss_fn is not None else "cross_entropy (the default loss)"
            raise ConfigError(
                f"criterion {criterion!r}: {loss} refuses the first batch's target: output "
                f"{_describe(out)}, target {_describe(target)} ({str(err).splitlines()[0]})"
            ) from None


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__
