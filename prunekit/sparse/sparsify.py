"""``sparsify``: mask the smallest weights of a model's Linear and Conv layers, locally or globally.

Pipeline: pick the layers (include/exclude) -> score every weight (criterion) -> turn scores into keep-masks
(:func:`masks_from_scores`: pattern + scope) -> :func:`~prunekit.sparse.masks.apply_masks`. Everything is
checked before the model is touched; on any error it is unchanged.

Counting: "pruned" means masked. A weight that is exactly zero but not masked counts as kept here (the
:func:`~prunekit.sparse.report.sparsity_report` counts zero values instead).
Rounding: a layer (local) or the selection (global) loses exactly ``floor(sparsity * units + 0.5)`` units,
where a unit is one weight, or one block for ``block:RxC`` (so block sparsity is exact to one block).
Ties are broken by position, never by a threshold, so counts never drift.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from prunekit._validate import eager_module, loss_batches, real
from prunekit.config import SparsifyConfig, resolve
from prunekit.criteria import Criterion, ScoreContext, criterion_label, get_criterion
from prunekit.criteria.scores import layer_scores as criterion_scores
from prunekit.errors import ConfigError
from prunekit.sparse.masks import apply_masks, check_maskable, get_mask
from prunekit.sparse.patterns import Pattern, expand_units, lowest_k, nm_keep, parse_pattern, unit_scores

CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *CONV_TRANSPOSE)
CRITERIA = ("magnitude", "random", "taylor", "hessian", "wanda", "sparsegpt")
"""The built-in criteria for weights (any registered one with element scores works too)."""
DATA_CRITERIA = ("taylor", "hessian", "wanda", "sparsegpt")
SCOPES = ("local", "global")

Selector = str | nn.Module


@dataclass
class LayerSparsity:
    """One layer after :func:`sparsify`: ``pruned`` of ``numel`` weights are masked."""

    numel: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0


@dataclass
class SparsifyResult:
    """What :func:`sparsify` did: the request, and the sparsity reached per layer and over the selection.

    ``layers`` are the layers masked; ``skipped`` maps each selected layer the pattern cannot fit to why
    (they stay dense and are not counted in ``numel`` / ``sparsity``).
    """

    pattern: str
    scope: str
    criterion: str
    requested: float
    layers: dict[str, LayerSparsity]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers.values())

    @property
    def pruned(self) -> int:
        return sum(layer.pruned for layer in self.layers.values())

    @property
    def sparsity(self) -> float:
        """Global sparsity achieved over the selected layers."""
        return self.pruned / self.numel if self.numel else 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable summary."""
        return {
            "pattern": self.pattern,
            "scope": self.scope,
            "criterion": self.criterion,
            "requested": self.requested,
            "sparsity": self.sparsity,
            "numel": self.numel,
            "pruned": self.pruned,
            "skipped": dict(self.skipped),
            "layers": {
                name: {"numel": layer.numel, "pruned": layer.pruned, "sparsity": layer.sparsity}
                for name, layer in self.layers.items()
            },
        }


