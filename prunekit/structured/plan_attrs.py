"""Which module attributes a plan may change, to what, and that they agree with the tensors after the cut.

A plan's ``attrs`` come from the tracer (every one is an integer width or count that shrinks with the cut),
but a plan read from a file may say anything. :func:`check_attrs` refuses, before anything is touched:

- an attribute path with a private or dunder part (``_parameters``, ``__class__``);
- a change that is not ``int -> int`` with ``1 <= new <= old`` (``padding_mode: zeros -> circular``), or,
  for the one-dim shapes of :data:`SHAPES` (a norm's ``normalized_shape``, cut in stream mode),
  ``[int] -> [int]`` likewise;
- on torch's layers, an attribute that is neither one of their size attributes
  (:func:`prunekit.graph.shape_attrs.shape_attrs`, the table the trace records from) nor one of the counts
  in :data:`COUNTS`, and a size attribute whose new value disagrees with the shape its tensor will have
  after the cut (``out_channels`` of a conv is its weight's dim 0). Tied tensors are found by identity.

>>> import torch
>>> from prunekit.plan import Plan
>>> conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
>>> check_attrs(Plan(attrs={"0": {"padding_mode": ["zeros", "circular"]}}), conv)
Traceback (most recent call last):
...
prunekit.errors.PlanError: plan may not change 0.padding_mode (Conv2d): only out_channels, in_channels, groups
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.errors import PlanError
from prunekit.graph.shape_attrs import shape_attrs
from prunekit.plan import Plan

#: torch layers whose attributes a plan may change: their size attributes plus these counts
COUNTS: dict[type, tuple[str, ...]] = {
    nn.modules.conv._ConvNd: ("groups",),
    nn.Linear: (),
    nn.Bilinear: (),
    nn.Embedding: (),
    nn.EmbeddingBag: (),
    nn.modules.batchnorm._NormBase: (),
    nn.GroupNorm: ("num_groups",),
    nn.PReLU: (),
    nn.RNNBase: (),
    nn.MultiheadAttention: ("num_heads",),
    nn.LayerNorm: ("normalized_shape",),
    nn.RMSNorm: ("normalized_shape",),
}
#: attributes that are one-dim shapes, ``(size,)``: a plan states them as ``[[old], [new]]``
SHAPES = ("normalized_shape",)


def _allowed(module: nn.Module) -> tuple[str, ...] | None:
    """The attributes a plan may change on ``module``; None for classes outside torch's layers."""
    counts = next((c for cls, c in COUNTS.items() if isinstance(module, cls)), None)
    return None if counts is None else (*shape_attrs(module), *counts)


def _check_change(mname: str, module: nn.Module, attr: str, change: list[Any]) -> None:
    where = f"{mname}.{attr}" if mname else attr
    if any(not part.isidentifier() or part.startswith("_") for part in attr.split(".")):
        raise PlanError(f"plan may not change {where}: not a public attribute name")
    allowed = _allowed(module)
    if allowed is not None and attr not in allowed:
        raise PlanError(f"plan may not change {where} ({type(module).__name__}): only {', '.join(allowed)}")
    values = (
        [v[0] if isinstance(v, list) and len(v) == 1 else None for v in change] if attr in SHAPES else change
    )
    if len(values) != 2 or not all(type(v) is int for v in values) or not 1 <= values[1] <= values[0]:
        form = "a one-dim shape ([old] -> [new])" if attr in SHAPES else "an integer width or count"
        raise PlanError(
            f"plan changes {where} from {change[0]!r} to {change[-1]!r}; a plan may only shrink {form} "
            "(1 <= new <= old)"
        )


def _size_after(t: torch.Tensor, dim: int, names: list[str], plan: Plan) -> int:
    """``t.shape[dim]`` once ``plan`` is cut (the plan names a tied tensor by one of its names)."""
    removed = next((plan.removals[n].get(dim, ()) for n in names if n in plan.removals), ())
    return t.shape[dim] - len(removed)


def _check_sizes(mname: str, module: nn.Module, new: dict[str, int], plan: Plan, names: dict) -> None:
    specs = shape_attrs(module, groups=new.get("groups"))
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):  # its one-dim shape follows its weight
        specs = {**specs, "normalized_shape": ("weight", 0, 1)}
    for attr, (local, dim, factor) in specs.items():
        t = module._parameters.get(local, module._buffers.get(local))
        if attr not in new or t is None or t.dim() <= dim:
            continue
        implied = _size_after(t, dim, names.get(id(t), []), plan) * factor
        if (new[attr][0] if attr in SHAPES else new[attr]) != implied:
            raise PlanError(
                f"plan sets {mname}.{attr} ({type(module).__name__}) to {new[attr]}, but its tensors after "
                f"the cut imply {implied}"
            )
    if isinstance(module, nn.GroupNorm):
        channels = new.get("num_channels", module.num_channels)
        groups = new.get("num_groups", module.num_groups)
        if channels % groups:
            raise PlanError(f"plan leaves {mname} with {channels} channels in {groups} groups (indivisible)")


def check_attrs(plan: Plan, model: nn.Module, modules: dict[str, nn.Module] | None = None) -> None:
    """Raise PlanError unless every attribute change in ``plan`` is allowed and fits the cut tensors."""
    modules = dict(model.named_modules()) if modules is None else modules
    for mname, attrs in plan.attrs.items():
        module = modules.get(mname)
        if module is None:
            raise PlanError(f"plan updates module {mname!r}, which the model does not have")
        for attr, change in attrs.items():
            _check_change(mname, module, attr, list(change))
    names: dict[int, list[str]] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        names.setdefault(id(t), []).append(name)
    for mname, attrs in plan.attrs.items():
        _check_sizes(mname, modules[mname], {a: v[1] for a, v in attrs.items()}, plan, names)


def complete_size_attrs(plan: Plan, model: nn.Module) -> Plan:
    """``plan`` with every size attribute its cut implies (:func:`~prunekit.graph.shape_attrs.shape_attrs`).

    Plans made by the tracer record them all; a plan written by an older prunekit (or by hand) may miss the
    size attributes of a second holder of a tied weight, of ``PReLU`` or of ``MultiheadAttention``. They are
    derived from the cut tensors' shapes, so such a plan still leaves every attribute true. Attributes the
    plan states are kept as they are (and checked by :func:`check_attrs`).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.PReLU(4))
    >>> plan = Plan(removals={"0.weight": {0: [1]}, "0.bias": {0: [1]}, "1.weight": {0: [1]}})
    >>> complete_size_attrs(plan, net).attrs
    {'0': {'out_features': [4, 3]}, '1': {'num_parameters': [4, 3]}}
    """
    names: dict[int, list[str]] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        names.setdefault(id(t), []).append(name)
    done = Plan.from_dict(plan.to_dict())
    for mname, module in model.named_modules(remove_duplicate=False):
        stated = done.attrs.get(mname, {})
        groups = stated.get("groups", [None, None])[1]
        for attr, (local, dim, factor) in shape_attrs(module, groups=groups).items():
            t = module._parameters.get(local, module._buffers.get(local))
            if attr in stated or t is None or t.dim() <= dim:
                continue
            tied = names.get(id(t), [])
            if not any(dim in plan.removals.get(n, {}) for n in tied):
                continue
            old, new = getattr(module, attr, None), _size_after(t, dim, tied, plan) * factor
            if type(old) is int and old == t.shape[dim] * factor and new != old:
                done.attrs.setdefault(mname, {})[attr] = [old, new]
    return done
