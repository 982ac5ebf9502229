"""Label propagation rules, one per op family, keyed by the actual function objects.

This module holds the registry and the dispatch; the rules live in :mod:`prunekit.graph.rules_shape`
(element-wise, shape, spatial, reductions) and :mod:`prunekit.graph.rules_nn` (norms, contractions).

A rule gets the tracer, the function, its arguments and its (already computed) output, sets the labels of
the outputs and records edges/pins. An op without a rule pins every slot that flows into it.

>>> torch.nn.functional.conv2d in RULES and torch.Tensor.view in RULES
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves

from prunekit.graph.labels import align, blank
from prunekit.graph.trace import Tracer, op_name

Rule = Callable[[Tracer, Any, tuple, dict, Any], None]
RULES: dict[Any, Rule] = {}
NO_OUTPUT_RULES: dict[Any, Rule] = {}


def resolve_function(name: str) -> list[Any]:
    """The function objects named ``name`` in torch.nn.functional, torch and torch.Tensor (where present)."""
    found = []
    for src in (F, torch, torch.Tensor):
        f = getattr(src, name, None)
        if f is not None and f not in found:
            found.append(f)
    return found


_resolve = resolve_function  # the former private name, kept for one release


def rule(*names: str, objs: tuple = ()) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for name in names:
            for f in resolve_function(name):
                RULES[f] = fn
        for f in objs:
            RULES[f] = fn
        return fn

    return deco


def arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def outs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def lab(tr: Tracer, t: torch.Tensor) -> torch.Tensor:
    return align(tr.label(t), t.dim())


def set_all(tr: Tracer, out: Any, label: torch.Tensor) -> None:
    for t in outs(out):
        tr.set_label(t, align(label, t.dim()) if label.dim() <= t.dim() else blank(t.dim()))


def blank_all(tr: Tracer, out: Any) -> None:
    for t in outs(out):
        tr.set_label(t, blank(t.dim()))


def pin_inputs(tr: Tracer, args: tuple, kwargs: dict, why: str) -> None:
    """Pin every slot flowing into an op: input labels and every dim of parameters it reads."""
    for t in tree_leaves((args, kwargs)):
        if isinstance(t, torch.Tensor):
            tr.pin(tr.label(t), why)
            if tr.is_state(t):
                for d in range(t.dim()):
                    tr.pin(tr.slots(t, d), why)


def pin_all(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    pin_inputs(tr, args, kwargs, "no propagation rule for this op")
    blank_all(tr, out)


def on_call(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Entry point called by the trace mode after every torch function call."""
    special = NO_OUTPUT_RULES.get(func)
    if special is not None:
        tr.op = op_name(func)
        special(tr, func, args, kwargs, out)
        return
    results = outs(out)
    if not results:
        return
    tr.n_calls += 1
    tr.op = op_name(func)
    if tr.data_sized is None and _data_dependent(func, args, kwargs):
        tr.data_sized = tr.where()
    fn = RULES.get(func, pin_all)
    try:
        fn(tr, func, args, kwargs, out)
    except Exception as exc:  # a rule bug must never produce a silent wrong answer: pin and record it
        tr.rule_errors.append(f"{tr.where()}: {type(exc).__name__}: {exc}")
        pin_inputs(tr, args, kwargs, f"propagation rule failed ({type(exc).__name__})")
        blank_all(tr, out)
        return
    first = args[0] if args else None
    name = getattr(func, "__name__", "")
    inplace = (
        (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or kwargs.get("inplace")
    )
    if inplace and isinstance(first, torch.Tensor) and results[0] is first and first._is_view():
        pin_inputs(tr, args, kwargs, "in-place op on a view")


DATA_DEPENDENT: set[Any] = set()
for _name in ("nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"):
    DATA_DEPENDENT.update(resolve_function(_name))
#: custom ops (``torch.ops.NS.NAME``, by qualified name) whose output size follows values: box NMS
DATA_DEPENDENT_OPS = {"torchvision::nms"}
_WHERE = set(resolve_function("where"))
_GETITEM = set(resolve_function("__getitem__"))


def where_indices(func: Any, args: tuple, kwargs: dict) -> bool:
    """``torch.where(cond)``: one argument, the call returns the indices of ``cond``'s nonzeros."""
    return func in _WHERE and len(args) + len(kwargs) == 1


def _data_dependent(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether the size of this call's output follows the input *values*: nonzero-like ops,
    ``torch.where(cond)``, indexing with a boolean mask, NMS."""
    if func in DATA_DEPENDENT or getattr(func, "_qualified_op_name", None) in DATA_DEPENDENT_OPS:
        return True
    if where_indices(func, args, kwargs):
        return True
    if func in _GETITEM and len(args) > 1:
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_leaves(args[1]))
    return False
