"""Which module attributes a plan may change, to what, and that they agree with the tensors after the cut.

A plan's ``attrs`` come from the tracer (every one is an integer width or count that shrinks with the cut),
but a plan read from a file may say anything. :func:`check_attrs` refuses, before anything is touched:

- an attribute path with a private or dunder part (``_parameters``, ``__class__``);
- a change that is not ``int -> int`` with ``1 <= new <= old`` (``padding_mode: zeros -> circular``);
- on the torch layers below, an attribute not in their list, or a new value that disagrees with the shapes
  the layer's own tensors will have after the cut (``out_channels`` of a conv is its weight's dim 0).

>>> import torch
>>> from prunekit.plan import Plan
>>> conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
>>> check_attrs(Plan(attrs={"0": {"padding_mode": ["zeros", "circular"]}}), conv)
Traceback (most recent call last):
...
prunekit.errors.PlanError: plan may not change 0.padding_mode (Conv2d): only in_channels, out_channels, groups
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from prunekit.errors import PlanError
from prunekit.plan import Plan

Shapes = dict[str, list[int]]


def _conv(m: nn.Module, s: Shapes) -> list[tuple[str, int, int]]:
    w = s["weight"]
    if m.transposed:
        return [("in_channels", m.in_channels, w[0]), ("out_channels", m.out_channels, w[1] * m.groups)]
    return [("out_channels", m.out_channels, w[0]), ("in_channels", m.in_channels, w[1] * m.groups)]


def _linear(m: nn.Module, s: Shapes) -> list[tuple[str, int, int]]:
    return [("out_features", m.out_features, s["weight"][0]), ("in_features", m.in_features, s["weight"][1])]


def _norm(m: nn.Module, s: Shapes) -> list[tuple[str, int, int]]:
    width = next((s[n][0] for n in ("weight", "running_mean") if n in s), None)
    return [] if width is None else [("num_features", m.num_features, width)]


def _group_norm(m: nn.Module, s: Shapes) -> list[tuple[str, int, int]]:
    checks = [("num_channels % num_groups", m.num_channels % m.num_groups, 0)]
    return checks + ([("num_channels", m.num_channels, s["weight"][0])] if "weight" in s else [])


def _embedding(m: nn.Module, s: Shapes) -> list[tuple[str, int, int]]:
    return [("embedding_dim", m.embedding_dim, s["weight"][1])]


def _rnn(m: nn.Module, s: Shapes) -> list[tuple[str, int, int]]:
    checks = [("input_size", m.input_size, s["weight_ih_l0"][1])]
    if not m.proj_size:
        checks.append(("hidden_size", m.hidden_size, s["weight_hh_l0"][1]))
    return checks


def _none(m: nn.Module, s: Shapes) -> list[tuple[str, int, int]]:
    return []


# module class -> (attributes a plan may change, the (attr, value, value the tensors imply) checks)
TORCH_ATTRS: dict[type, tuple[tuple[str, ...], Callable[[Any, Shapes], list[tuple[str, int, int]]]]] = {
    nn.modules.conv._ConvNd: (("in_channels", "out_channels", "groups"), _conv),
    nn.Linear: (("in_features", "out_features"), _linear),
    nn.modules.batchnorm._NormBase: (("num_features",), _norm),
    nn.GroupNorm: (("num_channels", "num_groups"), _group_norm),
    nn.Embedding: (("embedding_dim",), _embedding),
    nn.RNNBase: (("input_size", "hidden_size"), _rnn),
    nn.MultiheadAttention: (("num_heads",), _none),
}


def _rule(module: nn.Module):
    return next((rule for cls, rule in TORCH_ATTRS.items() if isinstance(module, cls)), None)


def _is_int(value: Any) -> bool:
    return type(value) is int


def _check_change(mname: str, module: nn.Module, attr: str, change: list[Any]) -> None:
    where = f"{mname}.{attr}" if mname else attr
    if any(not part.isidentifier() or part.startswith("_") for part in attr.split(".")):
        raise PlanError(f"plan may not change {where}: not a public attribute name")
    rule = _rule(module)
    if rule is not None and attr not in rule[0]:
        raise PlanError(f"plan may not change {where} ({type(module).__name__}): only {', '.join(rule[0])}")
    if len(change) != 2 or not all(_is_int(v) for v in change) or not 1 <= change[1] <= change[0]:
        raise PlanError(
            f"plan changes {where} from {change[0]!r} to {change[-1]!r}; a plan may only shrink an integer "
            "width or count (1 <= new <= old)"
        )


def _shapes_after(module: nn.Module, mname: str, plan: Plan) -> Shapes:
    """The shapes of ``module``'s own parameters and buffers once ``plan`` is cut."""
    shapes: Shapes = {}
    for local, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        full = f"{mname}.{local}" if mname else local
        shape = list(t.shape)
        for dim, idx in plan.removals.get(full, {}).items():
            if 0 <= dim < len(shape):
                shape[dim] -= len(idx)
        shapes[local] = shape
    return shapes


def check_attrs(plan: Plan, model: nn.Module, modules: dict[str, nn.Module] | None = None) -> None:
    """Raise PlanError unless every attribute change in ``plan`` is allowed and fits the cut tensors."""
    modules = dict(model.named_modules()) if modules is None else modules
    for mname, attrs in plan.attrs.items():
        module = modules.get(mname)
        if module is None:
            raise PlanError(f"plan updates module {mname!r}, which the model does not have")
        for attr, change in attrs.items():
            _check_change(mname, module, attr, list(change))
    for mname, attrs in plan.attrs.items():
        module = modules[mname]
        rule = _rule(module)
        if rule is None:
            continue
        view = _After(module, {a: v[1] for a, v in attrs.items()})
        for attr, value, implied in rule[1](view, _shapes_after(module, mname, plan)):
            if attr.split(" ")[0] in attrs and value != implied:
                raise PlanError(
                    f"plan sets {mname}.{attr} ({type(module).__name__}) to {value}, but its tensors after "
                    f"the cut imply {implied}"
                )


class _After:
    """``module`` as it reads once the plan's new attribute values are set (nothing is changed)."""

    def __init__(self, module: nn.Module, new: dict[str, Any]) -> None:
        self._module, self._new = module, new

    def __getattr__(self, name: str) -> Any:
        return self._new[name] if name in self._new else getattr(self._module, name)
