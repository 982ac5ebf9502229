"""Decision replay: how the exactness oracle compares models whose forward makes discrete choices.

A pruned model and its masked reference compute the same function up to float rounding. Where a forward
makes a *decision* from float values — a call with a float tensor input and an integer or boolean tensor
output: ``topk``, ``sort``, ``argmax``, ``max(dim)``, ``x > t``, ``.long()``, ``torchvision::nms`` — a
rounding-level difference can flip a near-tie (RT-DETR ranks padded anchors whose scores are exactly
equal), and everything after it then differs by O(1) although both networks are right.

So the oracle records every decision of the reference's forward (:class:`Decisions`), and in the pruned
model's forward the i-th decision is *replayed* — the reference's integer/boolean outputs are used — only when
it is the same function and every tensor input equals the reference's input: floats within ``rtol * max(1,
max|reference input|)`` (an absolute floor, unlike the oracle's per-output scale), integers and booleans
exactly. The pruned network then faced the same question, and the reference's answer is as right for it as its
own. Values that come paired with indices (``topk``/``sort``/``max(dim)``/...) are re-gathered from the pruned
run's own input at the replayed indices, so they stay the pruned network's numbers. A decision whose inputs
differ beyond the tolerance is never replayed: that difference is real, and the comparison shows it. Nor is a
decision with other float outputs (no rule to recompute them), and once the two runs' sequences of decisions
stop matching, nothing more is. The check report names every replay that changed an answer.

>>> import torch
>>> d = Decisions()
>>> with d.recording():
...     _ = torch.tensor([1.0, 1.0, 0.0]).argmax()
>>> with d.replaying():
...     torch.tensor([1.0, 1.0 + 1e-7, 0.0]).argmax().item()  # its own answer would be 1
0
>>> d.replayed
['Tensor.argmax (call 1)']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from prunekit.graph.rules import arg, resolve_function
from prunekit.graph.trace import op_name

#: calls that build a tensor from sizes or a template's dtype/shape, never from its values
_FACTORIES = {
    f
    for name in ("zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
                 "new_full", "new_tensor")
    for f in resolve_function(name)
}  # fmt: skip


def _paired(names: tuple[str, ...], dim_pos: int, default: int | None, keepdim_pos: int | None) -> dict:
    return {f: (dim_pos, default, keepdim_pos) for name in names for f in resolve_function(name)}


#: (values, indices) results: position of the dim argument, its default, position of ``keepdim`` (None: the
#: result always keeps the dim)
_PAIRED: dict[Any, tuple[int, int | None, int | None]] = {
    **_paired(("topk",), 2, -1, None),
    **_paired(("sort",), 1, -1, None),
    **_paired(("cummax", "cummin"), 1, None, None),
    **_paired(("kthvalue",), 2, -1, 3),
    **_paired(("max", "min", "median", "nanmedian"), 1, None, 2),
    **_paired(("mode",), 1, -1, 2),
}


def _regather(func: Any, args: tuple, kwargs: dict, out: Any, indices: torch.Tensor) -> Any:
    """``out`` of a paired call with ``indices`` replayed and its values gathered from this call's input."""
    dim_pos, default, keepdim_pos = _PAIRED[func]
    dim = arg(args, kwargs, dim_pos, "dim", default)
    keep = keepdim_pos is None or bool(arg(args, kwargs, keepdim_pos, "keepdim", False))
    idx = indices if keep else indices.unsqueeze(dim)
    values = args[0].gather(dim, idx)
    return type(out)((values if keep else values.squeeze(dim), indices))


def _is_decision(func: Any, args: tuple, kwargs: dict, out: Any) -> bool:
    if func in _FACTORIES:
        return False
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not any(not (t.is_floating_point() or t.is_complex()) for t in outs):
        return False
    return any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tree_leaves((args, kwargs)))


def _same_question(ours: list[torch.Tensor], theirs: list[torch.Tensor], rtol: float) -> bool:
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs, strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            if a.numel() and float((a.double() - b.double()).abs().max()) > rtol * max(
                1.0, float(b.double().abs().max())
            ):
                return False
        elif not torch.equal(a, b):
            return False
    return True


@dataclass
class _Call:
    func: Any
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor | None]  # the non-float output tensors (None for float ones), in leaf order


@dataclass
class Decisions:
    """The reference run's decisions, and what replaying them in the pruned run did."""

    rtol: float = 1e-4
    calls: list[_Call] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)  # replays that changed the pruned run's answer
    stack: list[str] = field(default_factory=lambda: [""])  # module names, kept by the caller's scope

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record every decision made inside the block (the masked reference's forward)."""
        self.calls.clear()
        with _Mode(self, record=True):
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Replay the recorded decisions inside the block (the pruned model's forward)."""
        self.replayed.clear()
        with _Mode(self, record=False):
            yield


class _Mode(TorchFunctionMode):
    def __init__(self, decisions: Decisions, record: bool) -> None:
        super().__init__()
        self.d, self.record, self.n, self.aligned = decisions, record, 0, True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not _is_decision(func, args, kwargs, out):
            return out
        inputs = [t.detach() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        leaves, spec = tree_flatten(out)
        if self.record:
            self.d.calls.append(
                _Call(
                    func,
                    [t.clone() for t in inputs],
                    [_discrete(t) for t in leaves],
                )
            )
            return out
        self.n += 1
        i = self.n - 1
        if not self.aligned or i >= len(self.d.calls) or self.d.calls[i].func is not func:
            self.aligned = False  # the two runs no longer make the same calls: replay nothing more
            return out
        call = self.d.calls[i]
        floats = [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if (floats and func not in _PAIRED) or len(call.outputs) != len(leaves):
            return out
        if not _same_question(inputs, call.inputs, self.d.rtol):
            return out
        changed = any(
            rec is not None and not (isinstance(t, torch.Tensor) and torch.equal(t, rec))
            for t, rec in zip(leaves, call.outputs, strict=True)
        )
        if not changed:
            return out
        where = self.d.stack[-1]
        self.d.replayed.append(f"{op_name(func)} (call {self.n}{', in ' + where if where else ''})")
        if func in _PAIRED:
            return _regather(func, args, kwargs, out, call.outputs[1].clone())
        new = [rec.clone() if rec is not None else t for t, rec in zip(leaves, call.outputs, strict=True)]
        return tree_unflatten(new, spec)


def _discrete(t: Any) -> torch.Tensor | None:
    """A copy of ``t`` if it is an integer or boolean tensor (an answer to replay), else None."""
    if isinstance(t, torch.Tensor) and not (t.is_floating_point() or t.is_complex()):
        return t.detach().clone()
    return None
