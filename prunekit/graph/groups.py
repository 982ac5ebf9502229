"""Union-find over channel slots: units (removable together) and groups (units sharing members).

A *unit* is one connected component of the slot graph: the set of (parameter, dim, index) entries that must
be removed together. A *group* is the set of units that touch exactly the same parameter dims (e.g. conv1
out-channels + bn1 + conv2 in-channels); its width is its number of units. After a concat, each producer's
channels form their own group. A unit holding any pinned slot is pinned.

>>> import torch
>>> rep = build_groups(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
...                    torch.zeros(1, 4))
>>> [(g.width, g.prunable) for g in rep.groups if not g.pinned]
[(8, 8)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.graph.trace import SlotRange, Tracer, trace


@dataclass
class Member:
    """The part of one parameter/buffer dim that a group covers: positions ``index`` belong to ``units``.

    ``size`` is the full size of the dim; a dim read by several groups (e.g. the input channels of a conv
    after a concat) appears as one member in each, with disjoint ``index``.
    """

    name: str
    dim: int
    size: int
    kind: str
    units: np.ndarray = field(repr=False)
    index: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "size": self.size,
            "kind": self.kind,
            "count": len(self.index),
        }


@dataclass
class Group:
    """Coupled channel slots. Units ``0 .. width-1``; ``unit_pinned[i]`` says unit ``i`` must stay."""

    id: int
    members: list[Member]
    width: int
    unit_pinned: np.ndarray = field(repr=False)
    reasons: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)

    @property
    def pinned(self) -> bool:
        """True when no unit of the group may be removed."""
        return bool(self.unit_pinned.all())

    @property
    def prunable(self) -> int:
        """Number of units that may be removed (before ratio caps)."""
        return int((~self.unit_pinned).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "width": self.width,
            "prunable_units": self.prunable,
            "pinned": self.pinned,
            "members": [m.to_dict() for m in self.members],
            "reasons": list(self.reasons),
            "constraints": list(self.constraints),
        }


@dataclass
class GroupReport:
    """All groups of a model, plus what the planner needs to turn unit choices into cuts."""

    groups: list[Group]
    attrs: list[Any] = field(repr=False, default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    signature: dict[str, list[int]] = field(default_factory=dict)
    n_calls: int = 0
    rule_errors: list[str] = field(default_factory=list)
    slot_unit: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    slot_group: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.pinned]

    @property
    def pinned_groups(self) -> list[Group]:
        return [g for g in self.groups if g.pinned]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_groups": len(self.groups),
            "n_prunable_groups": len(self.prunable_groups),
            "n_pinned_groups": len(self.pinned_groups),
            "traced_calls": self.n_calls,
            "rule_errors": list(self.rule_errors),
            "groups": [g.to_dict() for g in self.groups],
        }

    def __str__(self) -> str:
        lines = [
            f"{len(self.groups)} groups ({len(self.prunable_groups)} prunable, "
            f"{len(self.pinned_groups)} pinned)"
        ]
        for g in self.groups:
            head = ", ".join(f"{m.name}[{m.dim}]" for m in g.members[:3])
            more = f" +{len(g.members) - 3}" if len(g.members) > 3 else ""
            state = "PINNED: " + g.reasons[0] if g.pinned else f"{g.prunable}/{g.width} prunable"
            lines.append(f"  #{g.id} width {g.width}: {head}{more} — {state}")
        return "\n".join(lines)


def _module_prefixes(model: nn.Module, ignore: Iterable[str | nn.Module] | None) -> list[str]:
    if not ignore:
        return []
    by_obj = {id(m): n for n, m in model.named_modules()}
    names = []
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_obj:
                from prunekit.errors import ConfigError

                raise ConfigError("ignore: a module given is not part of the model")
            names.append(by_obj[id(item)])
        else:
            if item not in dict(model.named_modules()):
                from prunekit.errors import ConfigError

                raise ConfigError(f"ignore: no module named {item!r} in the model")
            names.append(item)
    return names


def _in_module(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _dense_ids(values: np.ndarray) -> np.ndarray:
    """Map equal values to the same id in 0..k-1 (sort based; faster than np.unique here)."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    ids = np.cumsum(np.concatenate([[0], (v[1:] != v[:-1]).astype(np.int64)]))
    out = np.empty(len(values), dtype=np.int64)
    out[order] = ids
    return out


