"""What a schedule prunes: the selected layers' weight masks, grown to a target sparsity (the seam).

Every schedule in :mod:`prunekit.schedules` talks to a :class:`MaskSet` only: ``prune_to(sparsity)`` makes the
selection exactly that sparse (masks only grow: a weight pruned once stays pruned), ``sparsity()`` counts
what is masked, ``masks()`` copies the keep-masks and ``finalize()`` makes them permanent.
:class:`UnstructuredMasks` implements it with :func:`prunekit.sparse.masks_from_scores` and
:func:`prunekit.sparse.apply_masks`, so counts are exact: ``floor(sparsity * units + 0.5)`` units pruned over
the selection (``scope="global"``) or per layer (``scope="local"``), a unit being one weight, or one tile for
``block:RxC``.

Structured groups plug in here later: a ``GroupMasks`` with the same four methods, soft masks on the
structural engine's coupled channel groups during training and physical removal in ``finalize()``.
:func:`make_mask_set` is the one place that picks the implementation; ``pattern="structured"`` raises until
then.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from prunekit.criteria import Criterion, ScoreContext
from prunekit.criteria.scores import check_scores, check_unstructured, layer_scores
from prunekit.errors import ConfigError
from prunekit.sparse import (
    apply_masks,
    get_mask,
    masks_from_scores,
    parse_pattern,
    remove_masks,
    select_layers,
)
from prunekit.sparse.unstructured import Selector, check_layers, check_scope, resolve_criterion

ScoreFn = Callable[[dict[str, nn.Module]], Mapping[str, Tensor]]
"""Deprecated custom scores: ``{name: layer}`` -> ``{name: weight-shaped score}``; register a
:class:`~prunekit.criteria.Criterion` with ``weight_scores`` instead (it then works in every verb)."""


class MaskSet(Protocol):
    """The interface every schedule drives (see the module docstring)."""

    names: list[str]

    def prune_to(self, sparsity: float) -> None: ...

    def sparsity(self) -> float: ...

    def masks(self) -> dict[str, Tensor]: ...

    def finalize(self) -> nn.Module: ...


class UnstructuredMasks:
    """prunekit masks on the weights of the layers ``include``/``exclude`` select (as in ``sparsify``).

    ``criterion`` is a name of :mod:`prunekit.criteria` or a :class:`~prunekit.criteria.Criterion` with
    element scores (as in :func:`prunekit.sparsify`: ``"magnitude"``, ``"random"`` seeded by ``seed``, a
    registered one...; data-driven ones read ``data``/``loss_fn``), or a deprecated :data:`ScoreFn`.
    Everything is checked here, before any layer is touched.

    >>> model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> target = UnstructuredMasks(model, scope="global")
    >>> target.prune_to(0.5); target.sparsity()
    0.5
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        pattern: str = "unstructured",
        scope: str = "global",
        criterion: str | Criterion | ScoreFn = "magnitude",
        include: Iterable[Selector] | Selector | None = None,
        exclude: Iterable[Selector] | Selector | None = None,
        seed: int = 0,
        data: Any = None,
        loss_fn: Callable[..., Tensor] | None = None,
    ) -> None:
        pat = parse_pattern(pattern)
        if pat.kind == "n:m":
            raise ConfigError(
                f"pattern {pat} fixes the sparsity at {pat.fixed_sparsity:g}, so it has no schedule: "
                "use prunekit.sparsify, or 'unstructured' / 'block:RxC'"
            )
        check_scope(scope, pat)
        if isinstance(criterion, (str, Criterion)):
            self.criterion: Criterion | ScoreFn = resolve_criterion(criterion, seed)
            check_unstructured(self.criterion, data)
            if self.criterion.makes_masks:
                raise ConfigError(
                    f"criterion {self.criterion.name!r} makes its own masks in one shot, so it has no "
                    "schedule: use prunekit.sparsify, or a score criterion (magnitude, taylor, ...)"
                )
        else:
            resolve_criterion("magnitude", seed)  # checks seed
            warnings.warn(
                "a function {name: layer} -> scores as criterion is deprecated: register a "
                "prunekit.criteria.Criterion with weight_scores (it then works in every verb)",
                DeprecationWarning,
                stacklevel=3,
            )
            self.criterion = criterion
        self.model = model
        self.pattern = pat
        self.scope = scope
        self.seed = seed
        self.data, self.loss_fn = data, loss_fn
        self.names = select_layers(model, include, exclude)
        modules = dict(model.named_modules())
        self.layers = {name: modules[name] for name in self.names}
        check_layers(model, self.layers, pat)

    def scores(self) -> dict[str, Tensor]:
        """One weight-shaped score tensor per selected layer (higher = keep)."""
        if isinstance(self.criterion, Criterion):
            ctx = ScoreContext.of(self.model, None, data=self.data, loss_fn=self.loss_fn)
            return layer_scores(self.model, self.names, self.criterion, ctx)
        got = dict(self.criterion(self.layers))
        for n, score in got.items():
            if n in self.layers:
                got[n] = check_scores(score, tuple(self.layers[n].weight.shape), "custom", f"layer {n!r}")
        return got

    def prune_to(self, sparsity: float) -> None:
        """Grow the masks until exactly ``sparsity`` of the selection is masked (never un-prunes)."""
        masks = masks_from_scores(self.model, self.scores(), sparsity, pattern=self.pattern, scope=self.scope)
        apply_masks(self.model, masks)

    def counts(self) -> tuple[int, int]:
        """``(masked, total)`` weights over the selection; an unmasked layer counts as all kept."""
        masked = total = 0
        for module in self.layers.values():
            mask = get_mask(module)
            total += module.weight.numel()
            masked += 0 if mask is None else int((mask == 0).sum())
        return masked, total

    def sparsity(self) -> float:
        """Fraction of the selected weights that are masked."""
        masked, total = self.counts()
        return masked / total

    def masks(self) -> dict[str, Tensor]:
        """Copies of the keep-masks (bool, True = kept), all-True for a layer not masked yet."""
        out = {}
        for name, module in self.layers.items():
            mask = get_mask(module)
            out[name] = torch.ones_like(module.weight, dtype=torch.bool) if mask is None else mask.bool()
        return out

    def finalize(self) -> nn.Module:
        """Make the selected layers' masks permanent (``remove_masks``); return the model."""
        for module in self.layers.values():
            if get_mask(module) is not None:
                remove_masks(module)
        return self.model


