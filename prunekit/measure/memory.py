"""Peak extra memory of one forward: bytes of tensor storage created by the forward and alive at once.

Measured, not estimated: a ``TorchDispatchMode`` sees every ATen op of the forward; each output storage that
is new (not one of the op's inputs, i.e. not a view or an in-place result) is added to a running total when it
is created and subtracted when Python's garbage collection of the storage reports it freed (a weak reference
on the storage). The peak of that total is the answer.

What it covers: activations, temporaries (e.g. a masked weight ``w * mask`` materialised by a
parametrization) and the outputs, on any device. What it does not: the weights and inputs that existed before
the call, buffers a kernel allocates internally without returning them (e.g. oneDNN scratch space), allocator
caching and Python objects. So it is the tensor-level working set a forward needs, a lower bound of the
process's extra RSS, and it grows with the batch size as activations do.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from prunekit._inputs import ExampleInputs, call_model, eval_mode


class _LiveStorageBytes(TorchDispatchMode):
    """Running and peak bytes of the storages created under this mode and still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, weakref.ref] = {}  # data_ptr -> weak reference to the storage

    def _freed(self, data_ptr: int, nbytes: int) -> None:
        self._tracked.pop(data_ptr, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or ptr in inputs or ptr in self._tracked:
                continue
            self._tracked[ptr] = weakref.ref(storage, lambda _, p=ptr, n=nbytes: self._freed(p, n))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def peak_memory_bytes(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """Peak bytes of tensor storage the forward of ``model`` creates and holds at once (eval, ``no_grad``).

    The output is included; weights and inputs are not. See the module docstring for what is measured.

    >>> peak_memory_bytes(nn.Linear(10, 5), torch.zeros(3, 10))  # the 3x5 float32 output
    60
    """
    tracker = _LiveStorageBytes()
    with eval_mode(model), torch.no_grad():
        with tracker:
            output = call_model(model, example_inputs)
        del output
    return tracker.peak