def sparsify(
    model: nn.Module,
    sparsity: float | SparsifyConfig | None = None,
    *,
    config: SparsifyConfig | None = None,
    pattern: str | Pattern | None = None,
    criterion: str | Criterion | None = None,
    scope: str | None = None,
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
    seed: int | None = None,
    data: Iterable | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    strict: bool | None = None,
) -> SparsifyResult:
    """Mask weights of the model's Linear / Conv / ConvTranspose layers in place.

    The options are those of :class:`prunekit.SparsifyConfig`, as ``config`` (or the second positional
    argument: ``sparsify(model, SparsifyConfig(0.5))``) or as keywords; a keyword left at ``None`` takes the
    config's default (unstructured, magnitude, local, seed 0, not strict).

    - ``pattern``: ``"unstructured"``, ``"N:M"`` (e.g. ``"2:4"``: sparsity is ``1 - N/M``, pass ``None`` or
      that value; groups of M run along input channels, see :mod:`prunekit.sparse.patterns`) or
      ``"block:RxC"`` (whole tiles, ranked by the sum of their scores).
    - ``criterion``: a name of :mod:`prunekit.criteria` or a :class:`~prunekit.criteria.Criterion` with
      element scores (``weight_scores``; index-score criteria such as fpgm raise, saying why):
      ``"magnitude"`` (alias ``"l1"``: ``|w|``; ``"l2"``: ``w²``), ``"random"`` (seeded by ``seed`` and each
      weight's name, as everywhere), or data-driven (``data`` = an iterable of batches, see
      :mod:`prunekit.criteria._data`):
      ``"taylor"`` (``|w·dL/dw|``; ``loss_fn(output, target)`` or cross-entropy on ``(x, y)`` batches),
      ``"hessian"`` (OBD ``h·w²/2``, Fisher diagonal), ``"wanda"`` (``|W|·‖X‖₂``) and ``"sparsegpt"``
      (:mod:`prunekit.sparse.sparsegpt`: local scope, unstructured or N:M, Linear/Conv2d layers not yet
      masked; it also UPDATES the kept weights to reconstruct each layer's output).
    - ``scope``: ``"local"`` prunes every layer to ``sparsity``; ``"global"`` ranks all selected weights
      together and prunes exactly ``sparsity`` of them (not allowed with N:M).
    - ``include`` / ``exclude``: module names or fnmatch globs (``"fc"``, ``"features.*"``) or module
      objects; a name also selects everything below it. Biases, norms and embeddings are never masked.
    - A selected layer the pattern cannot fit (N:M: input channels not a multiple of M, as NVIDIA's ASP
      skips them, e.g. a CNN's 3-channel first conv; block: a 2-D weight the block does not tile) is left
      dense and listed in ``result.skipped``; ``strict=True`` raises :class:`ConfigError` instead.

    A layer that is already masked is scored on its masked weight and its mask only grows (old AND new).

    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> res = sparsify(model, 0.5, exclude=["2"])
    >>> res.layers["0"].pruned, int((model[0].weight == 0).sum())
    (64, 64)
    """
    if isinstance(sparsity, SparsifyConfig):
        if config is not None:
            raise ConfigError("sparsify: give one config (positionally or as config=), not both")
        sparsity, config = None, sparsity
    options = {"pattern": pattern, "criterion": criterion, "scope": scope, "include": include}
    options |= {"exclude": exclude, "seed": seed, "data": data, "loss_fn": loss_fn, "strict": strict}
    cfg = resolve(SparsifyConfig, config, "sparsify", "sparsity", sparsity=sparsity, **options)
    eager_module(model, "sparsify", masks_ok=True)
    pat, target, criterion, scope = parse_pattern(cfg.pattern), cfg.sparsity, cfg.criterion, cfg.scope
    data, loss_fn = cfg.data, cfg.loss_fn
    crit = resolve_criterion(criterion, cfg.seed)
    loss_batches(model, criterion, data, loss_fn)
    names = select_layers(model, cfg.include, cfg.exclude or None)
    modules = dict(model.named_modules())
    names, skipped = fitting_layers({name: modules[name] for name in names}, pat, cfg.strict)
    check_layers(model, {name: modules[name] for name in names}, pat)

    masks = crit.masks(model, names, target, pat, scope, data)
    if masks is None:
        ctx = ScoreContext.of(model, None, data=data, loss_fn=loss_fn)
        scores = criterion_scores(model, names, crit, ctx)
        masks = masks_from_scores(model, scores, target, pattern=pat, scope=scope)
    apply_masks(model, masks)

    layers = {}
    for name in names:
        mask = get_mask(modules[name])
        layers[name] = LayerSparsity(numel=mask.numel(), pruned=int((mask == 0).sum()))
    return SparsifyResult(str(pat), scope, criterion_label(criterion), target, layers, skipped)


