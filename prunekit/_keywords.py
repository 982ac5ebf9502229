"""Keyword-only options with a deprecation period for callers that still pass them positionally.

:func:`keyword_only` wraps a verb whose signature already marks its options keyword-only (``*``): the
leading arguments stay positional; options passed positionally in the order they used to have still work,
with a :class:`FutureWarning` naming the keyword to use.

>>> import warnings
>>> @keyword_only("n")
... def cut(model, *, n=1):
...     return n
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     cut("m", 3)
3
>>> str(caught[0].message)
'cut: a positional n is deprecated; pass n=...'
>>> cut("m", n=2)
2
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def keyword_only(*order: str) -> Callable[[F], F]:
    """Accept the keyword-only options ``order`` positionally too, in that order, with a FutureWarning."""

    def wrap(fn: F) -> F:
        params = inspect.signature(fn).parameters.values()
        n_lead = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        missing = [n for n in order if n not in inspect.signature(fn).parameters]
        if missing:
            raise TypeError(f"{fn.__name__} has no option {missing[0]!r}")

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            extra = args[n_lead:]
            if not extra:
                return fn(*args, **kwargs)
            if len(extra) > len(order):
                raise TypeError(
                    f"{fn.__name__} takes {n_lead + len(order)} positional arguments at most, got {len(args)}"
                )
            moved = order[: len(extra)]
            for name in moved:
                if name in kwargs:
                    raise TypeError(f"{fn.__name__} got {name!r} both positionally and as a keyword")
            warnings.warn(
                f"{fn.__name__}: a positional {', '.join(moved)} is deprecated; "
                f"pass {', '.join(f'{n}=...' for n in moved)}",
                FutureWarning,
                stacklevel=2,
            )
            return fn(*args[:n_lead], **dict(zip(moved, extra, strict=True)), **kwargs)

        return call  # type: ignore[return-value]

    return wrap
