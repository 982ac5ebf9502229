"""Do module attributes still describe their tensors? (``Linear.in_features == weight.shape[1]``, ...)

A cut that leaves ``out_channels`` or ``embed_dim`` stale computes the right outputs but lies to every tool
that reads the attribute (export, summaries, code that sizes a view by it). :func:`mismatches` compares every
size attribute of :func:`prunekit.graph.shape_attrs.shape_attrs` (plus ``normalized_shape`` of ``LayerNorm``
and ``RMSNorm``) with the module's tensors; :func:`prunekit.apply` runs it on the modules a plan touches,
so a stale attribute is an :class:`~prunekit.errors.ApplyError` and the model is rolled back.

>>> lin = torch.nn.Linear(3, 4)
>>> mismatches(lin)
[]
>>> lin.in_features = 5
>>> mismatches(lin)
['<model>.in_features says 5, weight has 3 (dim 1)']
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunekit.graph.shape_attrs import shape_attrs, tensor_of


def _module_mismatches(name: str, module: nn.Module) -> list[str]:
    found = []
    where = name or "<model>"
    for attr, (local, dim, factor) in shape_attrs(module).items():
        t = tensor_of(module, local)
        if t is None or isinstance(t, nn.parameter.UninitializedTensorMixin) or t.dim() <= dim:
            continue
        value = getattr(module, attr, None)
        if value != t.shape[dim] * factor:
            times = f" x {factor}" if factor > 1 else ""
            found.append(f"{where}.{attr} says {value}, {local} has {t.shape[dim]}{times} (dim {dim})")
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and isinstance(module.weight, torch.Tensor):
        if tuple(module.normalized_shape) != tuple(module.weight.shape):
            found.append(
                f"{where}.normalized_shape says {tuple(module.normalized_shape)}, "
                f"weight has {tuple(module.weight.shape)}"
            )
    return found


def mismatches(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Every size attribute of ``model``'s modules (or of the modules ``names``) that its tensors contradict.

    Returns lines ``"module.attr says X, tensor has Y (dim d)"``; empty when all agree.
    """
    modules = dict(model.named_modules())
    chosen = modules if names is None else {n: modules[n] for n in names if n in modules}
    return [line for name, module in chosen.items() for line in _module_mismatches(name, module)]