def resolve_criterion(criterion: object, seed: object) -> Criterion:
    """The criterion ``sparsify`` and the schedules use: a name or object, its draws seeded by ``seed``.

    A name is seeded with ``seed``; a Criterion object keeps its own settings.

    >>> resolve_criterion("random", 3).seed
    3
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    crit = get_criterion(criterion)
    return crit.seeded(seed) if isinstance(criterion, str) else crit


def fitting_layers(
    layers: Mapping[str, nn.Module], pattern: Pattern, strict: bool = False
) -> tuple[list[str], dict[str, str]]:
    """Split ``layers`` into the names ``pattern`` fits and ``{name: why}`` for those it does not.

    ``strict=True`` raises :class:`ConfigError` on the first layer that does not fit; so does a selection
    with no layer left.

    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    >>> fitting_layers(dict(model.named_children()), parse_pattern("2:4"))
    (['1'], {'0': '3 input channels, not a multiple of 4'})
    """
    names, skipped = [], {}
    for name, module in layers.items():
        check_maskable(module, name)
        canonical = tuple(module.weight.shape[i] for i in layout(module))
        if strict:
            pattern.check(canonical, name)
        why = pattern.unfit(canonical)
        if why is None:
            names.append(name)
        else:
            skipped[name] = why
    if not names:
        first = next(iter(skipped))
        raise ConfigError(
            f"pattern {pattern} fits none of the selected layers (e.g. {first!r}: {skipped[first]})"
        )
    return names, skipped


def masks_from_scores(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    sparsity: float | None,
    *,
    pattern: str | Pattern = "unstructured",
    scope: str = "local",
) -> dict[str, Tensor]:
    """Keep-masks (bool, weight-shaped; True = keep) from per-weight scores; higher score = more important.

    This is the hook for other criteria (Wanda, SparseGPT, Taylor...): compute one score tensor per layer,
    shaped like ``layer.weight`` and keyed by module name, then pass the result to
    :func:`~prunekit.sparse.masks.apply_masks`. Weights already masked rank lowest. Nothing is modified.

    >>> model = nn.Sequential(nn.Linear(4, 2))
    >>> keep = masks_from_scores(model, {"0": torch.arange(8.0).reshape(2, 4)}, 0.25)
    >>> keep["0"].tolist()
    [[False, False, True, True], [True, True, True, True]]
    """
    pat = parse_pattern(pattern)
    target = check_sparsity(sparsity, pat)
    check_scope(scope, pat)
    if not scores:
        raise ConfigError("scores is empty: give one score tensor per layer to mask")
    modules = dict(model.named_modules())
    for name in scores:
        if name not in modules:
            raise ConfigError(f"scores name {name!r}, which is not a module of the model")
    layers = {name: modules[name] for name in scores}
    check_layers(model, layers, pat)

    with torch.no_grad():
        canon, kept = {}, {}
        for name, module in layers.items():
            score = scores[name].detach()
            if tuple(score.shape) != tuple(module.weight.shape):
                raise ConfigError(
                    f"scores for {name!r} have shape {tuple(score.shape)}, weight has "
                    f"{tuple(module.weight.shape)}"
                )
            if not score.is_floating_point():
                score = score.float()
            if bool(torch.isnan(score).any()):
                raise ConfigError(f"scores for layer {name!r} contain NaN (NaN weights?)")
            perm = layout(module)
            dtype = torch.float64 if score.dtype == torch.float64 else torch.float32
            canon[name] = score.to(dtype).permute(perm)
            old = get_mask(module)
            alive = old != 0 if old is not None else torch.ones_like(score, dtype=torch.bool)
            kept[name] = alive.permute(perm)

        if pat.kind == "n:m":
            keep = {name: nm_keep(pat, canon[name], kept[name]) for name in layers}
        else:
            units = {name: unit_scores(pat, canon[name], kept[name]) for name in layers}
            pruned = _rank(units, target, scope)
            keep = {name: expand_units(pat, pruned[name], canon[name].shape) & kept[name] for name in layers}
        return {name: keep[name].permute(_inverse(layout(layers[name]))).contiguous() for name in layers}


def _rank(units: dict[str, Tensor], sparsity: float, scope: str) -> dict[str, Tensor]:
    """Pruned-unit masks: the lowest ``round(sparsity * count)`` units per layer (local) or overall."""
    if scope == "local":
        return {
            name: lowest_k(u.flatten(), _count(sparsity, u.numel())).reshape(u.shape)
            for name, u in units.items()
        }
    dtype = torch.float64 if any(u.dtype == torch.float64 for u in units.values()) else torch.float32
    device = next(iter(units.values())).device
    flat = torch.cat([u.flatten().to(device=device, dtype=dtype) for u in units.values()])
    pruned_all = lowest_k(flat, _count(sparsity, flat.numel()))
    out, start = {}, 0
    for name, u in units.items():
        out[name] = pruned_all[start : start + u.numel()].reshape(u.shape).to(u.device)
        start += u.numel()
    return out


def _count(sparsity: float, total: int) -> int:
    return math.floor(sparsity * total + 0.5)


def layer_scores(layers: Mapping[str, nn.Module], criterion: str = "magnitude", seed: int = 0) -> dict:
    """Per-weight scores of ``{name: layer}`` from a data-free criterion, keyed by the same names.

    Deprecated: use :func:`prunekit.criteria.scores.layer_scores` (model, names, criterion, context).

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     layer_scores({"fc": nn.Linear(3, 2)}, "random", seed=1)["fc"].shape
    torch.Size([2, 3])
    """
    warnings.warn(
        "prunekit.sparse.sparsify.layer_scores is deprecated: use prunekit.criteria.scores.layer_scores",
        DeprecationWarning,
        stacklevel=2,
    )
    holder = nn.Module()
    keys = {f"layer{i}": name for i, name in enumerate(layers)}
    for key, name in keys.items():
        holder.add_module(key, layers[name])
    crit = resolve_criterion(criterion, seed)
    got = criterion_scores(holder, list(keys), crit, ScoreContext.of(holder, None))
    return {keys[k]: v for k, v in got.items()}


def data_scores(
    model: nn.Module,
    names: list[str],
    criterion: str,
    data: Iterable,
    loss_fn: Callable[..., Tensor] | None = None,
) -> dict[str, Tensor]:
    """Per-weight scores of the named layers from a criterion of :mod:`prunekit.criteria` (float32).

    Deprecated: use :func:`prunekit.criteria.scores.layer_scores`.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> data_scores(model, ["0"], "wanda", [torch.ones(3, 2)])["0"].shape
    torch.Size([2, 2])
    """
    ctx = ScoreContext.of(model, None, data=data, loss_fn=loss_fn)
    return {k: v.float() for k, v in criterion_scores(model, names, get_criterion(criterion), ctx).items()}


def layout(module: nn.Module) -> tuple[int, ...]:
    """Permutation of ``module.weight`` into the canonical ``(out, *kernel, in)`` layout.

    Linear ``(out, in)`` is already canonical; Conv ``(out, in/g, *k)`` and ConvTranspose ``(in, out/g, *k)``
    move their input-channel dim last (NVIDIA ASP: N:M groups run along input channels).

    >>> layout(nn.Conv2d(4, 8, 3)), layout(nn.ConvTranspose1d(4, 8, 3))
    ((0, 2, 3, 1), (1, 2, 0))
    """
    if isinstance(module, nn.Linear):
        return (0, 1)
    if not isinstance(module, PRUNABLE):
        raise ConfigError(
            f"cannot mask a {type(module).__name__}: only Linear, Conv and ConvTranspose layers"
        )
    kernel = tuple(range(2, module.weight.dim()))
    return (1, *kernel, 0) if isinstance(module, CONV_TRANSPOSE) else (0, *kernel, 1)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(perm.index(i) for i in range(len(perm)))


def check_sparsity(sparsity: object, pattern: Pattern) -> float:
    """Validate ``sparsity`` for ``pattern`` and return it as a float (N:M: ``None`` means ``1 - N/M``).

    >>> check_sparsity(None, parse_pattern("2:4"))
    0.5
    """
    fixed = pattern.fixed_sparsity
    if sparsity is None:
        if fixed is None:
            raise ConfigError(f"sparsity is required for pattern {pattern}: a number in [0, 1), e.g. 0.5")
        return fixed
    value = real(sparsity, "sparsity", 0.0, 1.0, hi_open=True)
    if fixed is not None and abs(value - fixed) > 1e-9:
        raise ConfigError(
            f"pattern {pattern} fixes sparsity at {fixed:g}, got {value:g}: pass None or {fixed:g}"
        )
    return value


def check_scope(scope: str, pattern: Pattern) -> None:
    """Validate ``scope``; N:M is per group by definition, so only ``"local"`` goes with it.

    >>> check_scope("global", parse_pattern("block:2x2"))
    """
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
    if scope == "global" and pattern.kind == "n:m":
        raise ConfigError(
            f"pattern {pattern} keeps {pattern.n} of every {pattern.m} weights: use scope='local'"
        )


def check_layers(model: nn.Module, layers: Mapping[str, nn.Module], pattern: Pattern) -> None:
    """Raise before any change if one of ``layers`` cannot take a mask of ``pattern`` (checks all first).

    >>> model = nn.Sequential(nn.Linear(8, 4))
    >>> check_layers(model, {"0": model[0]}, parse_pattern("2:4"))
    """
    for name, module in layers.items():
        layout(module)
        check_maskable(module, name)
    owners = _owners(model)
    for name, module in layers.items():
        weight = module.parametrizations.weight.original if get_mask(module) is not None else module.weight
        others = [
            owner for owner in owners[id(weight)] if owner not in (name, f"{name}.parametrizations.weight")
        ]
        if others:
            raise ConfigError(
                f"layer {name!r} shares its weight with {others[0]!r}; a mask would change both: exclude it"
            )
        shape = tuple(module.weight.shape)
        pattern.check(tuple(shape[i] for i in layout(module)), name)


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> names of the modules that hold it (a shared module counts once)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module._parameters.values():
            if param is not None:
                owners.setdefault(id(param), []).append(name)
    return owners


def select_layers(
    model: nn.Module,
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
) -> list[str]:
    """Names of the Linear/Conv layers ``sparsify`` would mask, in model order.

    A selector matches a module if it matches (fnmatch) its name or the name of one of its parents.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> select_layers(model, exclude=["2"])
    ['0']
    """
    all_names = [name for name, _ in model.named_modules()]
    candidates = [name for name, module in model.named_modules() if isinstance(module, PRUNABLE)]
    if not candidates:
        raise ConfigError("the model has no Linear, Conv or ConvTranspose layer to sparsify")
    chosen = candidates
    included = _selectors(model, include, "include")
    if included is not None:
        if not included:
            raise ConfigError("include is empty: name at least one layer (or glob), or leave include=None")
        for sel in included:
            if not any(_matches(sel, name) for name in candidates):
                kind = "no Linear/Conv layer" if any(_matches(sel, n) for n in all_names) else "no module"
                raise ConfigError(
                    f"include {sel!r} matches {kind}; prunable layers are e.g. {', '.join(candidates[:4])}"
                )
        chosen = [name for name in candidates if any(_matches(sel, name) for sel in included)]
    excluded = _selectors(model, exclude, "exclude") or []
    for sel in excluded:
        if not any(_matches(sel, name) for name in all_names):
            raise ConfigError(
                f"exclude {sel!r} matches no module; layers are e.g. {', '.join(candidates[:4])}"
            )
    chosen = [name for name in chosen if not any(_matches(sel, name) for sel in excluded)]
    if not chosen:
        raise ConfigError("include/exclude leave no layer to sparsify")
    return chosen


def _selectors(model: nn.Module, items: Iterable[Selector] | Selector | None, what: str) -> list[str] | None:
    if items is None:
        return None
    if isinstance(items, (str, nn.Module)):
        items = [items]
    names = {id(module): name for name, module in model.named_modules()}
    out = []
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise ConfigError(f"{what} has a {type(item).__name__} module that is not part of the model")
            out.append(names[id(item)])
        elif isinstance(item, str):
            out.append(item)
        else:
            raise ConfigError(f"{what} takes module names or modules, got {type(item).__name__}")
    return out


def _matches(selector: str, name: str) -> bool:
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), selector) for i in range(1, len(parts) + 1))
