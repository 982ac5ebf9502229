"""Masks on weights, via ``torch.nn.utils.parametrize``.

A masked layer keeps its dense weight in ``layer.parametrizations.weight.original`` (the same Parameter
object as before, so an existing optimizer keeps working) and a :class:`Mask` with a ``mask`` buffer of the
weight's dtype. ``layer.weight`` is then ``original * mask``: masked weights read as zero and get zero
gradient. :func:`remove_masks` bakes the product into a plain weight again; outputs stay bit-identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError


class Mask(nn.Module):
    """Parametrization ``w -> w * mask``; ``mask`` is a buffer (saved in the state dict, moved by ``.to``).

    >>> layer = nn.Linear(2, 1)
    >>> _ = parametrize.register_parametrization(layer, "weight", Mask(torch.tensor([[1.0, 0.0]])))
    >>> (layer.weight == 0).tolist()
    [[False, True]]
    """

    def __init__(self, mask: Tensor, param_order: tuple[str, ...] = ("weight",)) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.param_order = param_order  # the layer's parameter names before masking, restored on removal

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def is_masked(module: nn.Module) -> bool:
    """True if ``module.weight`` carries a prunekit :class:`Mask`.

    >>> is_masked(nn.Linear(2, 2))
    False
    """
    if not parametrize.is_parametrized(module, "weight"):
        return False
    return any(isinstance(p, Mask) for p in module.parametrizations.weight)


def get_mask(module: nn.Module) -> Tensor | None:
    """The mask buffer of a masked module (1 = kept, 0 = pruned), or ``None`` if it has none.

    >>> get_mask(nn.Linear(2, 2)) is None
    True
    """
    found = get_mask_module(module)
    return None if found is None else found.mask


def get_mask_module(module: nn.Module) -> Mask | None:
    """The :class:`Mask` parametrization on ``module.weight``, or ``None``.

    >>> get_mask_module(nn.Conv2d(1, 1, 1)) is None
    True
    """
    if not is_masked(module):
        return None
    return next(p for p in module.parametrizations.weight if isinstance(p, Mask))


def check_maskable(module: nn.Module, name: str) -> None:
    """Raise :class:`ConfigError` unless prunekit can put (or already has) a mask on ``module.weight``.

    >>> check_maskable(nn.Linear(2, 2), "fc")
    """
    shown = name or "(root)"
    if any(isinstance(hook, nn.utils.prune.BasePruningMethod) for hook in module._forward_pre_hooks.values()):
        raise ConfigError(
            f"layer {shown!r} is pruned with torch.nn.utils.prune: call prune.remove(layer, 'weight') first"
        )
    if parametrize.is_parametrized(module, "weight"):
        others = [type(p).__name__ for p in module.parametrizations.weight if not isinstance(p, Mask)]
        if others:
            raise ConfigError(
                f"layer {shown!r} already has a parametrization on weight ({', '.join(others)}); "
                "prunekit masks need a plain weight: exclude the layer"
            )
        return
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise ConfigError(f"layer {shown!r} is lazy and not initialised yet: run one forward pass first")
    if not isinstance(weight, nn.Parameter):
        raise ConfigError(f"layer {shown!r} has no weight Parameter to mask")
    if not weight.is_floating_point():
        raise ConfigError(f"layer {shown!r} has a {weight.dtype} weight; masks need a floating-point weight")


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Mask the ``weight`` of each named module (1/True = keep); a layer already masked is combined (AND).

    Everything is checked before any layer is touched. A masked layer never gets a second parametrization:
    its mask buffer becomes ``old * new`` so zeros stay zeros.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = apply_masks(model, {"0": torch.tensor([[1, 0], [0, 1]])})
    >>> int((model[0].weight == 0).sum())
    2
    """
    modules = dict(model.named_modules())
    plan = []
    for name, mask in masks.items():
        if name not in modules:
            raise ConfigError(f"no module named {name!r} in the model")
        module = modules[name]
        check_maskable(module, name)
        shape = module.weight.shape
        if tuple(mask.shape) != tuple(shape):
            raise ConfigError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight {tuple(shape)}")
        plan.append((module, mask))

    done: list[tuple[nn.Module, Tensor | None]] = []  # (module, old mask) to undo on failure
    try:
        with torch.no_grad():
            for module, mask in plan:
                old = get_mask(module)
                if old is None:
                    weight = module.weight
                    new = mask.to(weight.device).ne(0).to(weight.dtype)
                    order = tuple(module._parameters)
                    done.append((module, None))
                    parametrize.register_parametrization(module, "weight", Mask(new, order))
                else:
                    done.append((module, old.clone()))
                    old.mul_(mask.to(old.device).ne(0).to(old.dtype))
    except BaseException:  # interrupts too: every layer gets its old state back
        for module, old in reversed(done):
            if old is None:
                if get_mask(module) is None:  # interrupted before the parametrization was registered
                    continue
                order = get_mask_module(module).param_order
                own_parametrized_class(module)
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                _reorder(module._parameters, order)
            else:
                get_mask(module).copy_(old)
        raise
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make masks permanent: every masked ``weight`` becomes a plain Parameter holding ``original * mask``.

    Outputs are bit-identical before and after. The Parameter object is the one the layer had before it was
    masked. A model with no masks is returned unchanged, with a warning.

    >>> import prunekit.sparse as ps
    >>> model = nn.Sequential(nn.Linear(8, 8))
    >>> _ = ps.sparsify(model, 0.5)
    >>> _ = remove_masks(model)
    >>> is_masked(model[0]), int((model[0].weight == 0).sum())
    (False, 32)
    """
    masked = [(name, module) for name, module in model.named_modules() if is_masked(module)]
    if not masked:
        warnings.warn("remove_masks: the model has no prunekit masks; nothing changed", stacklevel=2)
        return model
    for name, module in masked:
        check_maskable(module, name)  # refuses a layer that mixes Mask with other parametrizations
    for _, module in masked:
        order = get_mask_module(module).param_order
        own_parametrized_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        _reorder(module._parameters, order)
    return model


def own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrized module its own ``Parametrized*`` class before parametrizations are removed.

    ``copy.deepcopy`` keeps the class that ``parametrize`` generated for the original, and
    ``remove_parametrizations`` deletes the weight property *from that class*: removing masks on a copy would
    break the original (``'ParametrizedLinear' object has no attribute 'weight'``, torch 2.14). A fresh
    class with the same body makes the removal touch this module only.
    """
    cls = type(module)
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def _reorder(params: dict, order: tuple[str, ...]) -> None:
    """Put ``params`` back in ``order`` (in place): ``model.parameters()`` keeps its pre-mask order."""
    rank = {name: i for i, name in enumerate(order)}
    items = sorted(params.items(), key=lambda kv: rank.get(kv[0], len(rank)))
    params.clear()
    params.update(items)
