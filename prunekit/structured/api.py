"""Public structured-pruning API: ``groups``, ``prune``, ``check`` (and ``plan_prune`` for plans only),
each a thin layer over :mod:`prunekit.structured.pipeline` taking a :class:`prunekit.PruneConfig` or its
options as keywords.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 3))
>>> res = prune(net, torch.randn(1, 3, 16, 16), ratio=0.5)
>>> net[0].out_channels, res.params_after < res.params_before
(8, True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch  # noqa: F401  (the doctests below use it)
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit._keywords import keyword_only
from prunekit._validate import eager_module, names
from prunekit.config import PruneConfig, Target, resolve
from prunekit.criteria import GroupCriterion
from prunekit.errors import ConfigError
from prunekit.graph.groups import Group, GroupReport, build_groups
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.plan import Plan
from prunekit.progress import progress_bar
from prunekit.structured import pipeline, slicegpt
from prunekit.structured.cut import apply
from prunekit.structured.oracle import Comparison, Reference, compare_with, reference_outputs
from prunekit.structured.pipeline import PruneResult
from prunekit.structured.stream import importance as stream_importance
from prunekit.structured.stream import original_outputs

__all__ = ["CheckReport", "PruneResult", "check", "groups", "plan_prune", "prune"]


@keyword_only("ignore")
def groups(
    model: nn.Module, example_inputs: ExampleInputs, *, ignore: Iterable[str | nn.Module] | None = None
) -> GroupReport:
    """Inspect the coupled channel groups of ``model``: members, widths, constraints, pins and why.

    >>> rep = groups(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)), torch.zeros(1, 3))
    >>> [g.width for g in rep.prunable_groups]
    [5]
    """
    return build_groups(eager_module(model, "groups"), example_inputs, names(ignore))


#: the options the structural verbs took positionally before they took a config (deprecated form)
LEGACY_ORDER = ("ratio", "criterion", "scope", "ignore", "round_to", "max_ratio")


def _ratio_config(verb: str, config: Any, legacy: tuple, **options: Any) -> PruneConfig:
    """The config of a verb that prunes by ratio only (``target`` belongs to :func:`prune`)."""
    cfg = resolve(PruneConfig, config, verb, LEGACY_ORDER, legacy=legacy, stacklevel=4, **options)
    if cfg.target is not None:
        raise ConfigError(f"{verb} prunes by ratio; a target is searched by prunekit.prune (drop target)")
    return cfg


def plan_prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    config: PruneConfig | None = None,
    *legacy: Any,
    ratio: float | None = None,
    criterion: str | GroupCriterion | None = None,
    scope: str | None = None,
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float | None = None,
    data: Any = None,
    loss_fn: Any = None,
    stream: bool | str | None = None,
) -> tuple[Plan, GroupReport]:
    """Decide what to remove without touching ``model``: returns the plan and the group report.

    The options are those of :class:`prunekit.PruneConfig`, given as ``config`` or as keywords (a keyword
    left at ``None`` takes the config's default). Data-driven criteria (``"taylor"``, ``"hessian"``,
    ``"activation"``, ``"apoz"``, ``"wanda"``) read ``data`` (an iterable of batches: inputs or
    ``(inputs, target)``) and ``loss_fn(output, target)``. A target is searched by :func:`prune` only.
    ``stream=True`` also cuts LayerNorm/RMSNorm-ed residual streams, approximately, ranked on ``data``
    (:mod:`prunekit.structured.stream`).

    >>> plan, rep = plan_prune(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)),
    ...                        torch.zeros(1, 3), PruneConfig(ratio=0.25))
    >>> plan.removed_units
    2
    """
    cfg = _ratio_config(
        "plan_prune", config, legacy, ratio=ratio, criterion=criterion, scope=scope, ignore=ignore,
        round_to=round_to, max_ratio=max_ratio, data=data, loss_fn=loss_fn, stream=stream,
    )  # fmt: skip
    if stream_importance(cfg.stream) == "slicegpt":
        raise ConfigError(
            "plan_prune leaves the model untouched, but stream='slicegpt' rotates its weights before the "
            "cut: use prune (or check, on a copy)"
        )
    scored = pipeline.traced(model, example_inputs, cfg, "plan_prune")
    return pipeline.select(scored, cfg.ratio), scored.report


def prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    config: PruneConfig | None = None,
    *legacy: Any,
    ratio: float | None = None,
    criterion: str | GroupCriterion | None = None,
    scope: str | None = None,
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float | None = None,
    measure: bool | None = None,
    target: Target | None = None,
    data: Any = None,
    loss_fn: Any = None,
    verify: str | None = None,
    stream: bool | str | None = None,
) -> PruneResult:
    """Structurally prune ``model`` in place: channels, neurons and heads are physically removed.

    The options are those of :class:`prunekit.PruneConfig`, given as ``config`` (``prune(model, x,
    PruneConfig(ratio=0.3))``) or as keywords (``prune(model, x, ratio=0.3)``), not both with different
    values. ``ratio`` is the fraction of each group's units to remove (``scope="local"``) or of all
    prunable units ranked together by group-normalised importance (``scope="global"``). ``ignore`` lists
    module names or modules whose channels stay. ``measure=False`` skips the params/MACs counts (two extra
    forwards; they read 0 in the result).
    ``target=prunekit.Target(macs=0.5 | params=0.4 | latency_ms=... | speedup=...)`` replaces ``ratio``:
    the ratio is searched (see :mod:`prunekit.structured.target`; with ``runtime="onnxruntime"`` etc. a
    timed target is measured on that runtime, :mod:`prunekit.structured.runtime_target`);
    ``PruneResult.target`` gives requested vs achieved.
    The scope defaults to ``"local"`` for a ratio and ``"global"`` for a target search
    (:attr:`prunekit.PruneConfig.effective_scope`). The stages are those of
    :mod:`prunekit.structured.pipeline`.

    What is verified before ``prune`` returns (else :class:`~prunekit.errors.ApplyError`, model rolled
    back bit-exactly): every size attribute of a cut module matches its tensors, and the pruned model runs
    on ``example_inputs`` with the original output shapes. ``verify="exact"`` (the default) also runs the
    masked reference first (the model itself with the removed entries zeroed in place, then put back: no
    copy) and requires the pruned outputs to equal it within the oracle's tolerance, with the same decision
    replay as :func:`check`: one more forward. ``verify="shapes"`` skips that forward (huge models).

    ``stream=True`` (or ``"random"``) also cuts LayerNorm/RMSNorm-ed residual streams, approximately, their
    channels ranked on the calibration batches ``data`` (:mod:`prunekit.structured.stream`). Such a plan
    is verified with ``verify="approximate"`` (what ``verify=None``, the default, means for it): the output
    error against the original model is measured and returned as ``PruneResult.approx_error``;
    ``verify="exact"`` is then a ConfigError (model untouched).

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> prune(net, torch.zeros(1, 3), PruneConfig(ratio=0.25, measure=False)).removed_units
    2
    """
    cfg = resolve(
        PruneConfig, config, "prune", (*LEGACY_ORDER, "measure", "target"), legacy=legacy, ratio=ratio,
        criterion=criterion, scope=scope, ignore=ignore,
        round_to=round_to, max_ratio=max_ratio, measure=measure, target=target, data=data, loss_fn=loss_fn,
        verify=verify, stream=stream,
    )  # fmt: skip
    return pipeline.run(model, example_inputs, cfg)


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
    rel_err: float = 0.0  #: largest max|pruned - reference| / max|reference| over the outputs
    #: every compared output's largest magnitude is below oracle.TINY (an untrained model?): judge with care
    tiny_outputs: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status,
            "rel_err": self.rel_err,
            "tiny_outputs": self.tiny_outputs,
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
            "kept_whole": list(self.plan.meta.get("kept_whole", [])),
            "rule_errors": list(self.rule_errors),
            "replayed": list(self.replayed),
            "n_values": self.n_values,
        }


def _check_compare_at(model: nn.Module, compare_at: str | None) -> None:
    """Raise :class:`~prunekit.errors.ConfigError` when ``compare_at`` names no submodule of ``model``."""
    if compare_at is None:
        return
    try:
        model.get_submodule(compare_at)
    except AttributeError:
        raise ConfigError(f"compare_at: the model has no submodule {compare_at!r}") from None


def _reference(
    model: nn.Module, plan: Plan, example_inputs: ExampleInputs, compare_at: str | None
) -> Reference:
    """What the pruned copy is compared with: the masked reference, or for an approximate plan the model."""
    if plan.approximate:
        return original_outputs(model, example_inputs, compare_at)
    return reference_outputs(model, plan, example_inputs, compare_at)


def _pinned_summary(groups: Iterable[Group]) -> list[dict[str, Any]]:
    """Each pinned group as ``{id, width, members (the first 4, as name[dim]), reasons}``."""
    return [
        {
            "id": g.id,
            "width": g.width,
            "members": [f"{m.name}[{m.dim}]" for m in g.members[:4]],
            "reasons": g.reasons,
        }
        for g in groups
    ]


def _status(cmp: Comparison, approximate: bool) -> str:
    """``"exact"`` or ``"failed"``; an approximate plan: ``"approximate"`` (shapes equal, error finite)."""
    if approximate:
        return "approximate" if cmp.shapes_equal and math.isfinite(cmp.rel_err) else "failed"
    return "exact" if cmp.ok else "failed"


def check(
    model: nn.Module,
    example_inputs: ExampleInputs,
    config: PruneConfig | None = None,
    *legacy: Any,
    ratio: float | None = None,
    criterion: str | GroupCriterion | None = None,
    scope: str | None = None,
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float | None = None,
    data: Any = None,
    loss_fn: Any = None,
    compare_at: str | None = None,
    stream: bool | str | None = None,
) -> CheckReport:
    """Prune a deep copy and compare it with the masked reference (see :mod:`prunekit.structured.oracle`).

    The plan is the one :func:`plan_prune` makes with these options (a :class:`prunekit.PruneConfig` or
    keywords). Discrete decisions (top-k, sort, NMS, comparisons) whose inputs agree within the tolerance
    take the reference's answer in the pruned run, so a near-tie flipped by rounding is no error;
    ``.replayed`` names those that changed an answer (:mod:`prunekit.structured.replay`). ``compare_at``
    names a submodule whose outputs are compared instead of the model's. ``stream=True`` (see :func:`prune`):
    a plan that cuts a normalised stream is compared with the ORIGINAL model and reported as
    ``status="approximate"`` with its ``rel_err``; ``ok`` stays False (``ok`` means exact).

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> check(net, torch.randn(2, 3)).ok
    True
    """
    cfg = _ratio_config(
        "check", config, legacy, ratio=ratio, criterion=criterion, scope=scope, ignore=ignore,
        round_to=round_to, max_ratio=max_ratio, data=data, loss_fn=loss_fn, stream=stream,
    )  # fmt: skip
    eager_module(model, "check")
    _check_compare_at(model, compare_at)
    slicing = stream_importance(cfg.stream) == "slicegpt"
    stages = _CHECK_STAGES[:1] + (("rotate (SliceGPT)",) if slicing else ()) + _CHECK_STAGES[1:]
    with progress_bar("check", len(stages), fields="{task.fields[stage]}", stage=stages[0]) as bar:
        return _check(model, example_inputs, cfg, compare_at, slicing, _Stages(bar, stages))


_CHECK_STAGES = (
    "MACs of the model",
    "trace + score",
    "plan",
    "masked reference",
    "cut a copy",
    "compare",
    "MACs of the cut copy",
)


class _Stages:
    """Advances ``check``'s bar past one named stage at a time, showing the next stage's name."""

    def __init__(self, bar: Any, names: tuple[str, ...]) -> None:
        self._bar, self._names, self._done = bar, names, 0

    def done(self) -> None:
        self._done += 1
        following = self._names[self._done] if self._done < len(self._names) else "done"
        self._bar.advance(stage=following)


def _check(
    model: nn.Module,
    example_inputs: ExampleInputs,
    cfg: PruneConfig,
    compare_at: str | None,
    slicing: bool,
    stages: _Stages,
) -> CheckReport:
    """The stages of :func:`check`, each reported to ``stages`` when it ends."""
    params_before, macs_before = count_params(model).total, count_macs(model, example_inputs)
    stages.done()
    original, sliced, transforms = None, None, []
    if slicing:  # a rotated copy; the reference is the model itself
        original = original_outputs(model, example_inputs, compare_at)
        model = copy.deepcopy(model)
        sliced = slicegpt.transform(model, cfg.data)
        transforms = [sliced.into_plan]
        stages.done()
    scored = pipeline.traced(model, example_inputs, cfg, "check")
    stages.done()
    plan, report = pipeline.select(scored, cfg.ratio, transforms), scored.report
    stages.done()
    approximate = bool(plan.approximate)
    reference = original if original is not None else _reference(model, plan, example_inputs, compare_at)
    stages.done()
    pruned = copy.deepcopy(model)
    apply(pruned, plan, example_inputs)
    if sliced is not None:
        slicegpt.rescale(pruned, sliced.record)
    stages.done()
    cmp = compare_with(pruned, reference, example_inputs, compare_at)
    stages.done()
    macs_ratio = count_macs(pruned, example_inputs) / max(1, macs_before)
    params_ratio = count_params(pruned).total / max(1, params_before)
    stages.done()
    return CheckReport(
        cmp.ok and not approximate,
        cmp.max_abs_err,
        cmp.tolerance,
        cmp.shapes_equal,
        macs_ratio,
        params_ratio,
        len(report.groups),
        len(report.prunable_groups),
        plan.removed_units,
        _pinned_summary(report.pinned_groups),
        list(report.rule_errors),
        plan,
        compare_at,
        list(reference.decisions.replayed),
        cmp.n_values,
        _status(cmp, approximate),
        cmp.rel_err,
        cmp.tiny,
    )
