"""The spec a checkpoint records: absolute paths for path specs, inferred for models built elsewhere.

:func:`recorded_spec` is what :func:`prunekit.save` stores: the given spec with a relative local path made
absolute (so ``prunekit load`` works from any folder), or, without one, a spec a registered family infers
from the model itself (a torchvision builder, a timm name, a transformers config). When nothing can be
inferred it warns once that loading will need ``load(dir, model=...)``.

>>> import torch
>>> from prunekit.models.spec import load_model
>>> recorded_spec(load_model("torchvision:resnet18"), None, pruned=False)
'torchvision:resnet18'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from prunekit.errors import PruneError


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


def recorded_spec(model: nn.Module, spec: str | None, *, pruned: bool) -> str | None:
    """The spec to store for ``model``: ``spec`` with its local path absolute; without ``spec``, one
    inferred from ``model`` unless it is ``pruned`` (then its architecture is not the one the spec must
    build); None with a warning when there is none.
    """
    from prunekit.models.family import absolute_spec

    if spec is not None:
        return absolute_spec(spec)
    inferred = None if pruned else infer_spec(model)
    if inferred is None:
        warnings.warn(
            f"no spec rebuilds this {type(model).__name__}: the checkpoint loads only with "
            "load(dir, model=<the unpruned model>); pass spec= to save it self-contained",
            stacklevel=3,
        )
    return inferred
