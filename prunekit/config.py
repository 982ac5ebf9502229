"""What a pruning verb is asked to do: one frozen, validated config per road.

- :class:`PruneConfig` (structured: channels, neurons, heads removed): ``ratio``, ``criterion``, ``scope``,
  ``ignore``, ``round_to``, ``max_ratio``, ``target``, ``data``, ``loss_fn``, ``measure``, ``latency_runs``,
  ``verify``, ``stream``.
  Taken by :func:`prunekit.prune`, :func:`prunekit.check`, :func:`prunekit.plan_prune`,
  :func:`~prunekit.structured.target.prune_to_target`, :func:`~prunekit.models.ultralytics.prune_yolo`,
  the recipes and the CLI.
- :class:`SparsifyConfig` (unstructured: weights masked): ``sparsity``, ``pattern``, ``criterion``,
  ``scope``, ``include``, ``exclude``, ``seed``, ``data``, ``loss_fn``, ``strict``. Taken by
  :func:`prunekit.sparsify`.

Both are checked once, when built (:mod:`prunekit._validate`), so a bad value is one :class:`ConfigError`
before any model is traced. The verbs take a config (``config=``, or their third positional argument) OR
the same options as keywords (:func:`resolve`): keywords left at ``None`` are "not given", so the
defaults live here and nowhere else. Options given positionally in the verbs' former order
(``prune(model, x, 0.5, "l1")``) still work, with a DeprecationWarning.

>>> cfg = PruneConfig(ratio=0.3, ignore="fc")
>>> cfg.ignore, cfg.effective_scope, cfg.replace(target=Target(macs=0.5)).effective_scope
(('fc',), 'local', 'global')
>>> PruneConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prunekit._validate import integer, names, real
from prunekit.criteria import criterion_label, get_criterion
from prunekit.errors import ConfigError

C = TypeVar("C", "PruneConfig", "SparsifyConfig")
SCOPES = ("local", "global")
VERIFY = ("exact", "approximate", "shapes")  # what prune checks after the cut (see prunekit.prune)


@dataclass(frozen=True)
class Target:
    """What the pruned model must achieve; set exactly one of ``macs``, ``params``, ``latency_ms``,
    ``speedup``.

    - ``macs`` / ``params``: fraction of the original kept, in (0, 1] (``macs=0.5``: at most half the MACs).
    - ``latency_ms``: median forward time in milliseconds (> 0).
    - ``speedup``: measured speedup factor over the original model (> 1): the dense median time divided by
      the pruned one.

    Latency and speedup are measured on ``runtime``, a name registered in
    :mod:`prunekit.deploy.runtimes` (``"onnxruntime"``, ``"openvino"``, ...: the model is exported to it and
    timed there; :mod:`prunekit.structured.runtime_target`), or, for ``None``, in eager PyTorch on this
    device. ``threads`` is the intra-op thread count of every timing (1, as ``prunekit bench``). ``runtime``
    and ``threads`` belong to latency and speedup targets only.

    >>> Target(macs=0.5).metric, Target(latency_ms=2.0).value
    ('macs', 2.0)
    >>> Target(speedup=2, runtime="onnxruntime").to_dict()
    {'speedup': 2.0, 'runtime': 'onnxruntime', 'threads': 1}
    >>> Target(speedup=1.0)
    Traceback (most recent call last):
    prunekit.errors.ConfigError: Target speedup must be > 1, got 1.0
    """

    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    speedup: float | None = None
    runtime: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in METRICS if getattr(self, k) is not None}
        if len(given) != 1:
            raise ConfigError(f"Target needs exactly one of {', '.join(METRICS)}; got {sorted(given)}")
        ((key, value),) = given.items()
        if key == "latency_ms":
            number = real(value, "Target latency_ms", 0.0, math.inf, lo_open=True, hi_open=True)
        elif key == "speedup":
            number = real(value, "Target speedup", 1.0, math.inf, lo_open=True, hi_open=True)
        else:  # the fraction kept
            number = real(value, f"Target {key} (the fraction kept)", 0.0, 1.0, lo_open=True)
        object.__setattr__(self, key, number)
        object.__setattr__(self, "threads", integer(self.threads, "Target threads", 1))
        if key in ("macs", "params") and (self.runtime is not None or self.threads != 1):
            raise ConfigError(
                f"Target {key} is counted, not timed: runtime= and threads= go with latency_ms or speedup"
            )
        if self.runtime is not None:
            if not isinstance(self.runtime, str):
                raise ConfigError(f"Target runtime must be a runtime name, got {type(self.runtime).__name__}")
            from prunekit.deploy.runtimes import get_runtime  # unknown: ConfigError naming the choices

            get_runtime(self.runtime).require()  # not installed: ExportError naming the pip extra

    @property
    def metric(self) -> str:
        """``"macs"``, ``"params"``, ``"latency_ms"`` or ``"speedup"``."""
        return next(k for k in METRICS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.metric))

    @property
    def timed(self) -> bool:
        """Whether the target is measured by timing (latency or speedup) rather than counted."""
        return self.metric in ("latency_ms", "speedup")

    def to_dict(self) -> dict[str, Any]:
        """``{metric: value}``, with ``runtime`` (when set) and ``threads`` for a timed target."""
        out: dict[str, Any] = {self.metric: self.value}
        if self.runtime is not None:
            out["runtime"] = self.runtime
        if self.timed:
            out["threads"] = self.threads
        return out


#: the fields of :class:`Target` naming what it asks for (exactly one is set)
METRICS = ("macs", "params", "latency_ms", "speedup")


def _target(value: Any) -> Target | None:
    if value is None or isinstance(value, Target):
        return value
    if isinstance(value, dict):
        try:
            return Target(**value)
        except TypeError:
            keys = ", ".join(f.name for f in dataclasses.fields(Target))
            raise ConfigError(f"target: keys are {keys}; got {sorted(value)}") from None
    raise ConfigError(f"target must be a prunekit.Target, got {type(value).__name__}")


class _Config:
    """What both configs share: ``replace``, and ``to_dict``/``from_dict`` over their JSON fields."""

    #: fields a plan's JSON cannot hold (batches, a loss function); ``to_dict`` leaves them out
    _RUNTIME = ("data", "loss_fn")

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes``, validated again.

        >>> PruneConfig(ratio=0.3).replace(ratio=0.6).ratio
        0.6
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON data for a plan's meta or a report (``data``/``loss_fn`` left out; callables by name)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in self._RUNTIME:
                continue
            value = getattr(self, f.name)
            if f.name == "criterion":
                value = criterion_label(value)
            elif isinstance(value, tuple):
                value = [v if isinstance(v, str) else f"<{type(v).__name__} module>" for v in value]
            elif isinstance(value, Target):
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The config :meth:`to_dict` wrote (unknown keys refused, with the known ones named)."""
        known = {f.name for f in dataclasses.fields(cls)} - set(cls._RUNTIME)
        unknown = sorted(set(data) - known)
        if unknown:
            listed = ", ".join(sorted(known))
            raise ConfigError(f"{cls.__name__}: unknown key {unknown[0]!r}; known keys: {listed}")
        return cls(**data)


