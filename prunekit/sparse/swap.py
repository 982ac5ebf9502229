"""Put sparse kernel modules in and take them out again: the undo of :func:`~prunekit.sparse.accelerate`.

- :func:`kernel_choices`: which layers run which sparse kernel (what :func:`prunekit.save` records);
- :func:`swap_kernels`: run named ``nn.Linear`` / ``nn.Conv2d`` layers on given kernels, no timing (what
  :func:`prunekit.load` does with the recorded choices);
- :func:`decelerate`: every sparse kernel module back to a plain ``nn.Linear`` / ``nn.Conv2d`` with the
  same (effective) weights;
- :func:`dense_form`: the model itself if it has no sparse kernels, else a dense deep copy (for ONNX).

A masked layer comes back from a round trip with its mask baked into a plain weight.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(8, 4))
>>> swap_kernels(model, {"0": "csr-mm"}); kernel_choices(model)
{'0': 'csr-mm'}
>>> decelerate(model), type(model[0]).__name__
(['0'], 'Linear')
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import nn

from prunekit.errors import ConfigError
from prunekit.sparse.kernels import CONV_KERNELS, LINEAR_KERNELS, SparseConv2d, SparseLinear

SPARSE_MODULES = (SparseLinear, SparseConv2d)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` of ``model`` by ``module``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def kernel_choices(model: nn.Module) -> dict[str, str]:
    """``{layer name: kernel}`` of every sparse kernel module in ``model``, in module order."""
    return {name: m.kernel for name, m in model.named_modules() if isinstance(m, SPARSE_MODULES)}


def swap_kernels(model: nn.Module, choices: Mapping[str, str]) -> None:
    """Run each named layer on its kernel (``"csr-mm"``, ``"bsr-linear"``, ``"csr-im2col"``...), in place.

    Layers must be plain ``nn.Linear`` (Linear kernels) or ``nn.Conv2d`` (``csr-im2col``); everything is
    checked before the model is touched.
    """
    modules = dict(model.named_modules())
    built = {}
    for name, kernel in choices.items():
        module = modules.get(name)
        if name == "" or module is None:
            raise ConfigError(f"cannot run {name!r} on a sparse kernel: no such submodule")
        if kernel in LINEAR_KERNELS and type(module) is nn.Linear:
            built[name] = SparseLinear(module.weight, module.bias, kernel)
        elif kernel in CONV_KERNELS and type(module) is nn.Conv2d:
            built[name] = SparseConv2d(module)
        else:
            raise ConfigError(f"layer {name!r} is a {type(module).__name__}: it cannot run kernel {kernel!r}")
        built[name].train(module.training)
    for name, module in built.items():
        set_module(model, name, module)


def decelerate(model: nn.Module) -> list[str]:
    """Turn every sparse kernel module of ``model`` back into a plain dense layer; return their names.

    In place, outputs unchanged (the same weights, zeros written out).
    """
    names = list(kernel_choices(model))
    modules = dict(model.named_modules())
    for name in names:
        if name == "":
            raise ConfigError("the model itself is a sparse kernel module: call model.to_dense()")
        set_module(model, name, modules[name].to_dense())
    return names


def dense_form(model: nn.Module) -> nn.Module:
    """``model`` if it runs no sparse kernel, else a deep copy of it with every kernel decelerated."""
    if not kernel_choices(model):
        return model
    dense = copy.deepcopy(model)
    decelerate(dense)
    return dense