def groups_from_trace(tr: Tracer, ignore_prefixes: list[str] | None = None) -> GroupReport:
    """Connected components of the traced slot graph, as a :class:`GroupReport`."""
    n = tr.n_slots
    if n == 0:
        return GroupReport([], tr.attrs, tr.output_shapes, {}, tr.n_calls, tr.rule_errors)
    if tr.edges:
        a = torch.cat([e[0] for e in tr.edges]).numpy()
        b = torch.cat([e[1] for e in tr.edges]).numpy()
    else:
        a = b = np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    # pins
    pinned = np.zeros(n_comp, dtype=bool)
    comp_reasons: dict[int, list[str]] = {}
    for slots, why in tr.pins:
        cs = np.unique(comp[slots.numpy()])
        pinned[cs] = True
        for c in cs[:64]:
            lst = comp_reasons.setdefault(int(c), [])
            if len(lst) < 4 and why not in lst:
                lst.append(why)
    ranges: list[SlotRange] = tr.ranges
    for prefix in ignore_prefixes or []:
        for r in ranges:
            if _in_module(r.name, prefix):
                cs = np.unique(comp[r.start : r.start + r.size])
                pinned[cs] = True
                for c in cs:
                    comp_reasons.setdefault(int(c), []).insert(0, f"ignored by user ({prefix or '<model>'})")
    # groups: units with the same set of member dims (their "signature") form one group
    n_ranges = len(ranges)
    range_of_slot = np.repeat(np.arange(n_ranges), [r.size for r in ranges])
    key = np.sort(comp.astype(np.int64) * n_ranges + range_of_slot)
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    kc, kr = key // n_ranges, key % n_ranges
    rnd = np.random.default_rng(0).integers(1, 2**62, size=n_ranges, dtype=np.int64).astype(np.uint64)
    sig_hash = np.zeros(n_comp, dtype=np.uint64)
    np.add.at(sig_hash, kc, rnd[kr])
    sig = _dense_ids(sig_hash)
    slot_ids = np.arange(n)
    comp_first = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(comp_first, comp, slot_ids)
    n_groups = int(sig.max()) + 1
    group_first = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(group_first, sig, comp_first)
    rank = np.empty(n_groups, dtype=np.int64)
    rank[np.argsort(group_first, kind="stable")] = np.arange(n_groups)  # groups in trace order
    comp_group = rank[sig]
    by_group = np.lexsort((comp_first, comp_group))  # comps sorted by group, then first appearance
    sizes = np.bincount(comp_group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    unit_of_comp = np.empty(n_comp, dtype=np.int64)
    unit_of_comp[by_group] = np.arange(n_comp) - np.repeat(starts, sizes)
    slot_group = comp_group[comp]
    slot_unit = unit_of_comp[comp]
    members_of: dict[int, list[Member]] = {g: [] for g in range(n_groups)}
    for r in ranges:
        sg = slot_group[r.start : r.start + r.size]
        su = slot_unit[r.start : r.start + r.size]
        if sg[0] == sg.min() == sg.max():  # the common case: the whole dim is in one group
            members_of[int(sg[0])].append(Member(r.name, r.dim, r.size, r.kind, su, np.arange(r.size)))
            continue
        for g in np.unique(sg):
            idx = np.nonzero(sg == g)[0]
            members_of[int(g)].append(Member(r.name, r.dim, r.size, r.kind, su[idx], idx))
    reasons_of: dict[int, list[str]] = {}
    for c, whys in comp_reasons.items():
        lst = reasons_of.setdefault(int(comp_group[c]), [])
        for why in whys:
            if why not in lst and len(lst) < 6:
                lst.append(why)
    notes_of: dict[int, list[str]] = {}
    for slots, text in tr.notes:
        lst = notes_of.setdefault(int(comp_group[comp[int(slots[0])]]), [])
        if text not in lst and len(lst) < 6:
            lst.append(text)
    groups = []
    for g in range(n_groups):
        comps = by_group[starts[g] : starts[g] + sizes[g]]
        groups.append(
            Group(
                g,
                members_of[g],
                int(sizes[g]),
                pinned[comps].copy(),
                reasons_of.get(g, []),
                notes_of.get(g, []),
            )
        )
    return GroupReport(
        groups, tr.attrs, tr.output_shapes, {}, tr.n_calls, tr.rule_errors, slot_unit, slot_group
    )


def build_groups(
    model: nn.Module, example_inputs: ExampleInputs, ignore: Iterable[str | nn.Module] | None = None
) -> GroupReport:
    """Trace ``model`` on ``example_inputs`` and group its coupled channels.

    >>> rep = build_groups(torch.nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 8, 8))
    >>> rep.groups[0].pinned  # the output channels of the model's last layer are its output
    True
    """
    prefixes = _module_prefixes(model, ignore)
    tr = trace(model, example_inputs)
    report = groups_from_trace(tr, prefixes)
    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(dict(model.named_buffers(remove_duplicate=False)))
    report.signature = {m.name: list(state[m.name].shape) for g in report.groups for m in g.members}
    return report
