"""The one structured road: trace -> groups -> score -> select -> plan -> [transforms] -> apply -> measure.

Every structural verb goes through these stages, each defined once here:

- :func:`trace`: the model's coupled groups (:func:`prunekit.graph.groups.build_groups`) after the checks
  that need the model (:mod:`prunekit._validate`); ``ignore`` modules become their names.
- :func:`score_groups`: one float64 score per unit of every prunable exact group (the criterion's loop);
  :func:`score` adds the approximate (stream) groups of a ``stream=True`` config, ranked on its data
  (:func:`prunekit.structured.stream.stream_scores`).
- :func:`select`: the units a ratio removes (:func:`~prunekit.structured.select.choose_units`), the
  :class:`~prunekit.plan.Plan` with :func:`plan_meta`, then the plan transforms in order. A transform is
  ``transform(plan, scored) -> plan``: a family's own step on the plan (ultralytics: C2f's ``c`` and the
  widths its yaml can state, :mod:`prunekit.models.ultralytics`).
- A :class:`~prunekit.config.Target` replaces ``select`` by its search
  (:func:`prunekit.structured.target.search`), which measures candidate plans, transforms included.
- :func:`run`: apply (verified against the masked reference with ``verify="exact"``, measured against the
  original model with ``verify="approximate"``: :func:`prunekit.structured.stream.verify_mode`), measure,
  and :func:`make_result`, the one builder of :class:`PruneResult`.

:func:`prunekit.plan_prune` stops after ``select``; :func:`prunekit.check` applies the same plan to a copy
and compares it with the masked reference (:mod:`prunekit.structured.oracle`), which never sees this road.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> scored = traced(net, torch.zeros(1, 3), PruneConfig(ratio=0.25))
>>> plan = select(scored, 0.25)
>>> plan.removed_units, plan.meta["config"]["ratio"]
(2, 0.25)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit._validate import eager_module, loss_batches
from prunekit.config import PruneConfig
from prunekit.criteria import ScoreContext, criterion_label, get_criterion
from prunekit.criteria.scores import group_scores
from prunekit.errors import ConfigError
from prunekit.graph.groups import GroupReport, build_groups
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.plan import Plan
from prunekit.structured import slicegpt
from prunekit.structured.cut import apply
from prunekit.structured.oracle import reference_outputs
from prunekit.structured.select import build_plan, choose_units, kept_whole
from prunekit.structured.stream import importance as stream_importance
from prunekit.structured.stream import original_outputs, relative_error, stream_scores, verify_mode


def deployed_form(model: nn.Module) -> nn.Module:
    """The module a latency target times for ``model``: a tracing view's ``deployed()`` when it has one
    (ultralytics' :class:`~prunekit.models.ultralytics.HeadOutputs` gives the detector, its heads in their
    own export mode), else ``model`` itself. A view shares its layers with that module under the same names,
    so a plan cut into the view's copy has cut the module it returns."""
    deployed = getattr(model, "deployed", None)
    return deployed() if callable(deployed) else model


@dataclass
class Scored:
    """A traced, grouped and scored model: what every plan of one call is chosen from."""

    model: nn.Module  #: the module traced (for ultralytics the view of its kept outputs)
    example_inputs: ExampleInputs
    config: PruneConfig  #: ``ignore`` as module names
    report: GroupReport
    scores: dict[int, torch.Tensor]
    #: group id -> how it was scored when not by the criterion's own rule (:attr:`ScoreContext.notes`)
    notes: dict[int, str] = field(default_factory=dict)

    @property
    def total_units(self) -> int:
        """Units of all prunable groups."""
        return sum(g.width for g in self.report.prunable_groups)


#: a plan transform: ``transform(plan, scored) -> plan`` (see the module docstring)
PlanTransform = Callable[[Plan, Scored], Plan]


def with_names(config: PruneConfig, model: nn.Module) -> PruneConfig:
    """``config`` with every module of ``ignore`` given by its name in ``model`` (plans are JSON)."""
    if all(isinstance(item, str) for item in config.ignore):
        return config
    where = {id(m): name for name, m in model.named_modules()}
    for item in config.ignore:
        if not isinstance(item, str) and id(item) not in where:
            raise ConfigError("ignore: a module given is not part of the model")
    return config.replace(ignore=tuple(i if isinstance(i, str) else where[id(i)] for i in config.ignore))


