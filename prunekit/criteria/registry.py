"""Criteria by name: :func:`register_criterion` adds one, :func:`get_criterion` resolves a name or object.

Every entry is a :class:`~prunekit.criteria.base.Criterion`; a plain function ``fn(group, ctx)`` is wrapped
in :class:`~prunekit.criteria.base.GroupFunction` (it scores structured groups only). Names are what every
verb takes as ``criterion=``: ``prune``, ``check``, targets, sensitivity, ``sparsify`` and the schedules.
The built-ins register themselves when their module is imported (``prunekit.criteria`` imports them all);
a criterion defined elsewhere needs one line::

    @register_criterion("toy")
    class Toy(Criterion):
        def weight_scores(self, ctx, names):
            return {n: ctx.tensors[n].detach().abs() for n in names}

>>> from prunekit.criteria import Criterion, get_criterion
>>> get_criterion("l1") is get_criterion("magnitude")
True
>>> isinstance(get_criterion("fpgm"), Criterion)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prunekit.criteria.base import Criterion, GroupFunction
from prunekit.errors import ConfigError

_REGISTRY: dict[str, Criterion] = {}
T = TypeVar("T")


def as_criterion(obj: Any, name: str | None = None) -> Criterion:
    """``obj`` as a :class:`Criterion`: an instance as is, a subclass instantiated, a function wrapped.

    >>> as_criterion(lambda group, ctx: None, "mine").name
    'mine'
    """
    if isinstance(obj, Criterion):
        return obj
    if isinstance(obj, type) and issubclass(obj, Criterion):
        crit = obj()
        if name is not None and crit.name == Criterion.name:
            crit.name = crit.__name__ = name
        return crit
    if callable(obj):
        return GroupFunction(obj, name)
    raise ConfigError(
        "criterion must be a name, a Criterion or a function (group, ctx) -> scores, "
        f"got {type(obj).__name__}"
    )


def register_criterion(name: str, obj: Any = None) -> Any:
    """Make ``obj`` (a Criterion instance or subclass, or a function ``(group, ctx)``) ``criterion=name``.

    Call it as ``register_criterion("name", obj)`` or decorate: ``@register_criterion("name")``. The object
    given is returned unchanged, so a decorated class or function stays what it was.

    >>> from prunekit.criteria.magnitude import Magnitude
    >>> _ = register_criterion("l3ish", Magnitude(p=2, reduction="max"))
    >>> get_criterion("l3ish").reduction
    'max'
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a criterion name must be a non-empty string, got {name!r}")
    if obj is None:

        def decorate(target: T) -> T:
            _REGISTRY[name] = as_criterion(target, name)
            return target

        return decorate
    _REGISTRY[name] = as_criterion(obj, name)
    return obj


def get_criterion(criterion: str | Criterion | Callable[..., Any]) -> Criterion:
    """The :class:`Criterion` registered as ``criterion``, or ``criterion`` itself as a Criterion."""
    if not isinstance(criterion, str):
        return as_criterion(criterion)
    if criterion not in _REGISTRY:
        raise ConfigError(f"unknown criterion {criterion!r}: choose one of {', '.join(criterion_names())}")
    return _REGISTRY[criterion]


def criterion_names() -> list[str]:
    """Every registered name, sorted.

    >>> {"l1", "l2", "taylor", "sparsegpt"} <= set(criterion_names())
    True
    """
    return sorted(_REGISTRY)


def criterion_label(criterion: Any) -> str:
    """The name a result records for ``criterion`` (the name given, or the object's ``name``).

    >>> criterion_label("l2"), criterion_label(lambda g, c: None)
    ('l2', '<lambda>')
    """
    if isinstance(criterion, str):
        return criterion
    return as_criterion(criterion).name