@dataclass(frozen=True)
class PruneConfig(_Config):
    """How to prune structurally (see :func:`prunekit.prune`).

    - ``ratio``: share of units to remove, in [0, 1): of each group (``scope="local"``) or of all prunable
      units ranked together by group-normalised score (``"global"``).
    - ``criterion``: a registered group criterion name (``"l1"``, ``"l2"``, ``"taylor"``, ...) or a callable
      ``criterion(group, ctx) -> Tensor[width]``.
    - ``scope``: ``"local"``, ``"global"`` or ``None``: local for a ratio, global for a ``target`` search
      (:attr:`effective_scope`; one unit at a time across the model reaches a target more exactly).
    - ``ignore``: module names or modules whose channels stay (one name is one module).
    - ``round_to``: kept widths rounded up to a multiple of it; ``max_ratio``: no group loses more.
    - ``target``: a :class:`Target` (or ``{"macs": 0.5}``) replacing ``ratio``: the ratio is searched.
    - ``data`` / ``loss_fn``: batches and ``loss_fn(output, target)`` for data-driven criteria.
    - ``measure``: count params and MACs before and after (``False``: they read 0).
    - ``latency_runs``: timed runs per measurement of a timed (``latency_ms`` / ``speedup``) target search.
    - ``verify``: ``"exact"`` compares the pruned model with the masked reference before returning;
      ``"approximate"`` measures its error against the original model (``PruneResult.approx_error``);
      ``"shapes"`` checks only sizes and output shapes (one forward fewer); ``None``: ``"exact"`` for an
      exact plan, ``"approximate"`` for one cutting a stream
      (:func:`prunekit.structured.stream.verify_mode`).
    - ``stream``: ``True`` (or ``"activation"``) / ``"random"`` also cuts LayerNorm/RMSNorm-ed residual
      streams, approximately, ranked on ``data`` (or at random); ``"slicegpt"`` first applies SliceGPT's
      invariant transform (:mod:`prunekit.structured.slicegpt`); ``False``: norms pin their streams
      (:mod:`prunekit.structured.stream`). Not combined with ``target`` yet.

    >>> PruneConfig(ratio=1.0)
    Traceback (most recent call last):
    prunekit.errors.ConfigError: ratio must be in [0, 1), got 1.0
    """

    ratio: float = 0.5
    criterion: Any = "l2"
    scope: str | None = None
    ignore: tuple = ()
    round_to: int | None = None
    max_ratio: float = 0.9
    target: Target | None = None
    data: Any = field(default=None, compare=False, repr=False)
    loss_fn: Any = field(default=None, compare=False, repr=False)
    measure: bool = True
    latency_runs: int = 20
    verify: str | None = None
    stream: bool | str = False

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "ratio", real(self.ratio, "ratio", 0.0, 1.0, hi_open=True))
        get_criterion(self.criterion)  # an unknown name fails here, with the known ones listed
        if self.scope is not None and self.scope not in SCOPES:
            raise ConfigError(f"scope must be 'local' or 'global', got {self.scope!r}")
        put(self, "ignore", tuple(names(self.ignore) or ()))
        put(self, "round_to", None if self.round_to is None else integer(self.round_to, "round_to", 1))
        put(self, "max_ratio", real(self.max_ratio, "max_ratio", 0.0, 1.0, lo_open=True))
        put(self, "target", _target(self.target))
        if not isinstance(self.measure, bool):
            raise ConfigError(f"measure must be True or False, got {self.measure!r}")
        put(self, "latency_runs", integer(self.latency_runs, "latency_runs", 1))
        if self.verify is not None and self.verify not in VERIFY:
            raise ConfigError(f"verify must be 'exact', 'approximate' or 'shapes', got {self.verify!r}")
        from prunekit.structured.stream import importance  # prunekit.structured imports this module

        if importance(self.stream) is not None and self.target is not None:
            raise ConfigError("stream=True does not combine with target= yet: give a ratio")

    @property
    def effective_scope(self) -> str:
        """``scope``, or its default: ``"global"`` with a target, ``"local"`` with a ratio."""
        if self.scope is not None:
            return self.scope
        return "global" if self.target is not None else "local"


