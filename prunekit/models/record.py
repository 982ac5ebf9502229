"""The spec a checkpoint records: absolute paths for path specs, inferred for models built elsewhere.

:func:`recorded_spec` is what :func:`prunekit.save` stores: the given spec with a relative local path made
absolute (so ``prunekit load`` works from any folder), or, without one, a spec a registered family infers
from the model itself (a torchvision builder, a timm name, a transformers config); for a model pruned by
plans, from a meta-device stand-in with its shapes before the plans, the inferred spec checked to build
that stand-in. When nothing can be inferred it warns once that loading will need ``load(dir, model=...)``.

>>> import torch
>>> from prunekit.models.spec import load_model
>>> recorded_spec(load_model("torchvision:resnet18"), None, pruned=False)
'torchvision:resnet18'
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunekit.errors import PruneError

if TYPE_CHECKING:
    from prunekit.plan import Plan


def same_architecture(model: nn.Module, build: Callable[[], nn.Module]) -> bool:
    """True if ``build()`` (run on the meta device: no memory, no init cost) gives a module of ``model``'s
    class with the same state-dict names and shapes; a build that fails counts as False.

    >>> same_architecture(nn.Linear(3, 2), lambda: nn.Linear(3, 2)), same_architecture(nn.Linear(3, 2), dict)
    (True, False)
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # builders may seed the global RNG
            built = build()
    except Exception:  # a candidate that cannot be built is not the model's architecture
        return False
    if type(built) is not type(model):
        return False
    ours, theirs = model.state_dict(), built.state_dict()
    return list(ours) == list(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)


def infer_spec(model: nn.Module) -> str | None:
    """The first spec a registered family infers for ``model`` (see :class:`~prunekit.models.family.Family`),
    or None.

    >>> infer_spec(nn.Linear(3, 2)) is None
    True
    """
    from prunekit.models.family import families

    for family in families().values():
        if family.infer_spec is None:
            continue
        try:
            family.available()
            spec = family.infer_spec(model)
        except PruneError:  # the family's package is missing: it cannot have built this model
            continue
        if spec is not None:
            return spec
    return None


def _builds(spec: str, model: nn.Module) -> bool:
    """Whether ``spec`` builds ``model``'s architecture (checked on the meta device)."""
    from prunekit.models.spec import load_model

    return same_architecture(model, lambda: load_model(spec))


def unpruned_stand_in(model: nn.Module, plans: Sequence[Plan]) -> nn.Module | None:
    """A meta-device copy of ``model`` with the tensor shapes and module attributes it had before
    ``plans`` (applied in that order) cut it, for :func:`infer_spec`; None when the plans do not describe
    ``model`` (a name they record is not in it) or it cannot be copied.

    >>> from prunekit.plan import Plan
    >>> plan = Plan(removals={"weight": {0: [0]}}, attrs={"": {"out_features": [3, 2]}},
    ...             signature={"weight": [3, 2], "bias": [3]})
    >>> cut = nn.Linear(2, 2)
    >>> before = unpruned_stand_in(cut, [plan])
    >>> before.weight.shape, before.out_features, cut.weight.shape
    (torch.Size([3, 2]), 3, torch.Size([2, 2]))
    """
    tensors = [*model.parameters(), *model.buffers()]
    memo: dict[int, object] = {
        id(t): nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad)
        if isinstance(t, nn.Parameter)
        else torch.empty_like(t, device="meta")
        for t in tensors
    }
    try:
        stand_in = copy.deepcopy(model, memo)
    except Exception:  # a module deepcopy cannot copy: nothing to infer from
        return None
    modules = dict(stand_in.named_modules())
    for plan in reversed(list(plans)):
        for name, shape in plan.signature.items():
            owner, _, leaf = name.rpartition(".")
            module = modules.get(owner)
            if module is None:
                return None
            if leaf in module._parameters:
                module._parameters[leaf] = nn.Parameter(torch.empty(shape, device="meta"))
            elif leaf in module._buffers:
                old = module._buffers[leaf]
                module._buffers[leaf] = torch.empty(shape, device="meta", dtype=old.dtype)
            else:
                return None
        for name, attrs in plan.attrs.items():
            if name not in modules:
                return None
            for attr, (old_value, _new) in attrs.items():
                owner_path, _, leaf = attr.rpartition(".")
                obj: object = modules[name]
                for part in owner_path.split(".") if owner_path else ():
                    obj = getattr(obj, part)
                if isinstance(old_value, list) and isinstance(getattr(obj, leaf, None), tuple):
                    old_value = tuple(old_value)  # a shape read back from JSON
                setattr(obj, leaf, old_value)
    return stand_in


def recorded_spec(
    model: nn.Module, spec: str | None, *, pruned: bool, plans: Sequence[Plan] = ()
) -> str | None:
    """The spec to store for ``model``: ``spec`` with its local path absolute; without ``spec``, one
    inferred from ``model`` as it was before ``plans`` (:func:`unpruned_stand_in`) unless it is ``pruned``
    in a way no plan records (then its architecture is not the one the spec must build); None with a
    warning when there is none.
    """
    from prunekit.models.family import absolute_spec

    if spec is not None:
        return absolute_spec(spec)
    inferred = None
    if not pruned and not plans:
        inferred = infer_spec(model)
    elif not pruned:
        before = unpruned_stand_in(model, plans)
        inferred = None if before is None else infer_spec(before)
        if inferred is not None and not _builds(inferred, before):
            inferred = None
    if inferred is None:
        warnings.warn(
            f"no spec rebuilds this {type(model).__name__}: the checkpoint loads only with "
            "load(dir, model=<the unpruned model>); pass spec= to save it self-contained",
            stacklevel=3,
        )
    return inferred
