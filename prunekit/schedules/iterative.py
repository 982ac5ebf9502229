"""One-shot and iterative pruning: prune, fine-tune, prune again, up to a final sparsity.

:func:`iterative_prune` takes ``steps`` prune steps; after each one ``train_fn(model)`` fine-tunes the masked
model (masked weights stay zero: prunekit masks are parametrizations). Per-step targets come from
:func:`step_targets`:

- ``"geometric"`` (default): every step removes the same fraction of the weights still left, so after step
  ``k`` of ``K`` a fraction ``(1 - s_f) ** (k / K)`` remains (Han et al. 2015; the lottery-ticket rate);
- ``"cubic"``: ``s_k = s_f * (1 - (1 - k / K) ** 3)``, Zhu & Gupta's curve sampled at ``K`` steps;
- ``"linear"``: ``s_k = s_f * k / K``.

:func:`one_shot` is the ``steps=1`` case: prune once to the final sparsity, then fine-tune if asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.criteria import Criterion
from prunekit.errors import ConfigError
from prunekit.measure import evaluate
from prunekit.schedules.masking import ScoreFn, check_fraction, check_int, make_mask_set
from prunekit.sparse.unstructured import Selector

TrainFn = Callable[[nn.Module], Any]
"""Fine-tunes the model in place: ``train_fn(model)``; its return value is ignored."""
EvalFn = Callable[[nn.Module], float]
"""Scores the model (e.g. test accuracy): ``eval_fn(model) -> float``; run in eval mode under no_grad."""

TARGET_SCHEDULES = ("geometric", "cubic", "linear")


def step_targets(final_sparsity: float, steps: int, schedule: str = "geometric") -> list[float]:
    """The sparsity after each of ``steps`` prune steps; the last is exactly ``final_sparsity``.

    >>> [round(s, 4) for s in step_targets(0.9, 3)]
    [0.5358, 0.7846, 0.9]
    >>> [round(s, 4) for s in step_targets(0.9, 3, "cubic")]
    [0.6333, 0.8667, 0.9]
    """
    final = check_fraction(final_sparsity, "final_sparsity", allow_zero=False)
    check_int(steps, "steps", 1)
    if schedule not in TARGET_SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}: use one of {', '.join(TARGET_SCHEDULES)}")
    out = []
    for k in range(1, steps + 1):
        frac = k / steps
        if schedule == "geometric":
            out.append(1.0 - (1.0 - final) ** frac)
        elif schedule == "cubic":
            out.append(final * (1.0 - (1.0 - frac) ** 3))
        else:
            out.append(final * frac)
    out[-1] = final
    return out


@dataclass
class PruneStep:
    """One prune step: the target, the sparsity reached over the selection, the metric after fine-tuning."""

    index: int
    target: float
    sparsity: float
    metric: float | None = None


@dataclass
class ScheduleResult:
    """What :func:`one_shot` / :func:`iterative_prune` did, step by step."""

    method: str
    final_sparsity: float
    steps: list[PruneStep] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Sparsity reached at the end over the selected layers."""
        return self.steps[-1].sparsity if self.steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "method": self.method,
            "final_sparsity": self.final_sparsity,
            "sparsity": self.sparsity,
            "steps": [vars(step).copy() for step in self.steps],
        }


def iterative_prune(
    model: nn.Module,
    train_fn: TrainFn,
    *,
    final_sparsity: float,
    steps: int,
    schedule: str = "geometric",
    eval_fn: EvalFn | None = None,
    pattern: str = "unstructured",
    scope: str = "global",
    criterion: str | Criterion | ScoreFn = "magnitude",
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
    seed: int = 0,
) -> ScheduleResult:
    """Prune ``model`` in ``steps`` steps to ``final_sparsity``, calling ``train_fn(model)`` after each step.

    Targets follow ``schedule`` (see :func:`step_targets`); every step's count is exact and masks only grow.
    With ``eval_fn`` the model is scored after each fine-tune. The masks stay on the model (make them
    permanent with :func:`prunekit.remove_masks`). Arguments are checked before the model is touched.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> res = iterative_prune(model, lambda m: None, final_sparsity=0.75, steps=2)
    >>> [round(s.sparsity, 4) for s in res.steps]
    [0.5, 0.75]
    """
    if not callable(train_fn):
        raise ConfigError(f"train_fn must be a callable train_fn(model), got {type(train_fn).__name__}")
    return _run(
        model,
        train_fn,
        final_sparsity,
        steps,
        schedule,
        eval_fn,
        "iterative",
        pattern=pattern,
        scope=scope,
        criterion=criterion,
        include=include,
        exclude=exclude,
        seed=seed,
    )


def one_shot(
    model: nn.Module,
    sparsity: float,
    *,
    train_fn: TrainFn | None = None,
    eval_fn: EvalFn | None = None,
    pattern: str = "unstructured",
    scope: str = "global",
    criterion: str | Criterion | ScoreFn = "magnitude",
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
    seed: int = 0,
) -> ScheduleResult:
    """Prune once to ``sparsity``, then ``train_fn(model)`` if given (fine-tune), then ``eval_fn`` if given.

    >>> model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    >>> one_shot(model, 0.9).sparsity
    0.9
    """
    if train_fn is not None and not callable(train_fn):
        raise ConfigError(
            f"train_fn must be a callable train_fn(model) or None, got {type(train_fn).__name__}"
        )
    return _run(
        model,
        train_fn,
        sparsity,
        1,
        "geometric",
        eval_fn,
        "one-shot",
        pattern=pattern,
        scope=scope,
        criterion=criterion,
        include=include,
        exclude=exclude,
        seed=seed,
    )


def _run(
    model: nn.Module,
    train_fn: TrainFn | None,
    final_sparsity: float,
    steps: int,
    schedule: str,
    eval_fn: EvalFn | None,
    method: str,
    **mask_options: Any,
) -> ScheduleResult:
    if eval_fn is not None and not callable(eval_fn):
        raise ConfigError(f"eval_fn must be a callable eval_fn(model) -> float, got {type(eval_fn).__name__}")
    targets = step_targets(final_sparsity, steps, schedule)
    mask_set = make_mask_set(model, **mask_options)
    result = ScheduleResult(method, targets[-1])
    for index, target in enumerate(targets, start=1):
        mask_set.prune_to(target)
        if train_fn is not None:
            train_fn(model)
        metric = None if eval_fn is None else evaluate(model, eval_fn)
        result.steps.append(PruneStep(index, target, mask_set.sparsity(), metric))
    return result