def trace(model: nn.Module, example_inputs: ExampleInputs, config: PruneConfig, verb: str) -> GroupReport:
    """Check ``model`` for ``verb`` (eager module, no masks, a loss criterion's first batch) and group it."""
    eager_module(model, verb)
    loss_batches(model, config.criterion, config.data, config.loss_fn)
    stream = stream_importance(config.stream) is not None
    return build_groups(model, example_inputs, list(config.ignore) or None, stream=stream)


def score_groups(report: GroupReport, ctx: ScoreContext, criterion: Any = "l2") -> dict[int, torch.Tensor]:
    """One float64 score per unit of every prunable group of ``report`` that is not approximate (a stream
    group, which :func:`score` ranks on calibration data), keyed by group id.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    >>> rep = build_groups(net, torch.zeros(1, 3))
    >>> [s.shape[0] for s in score_groups(rep, ScoreContext.of(net, torch.zeros(1, 3))).values()]
    [4]
    """
    exact = [g for g in report.prunable_groups if not g.approximate]
    return group_scores(exact, get_criterion(criterion), ctx)


def score(
    model: nn.Module,
    example_inputs: ExampleInputs,
    report: GroupReport,
    config: PruneConfig,
    notes: dict[int, str] | None = None,
) -> dict:
    """:func:`score_groups` with ``config``'s criterion, data and loss on ``model``'s current weights, and
    the stream groups' scores of a ``stream`` config; ``notes`` (when given) receives the criterion's
    :attr:`ScoreContext.notes` (groups scored by a fallback, and why)."""
    ctx = ScoreContext.of(model, example_inputs, data=config.data, loss_fn=config.loss_fn)
    scores = score_groups(report, ctx, config.criterion)
    if notes is not None:
        notes.update(ctx.notes)
    how = stream_importance(config.stream)
    if how is not None:
        scores.update(stream_scores(model, report, config.data, how))
    return scores


def traced(
    model: nn.Module, example_inputs: ExampleInputs, config: PruneConfig, verb: str = "prune"
) -> Scored:
    """The trace, groups and score stages: a :class:`Scored` to select plans from."""
    config = with_names(config, model)
    report = trace(model, example_inputs, config, verb)
    notes: dict[int, str] = {}
    scores = score(model, example_inputs, report, config, notes)
    return Scored(model, example_inputs, config, report, scores, notes)


def plan_meta(config: PruneConfig, report: GroupReport, ratio: float | None, **extra: Any) -> dict[str, Any]:
    """A plan's meta: what was asked (``config``, as JSON) and what this plan does; ``extra`` adds or
    overrides keys (``target_units``, ``scope="per-group"``, ``schedule``...).

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 2))
    >>> meta = plan_meta(PruneConfig(), build_groups(net, torch.zeros(1, 3)), 0.25)
    >>> meta["target_units"], meta["prunable_units"], meta["scope"]
    (2, 8, 'local')
    """
    total = sum(g.width for g in report.prunable_groups)
    meta = {
        "ratio": ratio,
        "criterion": criterion_label(config.criterion),
        "scope": config.effective_scope,
        "round_to": config.round_to,
        "max_ratio": config.max_ratio,
        "target_units": None if ratio is None else round(ratio * total),
        "prunable_units": total,
        "config": config.to_dict(),
    }
    if config.target is not None:
        meta["target"] = config.target.to_dict()
    how = stream_importance(config.stream)
    if how is not None:
        meta["stream"] = how
    meta.update(extra)
    return meta


def select(scored: Scored, ratio: float, transforms: Sequence[PlanTransform] = ()) -> Plan:
    """The plan removing ``ratio`` of the units (``scored.config``'s scope and caps), then ``transforms``."""
    cfg = scored.config
    options = (float(ratio), cfg.effective_scope, cfg.round_to, cfg.max_ratio)
    removed = choose_units(scored.report, scored.scores, *options)
    return plan_of_units(scored, removed, *options, transforms)


def plan_of_units(
    scored: Scored,
    removed: dict[int, list[int]],
    ratio: float,
    scope: str,
    round_to: int | None,
    max_ratio: float,
    transforms: Sequence[PlanTransform] = (),
    extra: dict[str, Any] | None = None,
) -> Plan:
    """The plan removing ``removed`` (group id -> unit indices), chosen at ``ratio`` under ``scope``,
    ``round_to`` and ``max_ratio``: its meta says which groups stayed whole and why and which were scored by
    a criterion's fallback (plus the entries of ``extra``); then ``transforms``."""
    whole = kept_whole(scored.report, removed, ratio, scope, round_to, max_ratio)
    scored_by = {str(gid): how for gid, how in sorted(scored.notes.items())}
    extra = ({"scored_by": scored_by} if scored_by else {}) | (extra or {})
    meta = plan_meta(scored.config, scored.report, float(ratio), kept_whole=whole, **extra)
    plan = build_plan(scored.report, removed, meta)
    for transform in transforms:
        plan = transform(plan, scored)
    return plan