@dataclass(frozen=True)
class SparsifyConfig(_Config):
    """How to mask weights (see :func:`prunekit.sparsify` for each option).

    ``sparsity`` may be ``None`` for an ``N:M`` pattern (it is then ``1 - N/M``). ``include``/``exclude`` are
    fnmatch globs over module names (or modules) choosing the layers masked; structured pruning's
    ``ignore`` is different on purpose: exact modules whose channels stay, which also keeps every group
    coupled to them.

    >>> SparsifyConfig(pattern="2:4").sparsity, SparsifyConfig(0.5, exclude="fc").exclude
    (0.5, ('fc',))
    """

    sparsity: float | None = None
    pattern: Any = "unstructured"
    criterion: Any = "magnitude"
    scope: str = "local"
    include: tuple | None = None
    exclude: tuple = ()
    seed: int = 0
    data: Any = field(default=None, compare=False, repr=False)
    loss_fn: Any = field(default=None, compare=False, repr=False)
    strict: bool = False

    def __post_init__(self) -> None:
        from prunekit.criteria.scores import check_unstructured
        from prunekit.sparse.patterns import parse_pattern
        from prunekit.sparse.unstructured import check_scope, check_sparsity, resolve_criterion

        put = object.__setattr__
        pattern = parse_pattern(self.pattern)
        put(self, "pattern", str(pattern))
        put(self, "sparsity", check_sparsity(self.sparsity, pattern))
        check_scope(self.scope, pattern)
        check_unstructured(resolve_criterion(self.criterion, self.seed), self.data)  # checks the seed too
        put(self, "include", None if self.include is None else tuple(names(self.include)))
        put(self, "exclude", tuple(names(self.exclude) or ()))
        if not isinstance(self.strict, bool):
            raise ConfigError(f"strict must be True or False, got {self.strict!r}")