def make_mask_set(
    model: nn.Module,
    *,
    pattern: str = "unstructured",
    scope: str = "global",
    criterion: str | Criterion | ScoreFn = "magnitude",
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
    seed: int = 0,
    data: Any = None,
    loss_fn: Callable[..., Tensor] | None = None,
) -> MaskSet:
    """The :class:`MaskSet` for ``pattern``: unstructured / ``block:RxC`` masks now, structured groups later.

    >>> make_mask_set(nn.Sequential(nn.Linear(4, 4))).names
    ['0']
    """
    if isinstance(pattern, str) and pattern.strip().lower() == "structured":
        raise ConfigError(
            "structured schedules (soft group masks, physical removal at the end) are not available yet: "
            "use pattern='unstructured' or 'block:RxC', or prunekit.prune for one-shot structured pruning"
        )
    return UnstructuredMasks(
        model,
        pattern=pattern,
        scope=scope,
        criterion=criterion,
        include=include,
        exclude=exclude,
        seed=seed,
        data=data,
        loss_fn=loss_fn,
    )


def check_fraction(value: object, name: str, *, allow_zero: bool = True) -> float:
    """``value`` as a float in [0, 1) (or (0, 1) without ``allow_zero``), else :class:`ConfigError`.

    >>> check_fraction(0.9, "final_sparsity")
    0.9
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be in {interval}, got {value}")
    return value


def check_int(value: object, name: str, low: int) -> int:
    """``value`` as an int >= ``low``, else :class:`ConfigError`.

    >>> check_int(3, "steps", 1)
    3
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value
