"""Public structured-pruning API: ``groups``, ``prune``, ``check`` (and ``plan_prune`` for plans only).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 3))
>>> res = prune(net, torch.randn(1, 3, 16, 16), ratio=0.5)
>>> net[0].out_channels, res.params_after < res.params_before
(8, True)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch  # noqa: F401  (the doctests below use it)
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit._validate import eager_module, integer, loss_batches, names, real
from prunekit.criteria import GroupCriterion, ScoreContext, criterion_label, get_criterion
from prunekit.criteria.scores import group_scores
from prunekit.errors import ConfigError
from prunekit.graph.groups import GroupReport, build_groups
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.plan import Plan
from prunekit.structured.apply import apply
from prunekit.structured.oracle import compare_with, reference_outputs
from prunekit.structured.select import build_plan, choose_units
from prunekit.structured.stream import importance as stream_importance
from prunekit.structured.stream import original_outputs, relative_error, stream_scores, verify_mode


def _validate(
    model: Any,
    verb: str,
    ratio: Any,
    scope: str,
    round_to: Any,
    max_ratio: Any,
    ignore: Any = None,
    criterion: Any = None,
    data: Any = None,
    loss_fn: Any = None,
) -> tuple[float, int | None, float, list | None]:
    """Check a structural verb's arguments (:mod:`prunekit._validate`); ``(ratio, round_to, max_ratio,
    ignore)`` as plain Python values."""
    eager_module(model, verb)
    ratio = real(ratio, "ratio", 0.0, 1.0, hi_open=True)
    if scope not in ("local", "global"):
        raise ConfigError(f"scope must be 'local' or 'global', got {scope!r}")
    round_to = None if round_to is None else integer(round_to, "round_to", 1)
    max_ratio = real(max_ratio, "max_ratio", 0.0, 1.0, lo_open=True)
    loss_batches(model, criterion, data, loss_fn)
    return ratio, round_to, max_ratio, names(ignore)


def groups(
    model: nn.Module, example_inputs: ExampleInputs, ignore: Iterable[str | nn.Module] | None = None
) -> GroupReport:
    """Inspect the coupled channel groups of ``model``: members, widths, constraints, pins and why.

    >>> rep = groups(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)), torch.zeros(1, 3))
    >>> [g.width for g in rep.prunable_groups]
    [5]
    """
    return build_groups(eager_module(model, "groups"), example_inputs, names(ignore))


def plan_prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratio: float = 0.5,
    criterion: str | GroupCriterion = "l2",
    scope: str = "local",
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float = 0.9,
    *,
    data: Any = None,
    loss_fn: Any = None,
    stream: bool | str = False,
) -> tuple[Plan, GroupReport]:
    """Decide what to remove without touching ``model``: returns the plan and the group report.

    Data-driven criteria (``"taylor"``, ``"hessian"``, ``"activation"``, ``"apoz"``, ``"wanda"``) read
    ``data`` (an iterable of batches: inputs or ``(inputs, target)``) and ``loss_fn(output, target)``.
    ``stream=True`` also cuts LayerNorm/RMSNorm-ed residual streams, approximately, ranked on ``data``
    (:mod:`prunekit.structured.stream`).

    >>> plan, rep = plan_prune(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)),
    ...                        torch.zeros(1, 3), ratio=0.25)
    >>> plan.removed_units
    2
    """
    ratio, round_to, max_ratio, ignore = _validate(
        model, "plan_prune", ratio, scope, round_to, max_ratio, ignore, criterion, data, loss_fn
    )
    score_fn = get_criterion(criterion)
    how = stream_importance(stream)
    report = build_groups(model, example_inputs, ignore, stream=how is not None)
    ctx = ScoreContext.of(model, example_inputs, data=data, loss_fn=loss_fn)
    exact = [g for g in report.prunable_groups if not g.approximate]
    scores = group_scores(exact, score_fn, ctx)
    if how is not None:
        scores.update(stream_scores(model, report, data, how))
    removed = choose_units(report, scores, float(ratio), scope, round_to, float(max_ratio))
    total = sum(g.width for g in report.prunable_groups)
    meta = {
        "ratio": ratio,
        "criterion": criterion_label(criterion),
        "scope": scope,
        "round_to": round_to,
        "max_ratio": max_ratio,
        "target_units": round(ratio * total),
        "prunable_units": total,
    }
    if how is not None:
        meta["stream"] = how
    return build_plan(report, removed, meta), report


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
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_ratio": self.params_ratio,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_ratio": self.macs_ratio,
            "n_groups": self.n_groups,
            "n_pruned_groups": self.n_pruned_groups,
            "removed_units": self.removed_units,
            "target_units": self.target_units,
            "seconds": dict(self.seconds),
            "target": dict(self.target) if self.target is not None else None,
            "approx_error": self.approx_error,
            "plan": self.plan.to_dict(),
        }


def prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratio: float = 0.5,
    criterion: str | GroupCriterion = "l2",
    scope: str | None = None,
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float = 0.9,
    measure: bool = True,
    target: Any = None,
    *,
    data: Any = None,
    loss_fn: Any = None,
    verify: str | None = None,
    stream: bool | str = False,
) -> PruneResult:
    """Structurally prune ``model`` in place: channels, neurons and heads are physically removed.

    ``ratio`` is the fraction of each group's units to remove (``scope="local"``) or of all prunable units
    ranked together by group-normalised importance (``scope="global"``). ``ignore`` lists module names or
    modules whose channels stay. ``measure=False`` skips the params/MACs counts (two extra forwards; they
    read 0 in the result).
    ``target=prunekit.Target(macs=0.5 | params=0.4 | latency_ms=...)`` replaces ``ratio``: the ratio is
    searched (see :mod:`prunekit.structured.target`); ``PruneResult.target`` gives requested vs achieved.

    What is verified before ``prune`` returns (else :class:`~prunekit.errors.ApplyError`, model rolled
    back bit-exactly): every size attribute of a cut module matches its tensors, and the pruned model runs
    on ``example_inputs`` with the original output shapes. ``verify="exact"`` (the default) also runs the
    masked reference first (the model itself with the removed entries zeroed in place, then put back: no
    copy) and requires the pruned outputs to equal it within the oracle's tolerance, with the same decision
    replay as :func:`check`: one more forward. ``verify="shapes"`` skips that forward (huge models).

    ``stream=True`` (or ``"random"``) also cuts LayerNorm/RMSNorm-ed residual streams, approximately, their
    channels ranked on the calibration batches ``data`` (:mod:`prunekit.structured.stream`). Such a plan
    is verified with ``verify="approximate"`` (its default): the output error against the original model
    is measured and returned as ``PruneResult.approx_error``; ``verify="exact"`` is then a ConfigError.

    ``scope=None`` means ``"local"`` for a ratio and ``"global"`` for a target search (as
    :func:`~prunekit.structured.target.prune_to_target` and ``prunekit prune --target-*``): one unit at a
    time across the whole model reaches a target more exactly than one ratio for every group.
    """
    eager_module(model, "prune")
    plain = verify_mode(verify, Plan())  # the value checked; with a stream cut the mode follows the plan
    if target is not None:  # a prunekit.Target: search the ratio (prunekit/structured/target.py)
        if stream_importance(stream) is not None:
            raise ConfigError("stream=True does not combine with target= yet: give a ratio")
        from prunekit.structured.target import prune_to_target

        return prune_to_target(
            model,
            example_inputs,
            target,
            criterion,
            "global" if scope is None else scope,
            ignore,
            round_to,
            max_ratio,
            data=data,
            loss_fn=loss_fn,
            measure=measure,
            verify=plain,
        )
    t0 = time.perf_counter()
    plan, report = plan_prune(
        model,
        example_inputs,
        ratio,
        criterion,
        "local" if scope is None else scope,
        ignore,
        round_to,
        max_ratio,
        data=data,
        loss_fn=loss_fn,
        stream=stream,
    )
    mode = verify_mode(verify, plan)
    t1 = time.perf_counter()
    params_before = count_params(model).total if measure else 0
    macs_before = count_macs(model, example_inputs) if measure else 0
    t2 = time.perf_counter()
    reference = reference_outputs(model, plan, example_inputs) if mode == "exact" else None
    original = original_outputs(model, example_inputs) if mode == "approximate" else None
    apply(model, plan, example_inputs, reference)
    approx_error = relative_error(model, original, example_inputs) if original is not None else None
    t3 = time.perf_counter()
    params_after = count_params(model).total if measure else 0
    macs_after = count_macs(model, example_inputs) if measure else 0
    t4 = time.perf_counter()
    return PruneResult(
        plan,
        params_before,
        params_after,
        macs_before,
        macs_after,
        len(report.groups),
        len(plan.groups),
        plan.removed_units,
        int(plan.meta.get("target_units", 0)),
        {"plan": t1 - t0, "apply": t3 - t2, "measure": (t2 - t1) + (t4 - t3)},
        approx_error=approx_error,
    )


@dataclass
class CheckReport:
    """Prunability and exactness of pruning a copy of a model (the user's model is untouched)."""

    ok: bool
    max_abs_err: float
    tolerance: float
    shapes_equal: bool
    macs_ratio: float
    params_ratio: float
    n_groups: int
    n_prunable_groups: int
    removed_units: int
    pinned: list[dict[str, Any]]
    rule_errors: list[str]
    plan: Plan
    compared_at: str | None = None  # the submodule whose outputs were compared (None: the model's)
    #: near-tie decisions the pruned run took from the reference (see prunekit.structured.replay)
    replayed: list[str] = field(default_factory=list)
    n_values: int = 0  #: output entries compared; 0 proves nothing (every compared output was empty)
    #: "exact" (``ok``), "approximate" (a stream cut, compared with the original model) or "failed"
    status: str = "failed"
    rel_err: float = 0.0  #: max_abs_err / max|reference|


    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status,
            "rel_err": self.rel_err,
            "compared_at": self.compared_at,
            "max_abs_err": self.max_abs_err,
            "tolerance": self.tolerance,
            "shapes_equal": self.shapes_equal,
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
            "n_groups": self.n_groups,
            "n_prunable_groups": self.n_prunable_groups,
            "removed_units": self.removed_units,
            "pinned": list(self.pinned),
            "rule_errors": list(self.rule_errors),
            "replayed": list(self.replayed),
            "n_values": self.n_values,
        }


