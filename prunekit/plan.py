"""A pruning plan: pure JSON data saying which units of which group go, and what that cuts.

Deciding (criteria, ratios) and cutting (:func:`prunekit.structured.apply`) meet only here. A plan
holds the exact cuts (parameter/buffer name -> dim -> removed indices), the module attributes to update
(old and new values), the original shapes of everything it touches (to refuse a model it does not fit) and
the model's output shapes (checked after cutting). Plans replay on a fresh copy of the architecture.

>>> p = Plan(removals={"fc.weight": {0: [1, 3]}}, signature={"fc.weight": [4, 2]})
>>> Plan.from_dict(p.to_dict()) == p
True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit._atomic import write_text
from prunekit._jsondata import JsonData
from prunekit.errors import PlanError

PLAN_VERSION = 1
INDEX_LIMIT = 2**63  # removed indices index int64 tensors


@dataclass
class GroupDecision(JsonData):
    """Which units of one group are removed (``removed`` indexes the group's units ``0 .. width-1``)."""

    id: int
    width: int
    removed: list[int]
    members: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """Structural cuts for one model. See the module docstring."""

    removals: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    attrs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    signature: dict[str, list[int]] = field(default_factory=dict)
    groups: list[GroupDecision] = field(default_factory=list)
    output_shapes: list[list[int] | None] = field(default_factory=list)  # None: sized by the data
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    @property
    def removed_units(self) -> int:
        return sum(len(g.removed) for g in self.groups)

    @property
    def approximate(self) -> list[str]:
        """Why this plan's cut is not exact (empty: it is); see :mod:`prunekit.graph.stream`."""
        return list(self.meta.get("approximate", []))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (dims become string keys)."""
        return {
            "version": self.version,
            "removals": {
                n: {str(d): list(ix) for d, ix in dims.items()} for n, dims in self.removals.items()
            },
            "attrs": {m: {a: list(v) for a, v in attrs.items()} for m, attrs in self.attrs.items()},
            "signature": {n: list(s) for n, s in self.signature.items()},
            "groups": [g.to_dict() for g in self.groups],
            "output_shapes": [None if s is None else list(s) for s in self.output_shapes],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Rebuild a plan from :meth:`to_dict` output; raises PlanError on a malformed or newer plan."""
        try:
            version = int(data.get("version", 0))
            if version != PLAN_VERSION:
                raise PlanError(f"plan version {version} is not supported (expected {PLAN_VERSION})")
            return cls(
                removals={
                    str(n): {int(d): [_index(i, n) for i in ix] for d, ix in dims.items()}
                    for n, dims in data["removals"].items()
                },
                attrs={
                    str(m): {str(a): list(v) for a, v in attrs.items()} for m, attrs in data["attrs"].items()
                },
                signature={str(n): [int(s) for s in shape] for n, shape in data["signature"].items()},
                groups=[
                    GroupDecision(
                        int(g["id"]), int(g["width"]), [int(i) for i in g["removed"]], g.get("members", [])
                    )
                    for g in data.get("groups", [])
                ],
                output_shapes=[
                    None if shape is None else [int(s) for s in shape]
                    for shape in data.get("output_shapes", [])
                ],
                meta=dict(data.get("meta", {})),
                version=version,
            )
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise PlanError(f"malformed plan: {type(exc).__name__}: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON, atomically (:func:`prunekit._atomic.write_text`)."""
        return write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise PlanError(f"{path} is not a prunekit plan (not UTF-8 JSON)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read plan {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise PlanError(f"{path} is not a prunekit plan (JSON {type(data).__name__}, not an object)")
        return cls.from_dict(data)


def _index(value: Any, name: str) -> int:
    """A removed index as an int that fits the int64 tensors it will index (PlanError otherwise)."""
    index = int(value)
    if not 0 <= index < INDEX_LIMIT:
        raise PlanError(f"plan removes index {index} of {name!r}: indices must be in [0, 2**63)")
    return index
