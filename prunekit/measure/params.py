"""Parameter counts: total and non-zero, with tied weights counted once and masks seen through.

A model may carry masks in two ways, and both are counted by their *effective* tensor (what the forward uses):

- ``torch.nn.utils.parametrize`` (prunekit's sparse masks): the stored tensor is
  ``module.parametrizations.weight.original``, the effective one is ``module.weight``. The original is not
  counted again, and the parametrization's own buffers (the mask) are not parameters.
- ``torch.nn.utils.prune``: the stored tensor is ``module.weight_orig`` with a ``weight_mask`` buffer; the
  effective one is ``weight_orig * weight_mask``.

A tensor shared by several modules (tied weights) is counted once, under the first name ``named_modules``
gives it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from prunekit._jsondata import JsonData


@dataclass
class ParamCount(JsonData):
    """Number of parameter entries (``total``) and how many of them are non-zero (``nonzero``)."""

    total: int
    nonzero: int

    _derived = ("sparsity",)

    @property
    def sparsity(self) -> float:
        """Fraction of entries that are zero (0.0 for a model without parameters)."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0


def pruning_hooks(module: nn.Module) -> list[prune.BasePruningMethod]:
    """The ``torch.nn.utils.prune`` methods attached to ``module`` (the way ``prune.remove`` finds them)."""
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def _own_effective(module: nn.Module) -> Iterator[tuple[str, tuple[int, ...], torch.Tensor]]:
    """Yield ``(tensor_name, identity_key, effective_tensor)`` for the parameters ``module`` itself owns.

    The identity key is made of the ``id`` of the stored Parameter(s), so a tensor tied between modules gives
    the same key everywhere.
    """
    pruned = {hook._tensor_name: hook for hook in pruning_hooks(module)}
    for name, param in module.named_parameters(recurse=False):
        if name.endswith("_orig") and name[: -len("_orig")] in pruned:
            continue  # yielded below as its effective tensor
        yield name, (id(param),), param.detach()
    for name, hook in pruned.items():
        stored = getattr(module, name + "_orig")
        yield name, (id(stored),), hook.apply_mask(module).detach()
    if parametrize.is_parametrized(module):
        for name, plist in module.parametrizations.items():
            if plist.is_tensor:
                originals = [plist.original]
            else:
                originals = [getattr(plist, f"original{i}") for i in range(plist.ntensors)]
            yield name, tuple(id(t) for t in originals), getattr(module, name).detach()


def named_effective_parameters_by_module(
    model: nn.Module,
) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield ``(module_name, tensor_name, effective_tensor)`` once per unique parameter of ``model``.

    Modules inside a parametrization (``*.parametrizations.*``) are skipped: their tensors are reached through
    the effective tensor of the module they parametrize.

    >>> [(m, t, tuple(w.shape)) for m, t, w in named_effective_parameters_by_module(nn.Linear(3, 2))]
    [('', 'weight', (2, 3)), ('', 'bias', (2,))]
    """
    internal: set[int] = set()
    seen: set[tuple[int, ...]] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if id(module) in internal:
                continue
            if parametrize.is_parametrized(module):
                internal.update(id(m) for m in module.parametrizations.modules())
            for tensor_name, key, tensor in _own_effective(module):
                if key in seen:
                    continue
                seen.add(key)
                yield module_name, tensor_name, tensor


def named_effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(qualified_name, effective_tensor)`` once per unique parameter, named as in a plain model.

    A parametrized ``fc.weight`` is yielded as ``"fc.weight"`` (not ``fc.parametrizations.weight.original``).

    >>> [name for name, _ in named_effective_parameters(nn.Sequential(nn.Linear(3, 2)))]
    ['0.weight', '0.bias']
    """
    for module_name, tensor_name, tensor in named_effective_parameters_by_module(model):
        yield (f"{module_name}.{tensor_name}" if module_name else tensor_name), tensor


def _count(tensors: Iterator[torch.Tensor]) -> ParamCount:
    total = nonzero = 0
    for t in tensors:
        total += t.numel()
        nonzero += int(torch.count_nonzero(t))
    return ParamCount(total=total, nonzero=nonzero)


def count_params(model: nn.Module) -> ParamCount:
    """Count the unique parameters of ``model`` and how many are non-zero, seeing through masks.

    >>> count_params(nn.Linear(10, 5)).total
    55
    """
    return _count(t for _, t in named_effective_parameters(model))


def params_by_module(model: nn.Module) -> dict[str, ParamCount]:
    """:class:`ParamCount` of the parameters each module owns itself (not its children), keyed by module name.

    Only modules owning at least one parameter appear; the counts add up to :func:`count_params`.

    >>> params_by_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    {'0': ParamCount(total=8, nonzero=8)}
    """
    grouped: dict[str, list[torch.Tensor]] = {}
    for module_name, _, tensor in named_effective_parameters_by_module(model):
        grouped.setdefault(module_name, []).append(tensor)
    return {name: _count(iter(tensors)) for name, tensors in grouped.items()}
