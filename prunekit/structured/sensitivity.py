"""Sensitivity scan: how much does the metric drop when ONE group alone loses a ratio of its units?

For every prunable group and every ratio, the group's lowest-scoring units (local selection, same caps as
``prune``) are removed from a working copy and ``eval_fn(copy) -> float`` (higher is better) is measured.
"Removed" means every parameter/buffer entry the cut would take out is set to zero (in eval mode this is the
masked reference that :func:`prunekit.check` proves equal to the physically pruned model), then restored,
so one copy serves the whole scan and the user's model is never touched.

:meth:`SensitivityResult.allocate` turns the curves into per-group ratios meeting a global budget (greedy:
always prune further the group whose next step costs the least metric per removed unit, so the most
sensitive groups are kept); :func:`plan_from_ratios` makes the plan and :func:`prunekit.structured.apply`
cuts it.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
>>> x = torch.randn(8, 4)
>>> sens = sensitivity(net, x, lambda m: -float(m(x).abs().mean()), ratios=[0.5])
>>> [c.removed for c in sens.curves], len(sens.to_dict()["curves"][0]["metrics"])
([[8]], 1)
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._atomic import atomic_write
from prunekit._inputs import ExampleInputs
from prunekit._jsondata import JsonData
from prunekit._keywords import keyword_only
from prunekit.config import PruneConfig
from prunekit.criteria import GroupCriterion, criterion_label
from prunekit.errors import ConfigError, PruneError
from prunekit.graph.groups import Group, GroupReport
from prunekit.measure.profile import evaluate
from prunekit.plan import Plan
from prunekit.progress import track
from prunekit.structured import pipeline
from prunekit.structured.select import build_plan, choose_units


@dataclass
class GroupCurve(JsonData):
    """Metric after removing ``ratios`` of one group (``removed[i]`` units at ``ratios[i]``)."""

    group: int
    name: str
    width: int
    ratios: list[float]
    removed: list[int]
    metrics: list[float]


@dataclass
class SensitivityResult(JsonData):
    """Per-group metric-vs-ratio curves and the unpruned ``baseline`` metric."""

    baseline: float
    ratios: list[float]
    criterion: str
    curves: list[GroupCurve]

    def allocate(self, ratio: float) -> dict[int, float]:
        """Per-group ratios removing ``round(ratio * Σ width)`` units in total, least sensitive groups first.

        Greedy over the scanned points: the group whose next point costs the least metric drop per extra
        removed unit advances; the last step is cut short so the total is exact (if the scanned ratios
        allow it: a group never goes past its largest scanned ratio).

        >>> c = [GroupCurve(0, "a", 10, [0.5], [5], [0.9]), GroupCurve(1, "b", 10, [0.5], [5], [0.2])]
        >>> SensitivityResult(1.0, [0.5], "l2", c).allocate(0.25)
        {0: 0.5, 1: 0.0}
        """
        if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {ratio!r}")
        target = round(float(ratio) * sum(c.width for c in self.curves))
        pos = {c.group: -1 for c in self.curves}  # index into the curve; -1 = not pruned
        done = 0
        out = {c.group: 0.0 for c in self.curves}

        def units(c: GroupCurve, i: int) -> int:
            return 0 if i < 0 else c.removed[i]

        def drop(c: GroupCurve, i: int) -> float:
            return 0.0 if i < 0 else max(0.0, self.baseline - c.metrics[i])

        while done < target:
            best = None
            for c in self.curves:
                i = pos[c.group]
                if i + 1 >= len(c.ratios) or c.removed[i + 1] <= units(c, i):
                    continue
                cost = (drop(c, i + 1) - drop(c, i)) / (c.removed[i + 1] - units(c, i))
                if best is None or cost < best[0]:
                    best = (cost, c)
            if best is None:
                break
            c = best[1]
            i = pos[c.group]
            step = c.removed[i + 1] - units(c, i)
            if done + step > target:  # cut the last step short: exact total
                out[c.group] = (units(c, i) + target - done) / c.width
                done = target
                break
            pos[c.group] = i + 1
            out[c.group] = c.ratios[i + 1]
            done += step
        return out

    def plot(self, path: str | os.PathLike) -> Path:
        """Write the curves as an image (needs matplotlib); one line per group, the baseline dashed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise PruneError("plotting needs matplotlib: pip install matplotlib") from exc
        path = Path(path)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c in self.curves:
            ax.plot([0.0, *c.ratios], [self.baseline, *c.metrics], marker="o", ms=3, label=c.name)
        ax.axhline(self.baseline, ls="--", color="gray", lw=1)
        ax.set_xlabel("ratio of the group's units removed")
        ax.set_ylabel("metric")
        ax.set_title(f"sensitivity ({self.criterion})")
        if len(self.curves) <= 12:
            ax.legend(fontsize=6)
        fmt = path.suffix.lstrip(".") or "png"
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format=fmt))
        finally:
            plt.close(fig)
        return path


