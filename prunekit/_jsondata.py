"""One serialiser for the plain result records: their fields as JSON data, plus named derived values.

A result dataclass that is nothing but its fields (and a few properties computed from them) inherits
:class:`JsonData` instead of writing ``to_dict`` by hand; ``_derived`` names the properties to add. Records
with a shape of their own (counts in place of masks, nested reports) keep their own ``to_dict``.

>>> from dataclasses import dataclass
>>> @dataclass
... class Timing(JsonData):
...     dense_ms: float
...     pruned_ms: float
...     _derived = ("speedup",)
...     @property
...     def speedup(self) -> float:
...         return self.dense_ms / self.pruned_ms
>>> Timing(3.0, 1.5).to_dict()
{'dense_ms': 3.0, 'pruned_ms': 1.5, 'speedup': 2.0}
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class JsonData:
    """Mixin for dataclasses: ``to_dict()`` is ``dataclasses.asdict`` plus the properties in ``_derived``."""

    _derived: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: every field (nested dataclasses as dicts), then each derived property."""
        return {**dataclasses.asdict(self), **{name: getattr(self, name) for name in self._derived}}  # type: ignore[call-overload]
