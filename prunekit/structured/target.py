"""Prune to a target: find the ratio whose pruned model keeps a requested share of MACs or params, or runs
in a requested time.

``Target(macs=0.5)`` keeps at most half of the original MACs, ``Target(params=0.4)`` at most 40 % of the
parameters, ``Target(latency_ms=3.0)`` asks for a median forward of at most 3 ms on this device
(:func:`prunekit.measure.measure_latency`, with the target's ``threads``, 1 unless set),
``Target(speedup=2.0)`` for half the dense model's median time. With ``runtime=`` a timed target is measured
on that deployment runtime instead, by the latency-table search of
:mod:`prunekit.structured.runtime_target`; everything below is the search without one.

The groups are traced and scored ONCE; then a bisection runs over the number of removed units
(``scope="global"``: an integer, so the result is exact to one unit) or over the per-group ratio
(``scope="local"``). Every candidate is measured exactly: its plan is applied to a
deep copy and counted with ``torch.utils.flop_counter`` (MACs), :func:`prunekit.measure.count_params`
(params) or timed (latency); the plan transforms of the road (a model family's own step,
:mod:`prunekit.structured.pipeline`) run on every candidate before it is measured. The plan found is then
applied to the user's model, in place.

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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.config import PruneConfig, Target, resolve
from prunekit.criteria import GroupCriterion
from prunekit.errors import ConfigError
from prunekit.measure.latency import measure_latency
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.plan import Plan
from prunekit.progress import progress_bar
from prunekit.structured.cut import apply
from prunekit.structured.pipeline import PlanTransform, PruneResult, Scored, deployed_form, run, select

__all__ = ["Target", "TargetSearch", "prune_to_target", "search_target", "target_from_options"]


def _measure(target: Target, model: nn.Module, x: ExampleInputs, runs: int) -> float:
    if target.metric == "macs":
        return float(count_macs(model, x))
    if target.metric == "params":
        return float(count_params(model).total)
    stats = measure_latency(
        deployed_form(model), x, runs=runs, warmup=max(2, runs // 5), threads=target.threads
    )
    return float(stats.median_ms)


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


class TargetSearch:
    """The search of :func:`search_target`: the ``plan`` found and the metric measured along the way (a
    timed target's metric is the median ms, in eager PyTorch with the target's ``threads``)."""

    def __init__(self, scored: Scored, transforms: Sequence[PlanTransform]) -> None:
        self.scored, self.transforms = scored, transforms
        self.target: Target = scored.config.target
        self.integer = scored.config.effective_scope == "global"
        with torch.no_grad():
            self.work = copy.deepcopy(scored.model)
        self.before = self.measure(self.work)
        if self.target.metric == "speedup":
            self.goal = self.before / self.target.value
        else:
            self.goal = self.target.value * (1.0 if self.target.timed else self.before)
        self.cache: dict[Any, tuple[float, Plan]] = {}
        self.point = self._search()
        self.plan = self.cache[self.point][1]

    def measure(self, model: nn.Module) -> float:
        runs, x = self.scored.config.latency_runs, self.scored.example_inputs
        return _measure(self.target, model, x, runs)

    def at(self, point: Any) -> float:
        """The metric of the plan at ``point`` (units removed, global; a per-group ratio, local)."""
        if point not in self.cache:
            ratio = point / max(1, self.scored.total_units) if self.integer else point
            plan = select(self.scored, ratio, self.transforms)
            pruned = copy.deepcopy(self.work)
            apply(pruned, plan, self.scored.example_inputs)
            self.cache[point] = (self.measure(pruned), plan)
        return self.cache[point][0]

    def _search(self) -> Any:
        lo, hi = (0, self.scored.total_units) if self.integer else (0.0, 1.0)
        if self.at(hi) > self.goal:
            t, cfg = self.target, self.scored.config
            got = self.at(hi)
            kept = f"{got / self.before:.4f} of the original"
            shown = f"{got:.4g} ms (dense {self.before:.4g} ms)" if t.timed else kept
            raise ConfigError(
                f"target {t.metric}={t.value} is unreachable: pruning as far as max_ratio={cfg.max_ratio} "
                f"allows gives {shown}; raise max_ratio or relax the target"
            )
        return lo if self.at(lo) <= self.goal else _bisect(self.at, lo, hi, self.goal, self.integer)

    def info(self, model: nn.Module) -> dict[str, Any]:
        """Requested vs achieved, ``model`` being the pruned model (re-timed for a timed target)."""
        t = self.target
        after = self.measure(model) if t.timed else self.cache[self.point][0]
        scale = 1.0 if t.timed else self.before
        achieved = self.before / after if t.metric == "speedup" else after / scale
        info = {
            "metric": t.metric,
            "requested": t.value,
            "achieved": achieved,
            "before": self.before,
            "after": after,
            "met": after <= self.goal,
            "scope": self.scored.config.effective_scope,
            "ratio": self.plan.meta["ratio"],
            "evaluations": len(self.cache),
        }
        if t.timed:
            info |= {
                "requested_ms": self.goal,
                "reached_ms": after,
                "requested_speedup": self.before / self.goal,
                "reached_speedup": self.before / after,
                "runtime": "pytorch",
                "threads": t.threads,
            }
        if self.integer and self.point > 0 and not t.timed:
            info["achieved_one_unit_less"] = self.at(self.point - 1) / scale
        return info


def search_target(scored: Scored, transforms: Sequence[PlanTransform] = ()) -> Any:
    """The target-search stage of :func:`prunekit.structured.pipeline.run`: the plan meeting
    ``scored.config.target`` (module docstring); ``scored.model`` is not changed. A target with a
    ``runtime`` is searched on that runtime
    (:class:`~prunekit.structured.runtime_target.RuntimeTargetSearch`), any other by :class:`TargetSearch`."""
    if scored.config.target is not None and scored.config.target.runtime is not None:
        from prunekit.structured.runtime_target import RuntimeTargetSearch

        return RuntimeTargetSearch(scored, transforms)
    return TargetSearch(scored, transforms)


def prune_to_target(
    model: nn.Module,
    example_inputs: ExampleInputs,
    target: Target | None = None,
    config: PruneConfig | None = None,
    *,
    criterion: str | GroupCriterion | None = None,
    scope: str | None = None,
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float | None = None,
    latency_runs: int | None = None,
    data: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    measure: bool | None = None,
    verify: str | None = None,
) -> PruneResult:
    """Prune ``model`` in place to ``target``; returns a :class:`prunekit.structured.PruneResult` whose
    ``target`` dict has ``requested``, ``achieved``, ``before``, ``after``, ``ratio`` and ``evaluations``.

    :func:`prunekit.prune` with a target: the options are those of :class:`prunekit.PruneConfig` (as
    keywords or ``config``; the target may also be the config's). For MACs/params, ``achieved`` is a fraction
    of the original and never exceeds ``requested``; with ``scope="global"`` (the default with a target) one
    unit fewer would exceed it (``achieved_one_unit_less``). Latency is in ms. ``measure=False`` skips
    counting the final model's params and MACs (they read 0; the search's own measurements stay).

    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> res = prune_to_target(net, torch.zeros(1, 8), Target(params=0.5))
    >>> res.params_after <= 0.5 * res.params_before
    True
    """
    if target is not None and not isinstance(target, Target):
        raise ConfigError(f"target must be a prunekit.Target, got {type(target).__name__}")
    options = {"criterion": criterion, "scope": scope, "ignore": ignore, "round_to": round_to}
    options |= {"max_ratio": max_ratio, "latency_runs": latency_runs, "data": data, "loss_fn": loss_fn}
    options |= {"measure": measure, "verify": verify}
    cfg = resolve(PruneConfig, config, "prune_to_target", (), target=target, **options)
    if cfg.target is None:
        raise ConfigError(
            "prune_to_target needs a target: prunekit.Target(macs= | params= | latency_ms= | speedup=)"
        )
    return run(model, example_inputs, cfg, verb="prune_to_target")


def target_from_options(
    macs: float | None = None,
    params: float | None = None,
    latency_ms: float | None = None,
    speedup: float | None = None,
    runtime: str | None = None,
    threads: int | None = None,
) -> Target | None:
    """The :class:`Target` given by CLI options ``--target-macs/--target-params/--target-latency-ms/
    --target-speedup`` with ``--runtime``/``--threads`` (None when no target is set; ConfigError when several
    are, or when ``--runtime``/``--threads`` come without a timed target).

    >>> target_from_options(macs=0.5), target_from_options()
    (Target(macs=0.5, params=None, latency_ms=None, speedup=None, runtime=None, threads=1), None)
    """
    values = {"macs": macs, "params": params, "latency_ms": latency_ms, "speedup": speedup}
    given = {k: v for k, v in values.items() if v is not None}
    if len(given) > 1:
        flags = ", ".join(f"--target-{k.replace('_', '-')}" for k in given)
        raise ConfigError(f"give one target option, got {flags}")
    timed = bool(given) and next(iter(given)) in ("latency_ms", "speedup")
    for name, value in (("--runtime", runtime), ("--threads", threads)):
        if value is not None and not timed:
            with_what = f"--target-{next(iter(given)).replace('_', '-')}" if given else "no target"
            raise ConfigError(
                f"{name} times a --target-latency-ms or --target-speedup search; it cannot go with "
                f"{with_what}"
            )
    if not given:
        return None
    return Target(**given, runtime=runtime, threads=1 if threads is None else threads)