def check(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratio: float = 0.5,
    criterion: str | GroupCriterion = "l2",
    scope: str = "local",
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float = 0.9,
    *,
    data: Any = None,
    loss_fn: Any = None,
    compare_at: str | None = None,
    stream: bool | str = False,
) -> CheckReport:
    """Prune a deep copy and compare it with the masked reference (see :mod:`prunekit.structured.oracle`).

    Discrete decisions (top-k, sort, NMS, comparisons) whose inputs agree within the tolerance take the
    reference's answer in the pruned run, so a near-tie flipped by rounding is no error; ``.replayed``
    names those that changed an answer (:mod:`prunekit.structured.replay`). ``compare_at`` names a
    submodule whose outputs are compared instead of the model's. ``stream=True`` (see :func:`prune`): a plan
    that cuts a normalised stream is compared with the ORIGINAL model and reported as
    ``status="approximate"`` with its ``rel_err``; ``ok`` stays False (``ok`` means exact).

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> check(net, torch.randn(2, 3)).ok
    True
    """
    eager_module(model, "check")
    if compare_at is not None:
        try:
            model.get_submodule(compare_at)
        except AttributeError:
            raise ConfigError(f"compare_at: the model has no submodule {compare_at!r}") from None
    plan, report = plan_prune(
        model,
        example_inputs,
        ratio,
        criterion,
        scope,
        ignore,
        round_to,
        max_ratio,
        data=data,
        loss_fn=loss_fn,
        stream=stream,
    )
    approximate = bool(plan.approximate)
    if approximate:
        reference = original_outputs(model, example_inputs, compare_at)
    else:
        reference = reference_outputs(model, plan, example_inputs, compare_at)
    params_before = count_params(model).total
    pruned = copy.deepcopy(model)
    macs_before = count_macs(pruned, example_inputs)
    apply(pruned, plan, example_inputs)
    cmp = compare_with(pruned, reference, example_inputs, compare_at)
    pinned = [
        {
            "id": g.id,
            "width": g.width,
            "members": [f"{m.name}[{m.dim}]" for m in g.members[:4]],
            "reasons": g.reasons,
        }
        for g in report.pinned_groups
    ]
    rel_err = cmp.max_abs_err / max(cmp.ref_max_abs, 1e-30) if cmp.shapes_equal else float("inf")
    if approximate:
        status = "approximate" if cmp.shapes_equal and math.isfinite(rel_err) else "failed"
    else:
        status = "exact" if cmp.ok else "failed"
    return CheckReport(
        cmp.ok and not approximate,
        cmp.max_abs_err,
        cmp.tolerance,
        cmp.shapes_equal,
        count_macs(pruned, example_inputs) / max(1, macs_before),
        count_params(pruned).total / max(1, params_before),
        len(report.groups),
        len(report.prunable_groups),
        plan.removed_units,
        pinned,
        list(report.rule_errors),
        plan,
        compare_at,
        list(reference.decisions.replayed),
        cmp.n_values,
        status,
        rel_err,
    )
