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
from prunekit._validate import names
from prunekit.graph.shape_attrs import record_shape_attrs
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
    #: why removing a unit changes the outputs beyond the oracle's tolerance (empty: exact; stream mode)
    approximate: list[str] = field(default_factory=list)

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
            "approximate": list(self.approximate),
        }


@dataclass
class GroupReport:
    """All groups of a model, plus what the planner needs to turn unit choices into cuts."""

    groups: list[Group]
    attrs: list[Any] = field(repr=False, default_factory=list)
    output_shapes: list[list[int] | None] = field(default_factory=list)
    signature: dict[str, list[int]] = field(default_factory=dict)
    n_calls: int = 0
    rule_errors: list[str] = field(default_factory=list)
    slot_unit: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    slot_group: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: stream mode: slots of the normalised dim of every norm site, in call order (``Tracer.stream_sites``)
    stream_sites: list[torch.Tensor] = field(repr=False, default_factory=list)

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
    ignore = names(ignore)  # one name is one module, not its characters
    if not ignore:
        return []
    by_obj = {id(m): n for n, m in model.named_modules()}
    prefixes = []
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_obj:
                from prunekit.errors import ConfigError

                raise ConfigError("ignore: a module given is not part of the model")
            prefixes.append(by_obj[id(item)])
        else:
            if item not in dict(model.named_modules()):
                from prunekit.errors import ConfigError

                raise ConfigError(f"ignore: no module named {item!r} in the model")
            prefixes.append(item)
    return prefixes


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