def _one_group(report: GroupReport, g: Group) -> GroupReport:
    return dataclasses.replace(report, groups=[g])


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    out = [float(r) for r in ratios]
    if not out or any(not 0.0 < r < 1.0 for r in out):
        raise ConfigError(f"ratios must be a non-empty list of numbers in (0, 1), got {list(ratios)!r}")
    return sorted(set(out))


@keyword_only("ratios", "criterion", "ignore", "max_ratio", "data", "loss_fn")
def sensitivity(
    model: nn.Module,
    example_inputs: ExampleInputs,
    eval_fn: Callable[[nn.Module], float],
    *,
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    criterion: str | GroupCriterion = "l2",
    ignore: Iterable[str | nn.Module] | None = None,
    max_ratio: float = 0.9,
    data: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> SensitivityResult:
    """Scan every prunable group alone at each ratio (module docstring); ``model`` is left untouched.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> sensitivity(net, torch.zeros(1, 4), lambda m: 1.0, ratios=[0.5]).curves[0].metrics
    [1.0]
    """
    ratios = _check_ratios(ratios)
    if not callable(eval_fn):
        raise ConfigError("eval_fn must be a callable eval_fn(model) -> float")
    cfg = PruneConfig(criterion=criterion, ignore=ignore, max_ratio=max_ratio, data=data, loss_fn=loss_fn)
    scored = pipeline.traced(model, example_inputs, cfg, "sensitivity")
    report, scores = scored.report, scored.scores
    with torch.no_grad():
        work = copy.deepcopy(model)
    tensors = dict(work.named_parameters(remove_duplicate=False))
    tensors.update(dict(work.named_buffers(remove_duplicate=False)))
    baseline = float(evaluate(work, eval_fn))
    curves = []
    for g in track(report.prunable_groups, "sensitivity"):
        one = _one_group(report, g)
        names = sorted({m.name for m in g.members})
        saved = {n: tensors[n].detach().clone() for n in names}
        removed, metrics = [], []
        for r in ratios:
            units = choose_units(one, {g.id: scores[g.id]}, r, "local", None, float(max_ratio)).get(g.id, [])
            mask = np.zeros(g.width, dtype=bool)
            mask[units] = True
            with torch.no_grad():
                for m in g.members:
                    idx = m.index[mask[m.units]]
                    if len(idx):
                        t = tensors[m.name]
                        t.index_fill_(m.dim, torch.as_tensor(idx, dtype=torch.long, device=t.device), 0)
            metrics.append(float(evaluate(work, eval_fn)))
            removed.append(len(units))
            with torch.no_grad():
                for n in names:
                    tensors[n].copy_(saved[n])
        first = g.members[0]
        curves.append(GroupCurve(g.id, f"{first.name}[{first.dim}]", g.width, list(ratios), removed, metrics))
    return SensitivityResult(baseline, list(ratios), criterion_label(criterion), curves)


def plan_from_ratios(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratios: dict[int, float],
    criterion: str | GroupCriterion = "l2",
    ignore: Iterable[str | nn.Module] | None = None,
    max_ratio: float = 0.9,
    data: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> Plan:
    """A plan removing ``ratios[group_id]`` of each group's lowest-scoring units (groups not listed stay).

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> from prunekit.graph.groups import build_groups
    >>> gid = build_groups(net, torch.zeros(1, 4)).prunable_groups[0].id
    >>> plan_from_ratios(net, torch.zeros(1, 4), {gid: 0.25}).removed_units
    2
    """
    cfg = PruneConfig(criterion=criterion, ignore=ignore, max_ratio=max_ratio, data=data, loss_fn=loss_fn)
    cfg = pipeline.with_names(cfg, model)
    report = pipeline.trace(model, example_inputs, cfg, "plan_from_ratios")
    by_id = {g.id: g for g in report.prunable_groups}
    for gid, r in ratios.items():
        if gid not in by_id:
            raise ConfigError(f"group {gid} is not a prunable group of this model: {sorted(by_id)}")
        if not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise ConfigError(f"ratio of group {gid} must be in [0, 1), got {r!r}")
    scores = pipeline.score(model, example_inputs, report, cfg)
    removed: dict[int, list[int]] = {}
    for gid, r in ratios.items():
        g = by_id[gid]
        removed.update(
            choose_units(_one_group(report, g), {gid: scores[gid]}, float(r), "local", None, max_ratio)
        )
    meta = pipeline.plan_meta(
        cfg,
        report,
        None,
        scope="per-group",
        group_ratios={str(k): float(v) for k, v in ratios.items()},
        target_units=sum(round(float(r) * by_id[g].width) for g, r in ratios.items()),
    )
    return build_plan(report, removed, meta)
