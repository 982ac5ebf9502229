"""Example inputs (a tensor, a tuple/list of positional arguments, or a dict of keyword arguments) and
running a model on them: in eval mode, every module's training flag given back afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

ExampleInputs = torch.Tensor | tuple | list | Mapping[str, Any]


def call_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Run ``model`` on ``example_inputs`` the way a user would.

    A tensor is passed as the single positional argument, a tuple or list is unpacked as positional
    arguments, and a mapping is unpacked as keyword arguments.

    >>> call_model(nn.Linear(3, 2), torch.zeros(1, 3)).shape
    torch.Size([1, 2])
    """
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def batch_size_of(example_inputs: ExampleInputs) -> int:
    """Leading dimension of the first tensor found in ``example_inputs`` (1 if there is none)."""
    if isinstance(example_inputs, torch.Tensor):
        return int(example_inputs.shape[0]) if example_inputs.dim() else 1
    values = example_inputs.values() if isinstance(example_inputs, Mapping) else example_inputs
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 1


def at_batch(example_inputs: ExampleInputs, size: int) -> ExampleInputs:
    """``example_inputs`` with every batched tensor's dim 0 resized to ``size`` (its rows repeated in turn, or
    cut): a tensor, or the tensors of a tuple / list / mapping whose first dimension is
    :func:`batch_size_of`'s; anything else is kept as it is.

    >>> at_batch({"x": torch.arange(2.0)[:, None], "scale": 2.0}, 3)["x"].flatten().tolist()
    [0.0, 1.0, 0.0]
    """
    batch = batch_size_of(example_inputs)

    def resize(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
            return value[torch.arange(size, device=value.device) % batch]
        return value

    if isinstance(example_inputs, Mapping):
        return {key: resize(value) for key, value in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(resize(value) for value in example_inputs)
    return resize(example_inputs)


def input_shapes(example_inputs: ExampleInputs) -> Any:
    """The shape after the batch dimension of each tensor in ``example_inputs``: a list for a tensor, a dict
    (mapping) or list (tuple / list) of them otherwise, None for a non-tensor value.

    >>> input_shapes({"ids": torch.zeros(2, 7), "mask": torch.ones(2, 7)})
    {'ids': [7], 'mask': [7]}
    """

    def one(value: Any) -> list[int] | None:
        return list(value.shape[1:]) if isinstance(value, torch.Tensor) else None

    if isinstance(example_inputs, Mapping):
        return {k: one(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return [one(v) for v in example_inputs]
    return one(example_inputs)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: ``model.eval()`` inside, each module's previous ``training`` flag restored on exit.

    Flags are restored per module, so a model that was training with some frozen (eval) sub-modules comes
    back exactly as it was (only the flags that changed are written back).

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training
    True
    """
    flags = [(module, module.training) for module in model.modules()]
    if any(flag for _, flag in flags):
        model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            if module.training != flag:
                module.training = flag


@contextlib.contextmanager
def eval_scope(model: nn.Module, stack: list[str] | None = None) -> Iterator[None]:
    """:func:`eval_mode` without grad for the block.

    With ``stack``, the block also keeps ``stack[-1]`` = the qualified name of the module of ``model`` whose
    forward is running (``""`` for the model itself), through process-wide module hooks that ignore every
    other module: one hook pair instead of two hooks registered and removed on each module.

    >>> net, names = nn.Sequential(nn.Linear(2, 2)), []
    >>> seen = []
    >>> with eval_scope(net, names):
    ...     _ = net[0].register_forward_pre_hook(lambda *a: seen.append(names[-1]))
    ...     _ = net(torch.zeros(1, 2))
    >>> seen, net.training
    (['0'], True)
    """
    handles = []
    if stack is not None:
        name_of = {id(m): n for n, m in model.named_modules()}
        depth = len(stack)

        def enter(module: nn.Module, args: Any) -> None:
            name = name_of.get(id(module))
            if name is not None:
                stack.append(name)

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if id(module) in name_of and len(stack) > depth:
                stack.pop()

        handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(enter),
            torch.nn.modules.module.register_module_forward_hook(leave),
        ]
    try:
        with eval_mode(model), torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor moved to ``device``, through nested dicts, tuples and lists (kept as such).

    >>> to_device({"x": (torch.zeros(1), [torch.ones(2)]), "n": 3}, "cpu")
    {'x': (tensor([0.]), [tensor([1., 1.])]), 'n': 3}
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors in a nested output: tensors, tuples, lists, dicts, dataclasses, HF ModelOutput.

    >>> [t.shape for t in flatten_tensors({"a": torch.zeros(2), "b": (torch.ones(1, 3), "text")})]
    [torch.Size([2]), torch.Size([1, 3])]
    """
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in flatten_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in flatten_tensors(v)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in flatten_tensors(getattr(obj, f.name))]
    return []