def _links_and_pins(tr: Tracer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All links and pins of the trace, vectorised: (edge ends a, b) and (pinned slot, reason id).

    A link pairs slots position by position: two different slots make an edge; a slot facing 'no slot'
    (-1) is pinned with the link's reason; two -1s or a slot facing itself mean nothing.
    """
    empty = np.zeros(0, dtype=np.int64)
    if tr.links:
        a = torch.cat([lk[0] for lk in tr.links]).numpy()
        b = torch.cat([lk[1] for lk in tr.links]).numpy()
        why = np.repeat([lk[2] for lk in tr.links], [len(lk[0]) for lk in tr.links])
    else:
        a = b = why = empty
    ga, gb = a >= 0, b >= 0
    both = ga & gb & (a != b)
    one = ga ^ gb
    link_pins = np.where(ga, a, b)[one]
    if tr.pins:
        p = torch.cat([pn[0] for pn in tr.pins]).numpy()
        p_why = np.repeat([pn[1] for pn in tr.pins], [len(pn[0]) for pn in tr.pins])
        keep = p >= 0
        p, p_why = p[keep], p_why[keep]
    else:
        p = p_why = empty
    return a[both], b[both], np.concatenate([p, link_pins]), np.concatenate([p_why, why[one]])


def _first_reasons(group: np.ndarray, reason: np.ndarray, texts: list[str], most: int = 6) -> dict:
    """group id -> up to ``most`` distinct reason texts, by reason id (the order they were first recorded)."""
    if not len(group):
        return {}
    key = np.unique(group.astype(np.int64) * len(texts) + reason)
    out: dict[int, list[str]] = {}
    for g, r in zip((key // len(texts)).tolist(), (key % len(texts)).tolist(), strict=True):
        lst = out.setdefault(g, [])
        if len(lst) < most:
            lst.append(texts[r])
    return out


def _with_user_pins(
    ranges: list[SlotRange], prefixes: list[str], pin_slots: np.ndarray, pin_reason: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pins plus every slot of each range under an ignored module prefix, reason id = the prefix's index.

    The user's reasons come first in the reason table, so the trace's reason ids are shifted past them.
    """
    pin_reason = pin_reason + len(prefixes)
    for i, prefix in enumerate(prefixes):
        for r in ranges:
            if _in_module(r.name, prefix):
                pin_slots = np.concatenate([np.arange(r.start, r.start + r.size), pin_slots])
                pin_reason = np.concatenate([np.full(r.size, i), pin_reason])
    return pin_slots, pin_reason


def _group_of_components(
    comp: np.ndarray, n_comp: int, range_of_slot: np.ndarray, n_ranges: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Group id of each connected component, and each component's first slot; with the number of groups.

    Components with the same set of member ranges (their "signature", hashed) form one group; groups are
    numbered in trace order (by the first slot of any of their components).
    """
    n = len(comp)
    key = np.sort(comp.astype(np.int64) * n_ranges + range_of_slot)
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    kc, kr = key // n_ranges, key % n_ranges
    rnd = np.random.default_rng(0).integers(1, 2**62, size=n_ranges, dtype=np.int64).astype(np.uint64)
    sig_hash = np.zeros(n_comp, dtype=np.uint64)
    np.add.at(sig_hash, kc, rnd[kr])
    sig = _dense_ids(sig_hash)
    comp_first = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(comp_first, comp, np.arange(n))
    n_groups = int(sig.max()) + 1
    group_first = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(group_first, sig, comp_first)
    rank = np.empty(n_groups, dtype=np.int64)
    rank[np.argsort(group_first, kind="stable")] = np.arange(n_groups)
    return rank[sig], comp_first, n_groups


def _members(
    ranges: list[SlotRange],
    range_of_slot: np.ndarray,
    slot_group: np.ndarray,
    slot_unit: np.ndarray,
    n_groups: int,
) -> dict[int, list[Member]]:
    """Group id -> its members: one :class:`Member` per (range, group), holding the unit of each slot.

    The slots are sorted by that pair (stable: slot order kept inside a segment; slots are numbered range
    after range, so the input is nearly sorted already).
    """
    members_of: dict[int, list[Member]] = {g: [] for g in range(n_groups)}
    seg = range_of_slot * n_groups + slot_group
    order = np.argsort(seg, kind="stable")
    seg = seg[order]
    starts_at = np.flatnonzero(np.concatenate([[True], seg[1:] != seg[:-1]])).tolist()
    for s, e in zip(starts_at, [*starts_at[1:], len(seg)], strict=True):
        sl = order[s:e]
        r = ranges[int(range_of_slot[sl[0]])]
        index = np.arange(r.size) if e - s == r.size else sl - r.start
        members_of[int(slot_group[sl[0]])].append(Member(r.name, r.dim, r.size, r.kind, slot_unit[sl], index))
    return members_of


def _notes_and_approx(
    tr: Tracer, slot_group: np.ndarray
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Group id -> its distinct notes (up to 6; a note goes to its first slot's group), and approximations."""
    notes_of: dict[int, list[str]] = {}
    for slots, text in tr.notes:
        lst = notes_of.setdefault(int(slot_group[int(slots[0])]), [])
        if text not in lst and len(lst) < 6:
            lst.append(text)
    approx_of: dict[int, list[str]] = {}
    for slots, text in tr.approx:
        for g in np.unique(slot_group[slots.numpy()]).tolist():
            lst = approx_of.setdefault(g, [])
            if text not in lst:
                lst.append(text)
    return notes_of, approx_of


def groups_from_trace(tr: Tracer, ignore_prefixes: list[str] | None = None) -> GroupReport:
    """Connected components of the traced slot graph, as a :class:`GroupReport`.

    Slots joined by links form components (one prunable unit each); components with the same member ranges
    form a group; a group's unit is pinned when any of its slots is (by a rule or an ignored module).
    """
    n = tr.n_slots
    if n == 0:
        return GroupReport([], tr.attrs, tr.output_shapes, {}, tr.n_calls, tr.rule_errors)
    prefixes = ignore_prefixes or []
    a, b, pin_slots, pin_reason = _links_and_pins(tr)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    ranges: list[SlotRange] = tr.ranges
    user = [f"ignored by user ({prefix or '<model>'})" for prefix in prefixes]
    reason_texts = user + tr.reasons  # reasons sort by id: the user's choices first, then trace order
    pin_slots, pin_reason = _with_user_pins(ranges, prefixes, pin_slots, pin_reason)
    pinned = np.zeros(n_comp, dtype=bool)
    pinned[comp[pin_slots]] = True
    range_of_slot = np.repeat(np.arange(len(ranges)), [r.size for r in ranges])
    comp_group, comp_first, n_groups = _group_of_components(comp, n_comp, range_of_slot, len(ranges))
    by_group = np.lexsort((comp_first, comp_group))  # comps sorted by group, then first appearance
    sizes = np.bincount(comp_group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    unit_of_comp = np.empty(n_comp, dtype=np.int64)
    unit_of_comp[by_group] = np.arange(n_comp) - np.repeat(starts, sizes)
    slot_group = comp_group[comp]
    slot_unit = unit_of_comp[comp]
    members_of = _members(ranges, range_of_slot, slot_group, slot_unit, n_groups)
    reasons_of = _first_reasons(slot_group[pin_slots], pin_reason, reason_texts)
    notes_of, approx_of = _notes_and_approx(tr, slot_group)
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
                approx_of.get(g, []),
            )
        )
    signature = {m.name: tr.shapes[m.name] for g in groups for m in g.members}
    return GroupReport(
        groups,
        tr.attrs,
        tr.output_shapes,
        signature,
        tr.n_calls,
        tr.rule_errors,
        slot_unit,
        slot_group,
        tr.stream_sites,
    )


def build_groups(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ignore: Iterable[str | nn.Module] | None = None,
    stream: bool = False,
) -> GroupReport:
    """Trace ``model`` on ``example_inputs`` and group its coupled channels.

    ``stream=True``: norms over channels are cut approximately, not pinned (:mod:`prunekit.graph.stream`).

    >>> rep = build_groups(torch.nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 8, 8))
    >>> rep.groups[0].pinned  # the output channels of the model's last layer are its output
    True
    """
    prefixes = _module_prefixes(model, ignore)
    tr = trace(model, example_inputs, stream)
    record_shape_attrs(tr)
    return groups_from_trace(tr, prefixes)
