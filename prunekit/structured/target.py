"""Prune to a target: find the ratio whose pruned model keeps a requested share of MACs or params, or runs
in a requested time.

``Target(macs=0.5)`` keeps at most half of the original MACs, ``Target(params=0.4)`` at most 40 % of the
parameters, ``Target(latency_ms=3.0)`` asks for a median forward of at most 3 ms on this device
(:func:`prunekit.measure.measure_latency`). The groups are traced and scored ONCE; then a bisection runs over
the number of removed units (``scope="global"``: an integer, so the result is exact to one unit) or over
the per-group ratio (``scope="local"``). Every candidate is measured exactly: its plan is applied to a
deep copy and counted with ``torch.utils.flop_counter`` (MACs), :func:`prunekit.measure.count_params`
(params) or timed (latency). The plan found is then applied to the user's model, in place.

A target the model cannot reach under ``max_ratio`` raises :class:`ConfigError` before the model is
touched.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3))
>>> res = prune_to_target(net, torch.randn(1, 3, 16, 16), Target(macs=0.5))
>>> res.target["achieved"] <= 0.5 < res.target["achieved_one_unit_less"]
True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit._validate import real
from prunekit.criteria import GroupCriterion, ScoreContext, get_criterion
from prunekit.criteria.scores import group_scores
from prunekit.errors import ConfigError
from prunekit.graph.groups import GroupReport, build_groups
from prunekit.measure.latency import measure_latency
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.plan import Plan
from prunekit.progress import progress_bar
from prunekit.structured.apply import apply
from prunekit.structured.oracle import reference_outputs
from prunekit.structured.select import build_plan, choose_units


@dataclass(frozen=True)
class Target:
    """What the pruned model must achieve; set exactly one field.

    - ``macs`` / ``params``: fraction of the original kept, in (0, 1] (``macs=0.5``: at most half the MACs).
    - ``latency_ms``: median forward time on this device, in milliseconds (> 0).

    >>> Target(macs=0.5).metric, Target(latency_ms=2.0).value
    ('macs', 2.0)
    """

    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if len(given) != 1:
            raise ConfigError(f"Target needs exactly one of macs, params, latency_ms; got {sorted(given)}")
        ((key, value),) = given.items()
        if key == "latency_ms":
            number = real(value, "Target latency_ms", 0.0, math.inf, lo_open=True, hi_open=True)
        else:  # the fraction kept
            number = real(value, f"Target {key} (the fraction kept)", 0.0, 1.0, lo_open=True)
        object.__setattr__(self, key, number)

    @property
    def metric(self) -> str:
        """``"macs"``, ``"params"`` or ``"latency_ms"``."""
        return next(k for k, v in asdict(self).items() if v is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.metric))

    def to_dict(self) -> dict[str, Any]:
        return {self.metric: self.value}


def score_groups(
    model: nn.Module,
    example_inputs: ExampleInputs,
    report: GroupReport,
    criterion: str | GroupCriterion = "l2",
    ctx: ScoreContext | None = None,
    data: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """One float64 score per unit of every prunable group (as :func:`prunekit.structured.plan_prune`).

    ``data``/``loss_fn`` feed data-driven criteria (taylor, wanda, ...); ``ctx`` overrides all three.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    >>> rep = build_groups(net, torch.zeros(1, 3))
    >>> [s.shape[0] for s in score_groups(net, torch.zeros(1, 3), rep).values()]
    [4]
    """
    ctx = ctx if ctx is not None else ScoreContext.of(model, example_inputs, data=data, loss_fn=loss_fn)
    return group_scores(report.prunable_groups, get_criterion(criterion), ctx)


def _measure(metric: str, model: nn.Module, x: ExampleInputs, runs: int) -> float:
    if metric == "macs":
        return float(count_macs(model, x))
    if metric == "params":
        return float(count_params(model).total)
    return float(measure_latency(model, x, runs=runs, warmup=max(2, runs // 5)).median_ms)


def _counts(model: nn.Module, x: ExampleInputs, measure: bool) -> tuple[int, int]:
    """``(params, MACs)`` of ``model``; ``(0, 0)`` without ``measure``."""
    return (count_params(model).total, count_macs(model, x)) if measure else (0, 0)


def _bisect(f: Callable[[Any], float], lo: Any, hi: Any, goal: float, integer: bool) -> Any:
    """Smallest point in [lo, hi] with f <= goal, assuming f falls with the point and f(hi) <= goal."""
    total = max(1, math.ceil(math.log2(max(hi - lo, 2)))) if integer else 30
    with progress_bar("target search", total) as bar:
        if integer:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                hi, lo = (mid, lo) if f(mid) <= goal else (hi, mid)
                bar.advance()
            return hi
        for _ in range(30):
            mid = (lo + hi) / 2
            hi, lo = (mid, lo) if f(mid) <= goal else (hi, mid)
            bar.advance()
        return hi


def prune_to_target(
    model: nn.Module,
    example_inputs: ExampleInputs,
    target: Target,
    criterion: str | GroupCriterion = "l2",
    scope: str = "global",
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float = 0.9,
    latency_runs: int = 20,
    data: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    measure: bool = True,
    verify: str = "exact",
) -> Any:
    """Prune ``model`` in place to ``target``; returns a :class:`prunekit.structured.PruneResult` whose
    ``target`` dict has ``requested``, ``achieved``, ``before``, ``after``, ``ratio`` and ``evaluations``.

    For MACs/params, ``achieved`` is a fraction of the original and never exceeds ``requested``; with
    ``scope="global"`` one unit fewer would exceed it (``achieved_one_unit_less``). Latency is in ms.
    ``scope`` defaults to ``"global"`` here and in :func:`prunekit.prune` with a target. ``measure=False``
    skips counting the final model's params and MACs (they read 0; the search's own measurements stay).

    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> res = prune_to_target(net, torch.zeros(1, 8), Target(params=0.5))
    >>> res.params_after <= 0.5 * res.params_before
    True
    """
    from prunekit.structured.api import PruneResult, _validate

    if not isinstance(target, Target):
        raise ConfigError(f"target must be a prunekit.Target, got {type(target).__name__}")
    _, round_to, max_ratio, ignore = _validate(
        model, "prune_to_target", 0.0, scope, round_to, max_ratio, ignore, criterion, data, loss_fn
    )
    if not isinstance(latency_runs, int) or latency_runs < 1:
        raise ConfigError(f"latency_runs must be a positive integer, got {latency_runs!r}")
    t0 = time.perf_counter()
    metric = target.metric
    report = build_groups(model, example_inputs, ignore)
    scores = score_groups(model, example_inputs, report, criterion, data=data, loss_fn=loss_fn)
    total = sum(g.width for g in report.prunable_groups)
    with torch.no_grad():
        work = copy.deepcopy(model)
    before = _measure(metric, work, example_inputs, latency_runs)
    goal = target.value if metric == "latency_ms" else target.value * before
    cache: dict[Any, tuple[float, Plan]] = {}

    def plan_at(point: Any) -> Plan:
        ratio = point / max(1, total) if scope == "global" else point
        removed = choose_units(report, scores, ratio, scope, round_to, float(max_ratio))
        meta = {
            "ratio": ratio,
            "criterion": criterion
            if isinstance(criterion, str)
            else getattr(criterion, "__name__", "custom"),
            "scope": scope,
            "round_to": round_to,
            "max_ratio": max_ratio,
            "target_units": round(ratio * total),
            "prunable_units": total,
            "target": target.to_dict(),
        }
        return build_plan(report, removed, meta)

    def f(point: Any) -> float:
        if point not in cache:
            plan = plan_at(point)
            pruned = copy.deepcopy(work)
            apply(pruned, plan, example_inputs)
            cache[point] = (_measure(metric, pruned, example_inputs, latency_runs), plan)
        return cache[point][0]

    integer = scope == "global"
    hi = total if integer else 1.0
    if f(hi) > goal:
        shown = f"{f(hi):.4g} ms" if metric == "latency_ms" else f"{f(hi) / before:.4f} of the original"
        raise ConfigError(
            f"target {metric}={target.value} is unreachable: pruning as far as max_ratio={max_ratio} allows "
            f"gives {shown}; raise max_ratio or relax the target"
        )
    point = 0 if f(0 if integer else 0.0) <= goal else _bisect(f, 0 if integer else 0.0, hi, goal, integer)
    plan = cache[point][1]
    t1 = time.perf_counter()
    params_before, macs_before = _counts(model, example_inputs, measure)
    reference = reference_outputs(model, plan, example_inputs) if verify == "exact" else None
    apply(model, plan, example_inputs, reference)
    params_after, macs_after = _counts(model, example_inputs, measure)
    after = (
        _measure(metric, model, example_inputs, latency_runs) if metric == "latency_ms" else cache[point][0]
    )
    scale = 1.0 if metric == "latency_ms" else before
    info = {
        "metric": metric,
        "requested": target.value,
        "achieved": after / scale,
        "before": before,
        "after": after,
        "met": after <= goal,
        "scope": scope,
        "ratio": plan.meta["ratio"],
        "evaluations": len(cache),
    }
    if integer and point > 0 and metric != "latency_ms":
        info["achieved_one_unit_less"] = f(point - 1) / scale
    t2 = time.perf_counter()
    return PruneResult(
        plan,
        int(params_before),
        int(params_after),
        int(macs_before),
        int(macs_after),
        len(report.groups),
        len(plan.groups),
        plan.removed_units,
        int(plan.meta["target_units"]),
        {"search": t1 - t0, "apply": t2 - t1},
        target=info,
    )


def target_from_options(
    macs: float | None = None, params: float | None = None, latency_ms: float | None = None
) -> Target | None:
    """The :class:`Target` given by CLI options ``--target-macs/--target-params/--target-latency-ms``
    (None when none is set; ConfigError when several are).

    >>> target_from_options(macs=0.5), target_from_options()
    (Target(macs=0.5, params=None, latency_ms=None), None)
    """
    given = {
        k: v for k, v in {"macs": macs, "params": params, "latency_ms": latency_ms}.items() if v is not None
    }
    if not given:
        return None
    if len(given) > 1:
        flags = ", ".join(f"--target-{k.replace('_', '-')}" for k in given)
        raise ConfigError(f"give one target option, got {flags}")
    return Target(**given)
