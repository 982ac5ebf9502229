"""Progress bars with an ETA on stderr for long work; nothing at all unless they are switched on.

A bar shows when the caller asks for one (``progress=True``), or, for ``progress=None``, when the
``PRUNEKIT_PROGRESS`` environment variable is ``1``, or when the ``prunekit`` command line switched bars on
(it does unless ``--quiet``) and stderr is a terminal. Otherwise :func:`progress_bar` hands out a bar that
does nothing and :func:`track` is the plain iterable: library code prints nothing.

>>> list(track(range(3), "counting", progress=False))
[0, 1, 2]
>>> with progress_bar("work", total=2, progress=False) as bar:
...     bar.advance()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "PRUNEKIT_PROGRESS"
_cli = {"on": False}  # set by the command line for the process it runs
_active = {"bars": 0}  # one bar at a time: a bar inside another's block (latency in a search) stays silent


def set_cli_default(on: bool) -> None:
    """The command line's choice for ``progress=None`` (bars only ever show on a terminal this way)."""
    _cli["on"] = bool(on)


def enabled(progress: bool | None = None) -> bool:
    """Whether a bar shows: ``progress`` if given, else ``PRUNEKIT_PROGRESS`` (``1``/``0``), else the
    command line's choice when stderr is a terminal.

    >>> enabled(False), enabled(True)
    (False, True)
    """
    if progress is not None:
        return bool(progress)
    forced = os.environ.get(ENV)
    if forced is not None:
        return forced.strip() not in ("", "0")
    return _cli["on"] and sys.stderr.isatty()


class Bar:
    """One task of a rich progress bar: :meth:`advance`, :meth:`update` its fields, :meth:`log` a line."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, steps: float = 1, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, **fields)

    def update(self, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)

    def log(self, text: str) -> None:
        """A line above the bar (epoch summaries); nothing when the bar is off."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)


@contextmanager
def progress_bar(
    description: str,
    total: float | None = None,
    *,
    progress: bool | None = None,
    fields: str | None = None,
    console: Any = None,
    **initial: Any,
) -> Iterator[Bar]:
    """A bar on stderr (done/total, elapsed, time remaining) while the block runs, or a silent one.

    ``fields`` is a rich format string shown after the counts (``"loss {task.fields[loss]:.4f}"``);
    ``initial`` gives those fields their first values; ``console`` (a rich Console) draws it elsewhere.
    The bar disappears when the block ends.
    """
    if not enabled(progress) or _active["bars"]:
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(f"[bold]{description}[/]"), BarColumn(), MofNCompleteColumn()]
    if fields is not None:
        columns.append(TextColumn(fields))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    console = console if console is not None else Console(stderr=True, force_terminal=True)
    _active["bars"] += 1
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            yield Bar(bar, bar.add_task(description, total=total, **initial))
    finally:
        _active["bars"] -= 1


def track(
    iterable: Iterable[T], description: str, total: float | None = None, *, progress: bool | None = None
) -> Iterator[T]:
    """Yield from ``iterable``, advancing a bar by one per item (``total`` defaults to its ``len``)."""
    if not enabled(progress) or _active["bars"]:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(description, total, progress=True) as bar:
        for item in iterable:
            yield item
            bar.advance()
