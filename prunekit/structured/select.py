"""Turn unit scores into a plan: how many units each group loses (local or global), and which.

Rules (documented in docs/ARCHITECTURE.md): a group never loses a pinned unit, never more than
``floor(max_ratio * width)`` units, never its last unit, and never the last index of any member dim.
``round_to=N`` makes every pruned group's kept width a multiple of N (rounding the kept width up).
:func:`kept_whole` says, for every group a selection left whole, why (the plan's ``meta["kept_whole"]``).

>>> import torch
>>> from prunekit.graph.groups import build_groups
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
>>> rep = build_groups(net, torch.zeros(1, 2))
>>> scores = {g.id: torch.arange(g.width, dtype=torch.float64) for g in rep.groups}
>>> choose_units(rep, scores, ratio=0.5)[rep.prunable_groups[0].id]
[0, 1, 2, 3]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from prunekit.graph.groups import Group, GroupReport
from prunekit.plan import GroupDecision, Plan


class _Budget:
    """Tracks how many indices each member dim of a group still keeps."""

    def __init__(self, group: Group) -> None:
        n, w = len(group.members), group.width
        offset = np.repeat(np.arange(n) * w, [len(m.units) for m in group.members])
        units = np.concatenate([m.units for m in group.members]) + offset
        self.counts = np.bincount(units, minlength=n * w).reshape(n, w)  # member x unit: indices removed
        self.left = np.array([len(m.index) for m in group.members])
        self.removed: list[int] = []

    def try_remove(self, u: int) -> bool:
        after = self.left - self.counts[:, u]
        if (after < 1).any():
            return False
        self.left = after
        self.removed.append(u)
        return True

    def undo_last(self) -> int:
        u = self.removed.pop()
        self.left = self.left + self.counts[:, u]
        return u


def _cap(group: Group, max_ratio: float) -> int:
    return max(0, min(math.floor(max_ratio * group.width + 1e-9), group.width - 1, group.prunable))


def _round(budget: _Budget, width: int, round_to: int | None) -> None:
    if round_to and round_to > 1:
        while budget.removed and (width - len(budget.removed)) % round_to:
            budget.undo_last()


def choose_units(
    report: GroupReport,
    scores: dict[int, torch.Tensor],
    ratio: float,
    scope: str = "local",
    round_to: int | None = None,
    max_ratio: float = 0.9,
) -> dict[int, list[int]]:
    """Removed unit indices per group id (lowest scores go first)."""
    groups = [g for g in report.groups if not g.pinned]
    budgets = {g.id: _Budget(g) for g in groups}
    if scope == "local":
        for g in groups:
            k = min(round(ratio * g.width), _cap(g, max_ratio))
            if round_to and round_to > 1:
                kept = g.width - k
                kept = min(g.width, math.ceil(kept / round_to) * round_to)
                k = g.width - kept
            order = np.argsort(scores[g.id].numpy(), kind="stable")
            order = order[~g.unit_pinned[order]]
            b = budgets[g.id]
            if (
                k > 0 and (b.counts.max(1) * k <= b.left - 1).all()
            ):  # no member can run out: take the k lowest
                b.removed = [int(u) for u in order[:k]]
                b.left = b.left - b.counts[:, order[:k]].sum(1)
                _round(b, g.width, round_to)
                continue
            for u in order:
                if len(b.removed) >= k:
                    break
                if not g.unit_pinned[u]:
                    b.try_remove(int(u))
            _round(b, g.width, round_to)
    else:
        target = round(ratio * sum(g.width for g in groups))
        caps = {g.id: _cap(g, max_ratio) for g in groups}
        cand = []
        for g in groups:
            norm = mean_normalised(scores[g.id])
            for u in np.nonzero(~g.unit_pinned)[0]:
                cand.append((float(norm[u]), g.id, int(u)))
        cand.sort()
        total = 0
        for _, gid, u in cand:
            if total >= target:
                break
            b = budgets[gid]
            if len(b.removed) < caps[gid] and b.try_remove(u):
                total += 1
        for g in groups:
            _round(budgets[g.id], g.width, round_to)
    return {gid: sorted(b.removed) for gid, b in budgets.items() if b.removed}


def mean_normalised(scores: torch.Tensor) -> torch.Tensor:
    """A group's scores divided by their mean, in float64 (zeros when the mean is not positive): how global
    ranking compares units of groups whose scores have different scales.

    >>> mean_normalised(torch.tensor([1.0, 3.0])).tolist(), mean_normalised(torch.zeros(2)).tolist()
    ([0.5, 1.5], [0.0, 0.0])
    """
    s = scores.to(torch.float64)
    mean = float(s.mean()) if s.numel() else 0.0
    return s / mean if mean > 0 else torch.zeros_like(s)


def kept_whole(
    report: GroupReport,
    removed: dict[int, list[int]],
    ratio: float,
    scope: str = "local",
    round_to: int | None = None,
    max_ratio: float = 0.9,
) -> list[dict]:
    """Every group that ``removed`` (from :func:`choose_units` with these options) leaves whole, with why.

    A pinned group gives the trace's reasons (``"<op> in <module>: <why>"``, ``"ignored by user (name)"``);
    an unpinned one the rule that kept it: ``max_ratio`` allowing no unit of its width, the ratio rounding
    to no unit (local scope), ``round_to`` keeping the whole width, the global ranking (its units scored
    above the cut), or every member dim needing one index left. Each entry: ``id``, ``width``,
    ``members`` (the first four, ``name[dim]``), ``pinned`` and ``reasons``.

    >>> import torch
    >>> from prunekit.graph.groups import build_groups
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> rep = build_groups(net, torch.zeros(1, 2))
    >>> for k in kept_whole(rep, {}, 0.05):
    ...     print(k["members"][0], k["width"], k["reasons"])
    0.weight[1] 2 ['linear in 0: meets a fixed-size tensor']
    0.weight[0] 8 ['ratio 0.05 of 8 units rounds to none']
    2.weight[0] 3 ['output in <model>: model outputs keep their shape']
    """
    out = []
    for g in report.groups:
        if removed.get(g.id):
            continue
        out.append(
            {
                "id": g.id,
                "width": g.width,
                "members": [f"{m.name}[{m.dim}]" for m in g.members[:4]],
                "pinned": g.pinned,
                "reasons": list(g.reasons)
                if g.pinned
                else [_why_whole(g, ratio, scope, round_to, max_ratio)],
            }
        )
    return out


def _why_whole(g: Group, ratio: float, scope: str, round_to: int | None, max_ratio: float) -> str:
    """Why the selection rules removed no unit of the unpinned group ``g``."""
    if math.floor(max_ratio * g.width + 1e-9) < 1:
        return f"max_ratio {max_ratio:g} allows no unit of its {g.width}"
    if _cap(g, max_ratio) < 1:
        return f"only {g.prunable} of its {g.width} units may go, and a group keeps one"
    k = min(round(ratio * g.width), _cap(g, max_ratio)) if scope == "local" else _cap(g, max_ratio)
    if scope == "local" and k < 1:
        return f"ratio {ratio:g} of {g.width} units rounds to none"
    if round_to and round_to > 1 and math.ceil((g.width - k) / round_to) * round_to >= g.width:
        return f"round_to {round_to}: the kept width rounds up to all {g.width}"
    if scope != "local":
        return "global ranking: its units scored above the cut"
    return "each member dim must keep one index: no unit could go"


def build_plan(report: GroupReport, removed: dict[int, list[int]], meta: dict | None = None) -> Plan:
    """Translate removed units into exact cuts and attribute updates."""
    by_id = {g.id: g for g in report.groups}
    # a dim read by several groups gets one part from each: disjoint, each sorted (Member.index is)
    parts: dict[str, dict[int, list[np.ndarray]]] = {}
    decisions = []
    offsets = np.zeros(len(report.groups) + 1, dtype=np.int64)
    for g in report.groups:
        offsets[g.id + 1] = g.width
    offsets = np.cumsum(offsets)
    unit_removed = np.zeros(int(offsets[-1]), dtype=bool)
    for gid, units in sorted(removed.items()):
        g = by_id[gid]
        if not units:
            continue
        if g.unit_pinned[units].any():
            raise ValueError(f"group {gid}: a pinned unit was selected")
        mask = np.zeros(g.width, dtype=bool)
        mask[units] = True
        unit_removed[offsets[gid] + np.asarray(units)] = True
        for m in g.members:
            idx = m.index[mask[m.units]]
            if len(idx):
                parts.setdefault(m.name, {}).setdefault(m.dim, []).append(idx)
        decisions.append(GroupDecision(gid, g.width, list(units), [m.to_dict() for m in g.members]))
    removals = {
        name: {dim: (p[0] if len(p) == 1 else np.sort(np.concatenate(p))).tolist() for dim, p in dims.items()}
        for name, dims in parts.items()
    }
    slot_removed = (
        unit_removed[offsets[report.slot_group] + report.slot_unit] if len(report.slot_unit) else None
    )
    attrs: dict[str, dict[str, list]] = {}
    shared: dict[tuple[str, str], tuple[int, set[int]]] = {}
    for rec in report.attrs:
        s = rec.slots.numpy()
        gone = int(slot_removed[s[s >= 0]].sum()) if slot_removed is not None else 0
        new = (len(s) - gone) // rec.divisor
        if getattr(rec, "shared", False):  # e.g. a model config field: set only if every record agrees
            shared.setdefault((rec.module, rec.attr), (rec.old, set()))[1].add(new)
            continue
        prev = attrs.get(rec.module, {}).get(rec.attr)
        if prev is not None and prev[1] != new:
            raise ValueError(f"{rec.module}.{rec.attr}: inconsistent new values {prev[1]} and {new}")
        if new != rec.old:
            pair = [[rec.old], [new]] if getattr(rec, "shape", False) else [rec.old, new]
            attrs.setdefault(rec.module, {})[rec.attr] = pair
    meta = dict(meta or {})
    approx = sorted({why for gid, units in removed.items() if units for why in by_id[gid].approximate})
    if approx:  # the plan cannot be exact: every check and replay says so (prunekit.structured.stream)
        meta["approximate"] = approx
    for (module, attr), (old, values) in shared.items():
        if len(values) == 1 and old not in values:
            attrs.setdefault(module, {})[attr] = [old, values.pop()]
        elif len(values) > 1:  # per-layer widths a config cannot express: they live in the plan only
            meta.setdefault("per_layer_attrs", {})[f"{module}.{attr}".lstrip(".")] = sorted(values)
    signature = {n: report.signature[n] for n in removals}
    shapes = [None if s is None else list(s) for s in report.output_shapes]
    return Plan(removals, attrs, signature, decisions, shapes, meta)