@dataclass
class PruneResult:
    """What ``prune`` did: the plan, sizes before/after, and where the time went."""

    plan: Plan
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    n_groups: int
    n_pruned_groups: int
    removed_units: int
    target_units: int
    seconds: dict[str, float] = field(default_factory=dict)
    target: dict[str, Any] | None = None  # requested vs achieved, when pruned to a prunekit.Target
    #: an approximate plan's measured output error against the original model, max|y - y0| / max|y0|
    approx_error: float | None = None

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(1, self.params_before)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(1, self.macs_before)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "plan"}
        out |= {"params_ratio": self.params_ratio, "macs_ratio": self.macs_ratio}
        out["seconds"] = dict(self.seconds)
        out["target"] = dict(self.target) if self.target is not None else None
        return out | {"plan": self.plan.to_dict()}


def make_result(
    plan: Plan,
    report: GroupReport,
    before: tuple[int, int],
    after: tuple[int, int],
    seconds: dict[str, float],
    target: dict[str, Any] | None = None,
    approx_error: float | None = None,
) -> PruneResult:
    """The :class:`PruneResult` of ``plan`` cut from a model of ``report``; ``before``/``after`` are
    ``(params, MACs)``; ``approx_error``: what ``verify="approximate"`` measured."""
    return PruneResult(
        plan,
        int(before[0]),
        int(after[0]),
        int(before[1]),
        int(after[1]),
        len(report.groups),
        len(plan.groups),
        plan.removed_units,
        int(plan.meta.get("target_units") or 0),
        seconds,
        target=target,
        approx_error=approx_error,
    )


def counts(model: nn.Module, view: nn.Module, x: ExampleInputs, measure: bool) -> tuple[int, int]:
    """``(params of model, MACs of view on x)``; ``(0, 0)`` without ``measure``."""
    return (count_params(model).total, count_macs(view, x)) if measure else (0, 0)


def run(
    model: nn.Module,
    example_inputs: ExampleInputs,
    config: PruneConfig,
    *,
    verb: str = "prune",
    view: nn.Module | None = None,
    transforms: Sequence[PlanTransform] = (),
) -> PruneResult:
    """Prune ``model`` in place along the whole road; ``view`` (default: ``model``) is the module traced,
    cut and counted for MACs, sharing ``model``'s layers.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> res = run(net, torch.zeros(1, 3), PruneConfig(ratio=0.5))
    >>> net[0].out_features, sorted(res.seconds)
    (4, ['apply', 'measure', 'plan'])
    """
    view = model if view is None else view
    t0 = time.perf_counter()
    sliced = None
    if stream_importance(config.stream) == "slicegpt":  # the reference is the model before the rotation
        original = original_outputs(view, example_inputs)
        # the rotation leaves every shape as it was: the counts taken below are the dense model's
        sliced = slicegpt.transform(view, config.data)
        transforms = [*transforms, sliced.into_plan]
    try:
        scored = traced(view, example_inputs, config, verb)
        search = None
        if config.target is None:
            plan = select(scored, config.ratio, transforms)
        else:
            from prunekit.structured.target import search_target

            search = search_target(scored, transforms)
            plan = search.plan
        t1 = time.perf_counter()
        before = counts(model, view, example_inputs, config.measure)
        t2 = time.perf_counter()
        mode = verify_mode(config.verify, plan)
        reference = reference_outputs(view, plan, example_inputs) if mode == "exact" else None
        if sliced is None:
            original = original_outputs(view, example_inputs) if mode == "approximate" else None
        apply(view, plan, example_inputs, reference=reference)
    except BaseException:
        if sliced is not None:  # apply restores its own cut; the rotation is undone here
            sliced.undo()
        raise
    if sliced is not None:
        slicegpt.rescale(view, sliced.record)
    approx_error = None if mode != "approximate" else relative_error(view, original, example_inputs)
    t3 = time.perf_counter()
    after = counts(model, view, example_inputs, config.measure)
    info = search.info(view) if search is not None else None
    t4 = time.perf_counter()
    seconds = {"plan": t1 - t0, "apply": t3 - t2, "measure": (t2 - t1) + (t4 - t3)}
    return make_result(plan, scored.report, before, after, seconds, info, approx_error)