def resolve(
    cls: type[C],
    config: Any,
    verb: str,
    order: str | tuple[str, ...],
    *,
    legacy: tuple = (),
    stacklevel: int = 3,
    **given: Any,
) -> C:
    """The config a verb runs with: ``config`` or the keywords ``given`` (``None`` = not given), not both.

    ``config`` is the verb's first option argument: a config, ``None``, or (deprecated) the verb's options
    given positionally, ``(config, *legacy)`` in their former ``order`` (``ratio, criterion, ...``), which
    warns. A keyword that disagrees with ``config`` is a :class:`ConfigError`; one that repeats its value is
    accepted.

    >>> resolve(PruneConfig, PruneConfig(ratio=0.3), "prune", "ratio", ratio=0.3).ratio
    0.3
    >>> resolve(PruneConfig, PruneConfig(ratio=0.3), "prune", "ratio", ratio=0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    prunekit.errors.ConfigError: prune: ratio=0.5 conflicts with config.ratio=0.3; give an option in the ...
    """
    given = {k: v for k, v in given.items() if v is not None}
    order = (order,) if isinstance(order, str) else tuple(order)
    if isinstance(config, cls) and legacy:
        raise ConfigError(f"{verb}: after a {cls.__name__}, give options as keywords")
    if (config is not None and not isinstance(config, cls)) or legacy:
        if isinstance(config, (dict, list, str)) or not _number_like(config):
            raise ConfigError(f"{verb}: config must be a {cls.__name__}, got {type(config).__name__}")
        values = (config, *legacy)
        if len(values) > len(order):
            raise ConfigError(f"{verb} takes at most {len(order)} options positionally, got {len(values)}")
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(order, values, strict=False))
        warnings.warn(
            f"{verb}: a positional {', '.join(order[: len(values)])} is deprecated; pass {shown} or a "
            f"{cls.__name__}",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        for name, value in zip(order, values, strict=False):
            if name in given:
                raise ConfigError(f"{verb}: {name} given twice (positionally and as a keyword)")
            given[name] = value
        config = None
    if config is None:
        return cls(**given)
    merged = config.replace(**given)
    for key in given:
        same = (
            getattr(merged, key) is getattr(config, key)
            if key in cls._RUNTIME
            else (getattr(merged, key) == getattr(config, key))
        )
        if not same:
            raise ConfigError(
                f"{verb}: {key}={given[key]!r} conflicts with config.{key}={getattr(config, key)!r}; give an "
                "option in the config or as a keyword, not both"
            )
    return config


def _number_like(value: Any) -> bool:
    try:
        real(value, "value", -math.inf, math.inf, lo_open=True, hi_open=True)
    except ConfigError:
        return False
    return True
