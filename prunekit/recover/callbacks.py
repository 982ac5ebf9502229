"""``PruneCallbacks``: distillation, zero-keeping, evaluation and early stopping for your own loop.

Keep your own training loop and call two methods::

    cb = PruneCallbacks(model, teacher=dense, eval_fn=my_eval, eval_every=100, patience=3)
    for inputs, targets in loader:
        outputs = model(inputs)
        loss = cb.loss(outputs, targets, inputs)   # task loss, mixed with KD from the teacher
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        if cb.after_step():                        # counts the step, re-zeros, evaluates; True = stop
            break
    cb.restore_best()                              # load the best evaluated weights
    cb.close()                                     # remove hooks, give the teacher its flags back

:func:`prunekit.recover.finetune` is this loop, with an optimizer, a schedule, a progress bar and DDP.

Masked models (:func:`prunekit.sparse.sparsify`) need nothing: the mask is a parametrization
``weight = original * mask``, so pruned weights read as zero and ``original`` gets zero gradient there.
``keep_zeros=True`` is for a model whose zeros are plain values (e.g. after
:func:`~prunekit.sparse.remove_masks`): the zero weights of its unmasked Linear/Conv layers get a gradient
hook that zeroes their gradient, and :meth:`after_step` writes zero into them again (weight decay or an
optimizer's running state could otherwise move them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit._inputs import call_model, eval_mode
from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError
from prunekit.measure.profile import evaluate
from prunekit.recover import distributed
from prunekit.recover.distill import FeatureKD, check_kd_args, kd_loss, logits_of
from prunekit.sparse.masks import is_masked
from prunekit.sparse.unstructured import PRUNABLE

LossFn = Callable[[Any, Tensor], Tensor]
EvalFn = Callable[[nn.Module], float]


@dataclass
class EvalPoint(JsonData):
    """One evaluation: after ``step`` optimizer steps, ``metric`` (higher is better) and the mean training
    loss since the previous evaluation (``nan`` at step 0; averaged over ranks under DDP)."""

    step: int
    metric: float
    train_loss: float


def cross_entropy(outputs: Any, targets: Tensor) -> Tensor:
    """The default task loss: cross-entropy on the model's logits (a tensor, or an output with ``.logits``).

    >>> float(cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([1])))  # doctest: +ELLIPSIS
    0.693...
    """
    return F.cross_entropy(logits_of(outputs), targets)


def check_positive_int(name: str, value: object, *, allow_none: bool = True, low: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int ``>= low`` (or ``None`` when allowed).

    >>> check_positive_int("patience", 3)
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


class PruneCallbacks:
    """Loss with knowledge distillation, zero-keeping and periodic evaluation for a hand-written loop.

    - ``teacher``: a dense model to distil from (put in eval mode, run under ``no_grad``). The loss becomes
      ``(1 - kd_alpha) * task + kd_alpha * KD(T=kd_temperature)`` (defaults 0.5 and 4.0), plus
      ``feature_kd_weight * mse`` over the modules named in ``feature_kd`` (equal shapes only).
    - ``eval_fn(model) -> float`` (higher is better) runs every ``eval_every`` steps on rank 0 (the value is
      broadcast to all ranks under DDP); the best weights are kept in memory (``keep_best``) and
      ``patience`` evaluations without an improvement larger than ``min_delta`` set :attr:`should_stop`.
    - ``keep_zeros=True`` freezes the zeros of unmasked Linear/Conv weights (see the module docstring).

    >>> model = nn.Linear(4, 3)
    >>> cb = PruneCallbacks(model, teacher=nn.Linear(4, 3), kd_alpha=0.5)
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> loss = cb.loss(model(x), y, x)
    >>> loss.backward(); cb.after_step(), cb.step
    (False, 1)
    >>> cb.close()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        teacher: nn.Module | None = None,
        kd_alpha: float | None = None,
        kd_temperature: float | None = None,
        feature_kd: Sequence[str] | Mapping[str, str] | None = None,
        feature_kd_weight: float = 1.0,
        loss_fn: LossFn | None = None,
        keep_zeros: bool = False,
        eval_fn: EvalFn | None = None,
        eval_every: int | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
        keep_best: bool = True,
    ) -> None:
        check_callback_args(
            model,
            teacher=teacher,
            kd_alpha=kd_alpha,
            kd_temperature=kd_temperature,
            feature_kd=feature_kd,
            feature_kd_weight=feature_kd_weight,
            loss_fn=loss_fn,
            eval_fn=eval_fn,
            eval_every=eval_every,
            patience=patience,
            min_delta=min_delta,
        )
        self.model = model
        self.teacher = teacher
        self.kd_alpha = 0.5 if kd_alpha is None else float(kd_alpha)
        self.kd_temperature = 4.0 if kd_temperature is None else float(kd_temperature)
        self.feature_kd_weight = float(feature_kd_weight)
        self.loss_fn = loss_fn or cross_entropy
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.patience, self.min_delta, self.keep_best = patience, float(min_delta), keep_best

        self.step = 0
        self.history: list[EvalPoint] = []
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.should_stop = False
        self.last: dict[str, float] = {}  # the parts of the last loss: task, kd, feature, total
        self._best_state: dict[str, Tensor] | None = None
        self._last_parts: dict[str, Tensor] | None = None
        self._bad_evals = 0
        self._loss_sum, self._loss_count = 0.0, 0
        self._teacher_flags = [(m, m.training) for m in teacher.modules()] if teacher is not None else []
        if teacher is not None:
            teacher.eval()
        self._features = FeatureKD(model, teacher, feature_kd) if feature_kd is not None else None
        self._zero_masks: list[tuple[nn.Parameter, Tensor]] = []
        self._handles = []
        if keep_zeros:
            self._freeze_zeros()

    # -- the two calls of a training loop ---------------------------------------------------------------

    def loss(self, outputs: Any, targets: Any, inputs: Any = None) -> Tensor:
        """The loss to backpropagate: ``loss_fn(outputs, targets)``, mixed with KD when there is a teacher
        (``inputs`` is then required: the teacher runs on them)."""
        task = self.loss_fn(outputs, targets)
        if not isinstance(task, Tensor) or task.dim() != 0:
            got = tuple(task.shape) if isinstance(task, Tensor) else type(task).__name__
            raise ConfigError(f"loss_fn must return a scalar tensor, got {got}")
        total = task
        parts = {"task": task.detach()}
        if self.teacher is not None:
            if inputs is None:
                raise ConfigError("cb.loss(outputs, targets, inputs): KD needs the inputs to run the teacher")
            with torch.no_grad():
                teacher_out = call_model(self.teacher, inputs)
            student_logits, teacher_logits = logits_of(outputs), logits_of(teacher_out)
            kd = kd_loss(student_logits, teacher_logits, self.kd_temperature)
            total = (1.0 - self.kd_alpha) * task + self.kd_alpha * kd
            parts["kd"] = kd.detach()
            if self._features is not None:
                feature = self._features.loss()
                total = total + self.feature_kd_weight * feature
                parts["feature"] = feature.detach()
        parts["total"] = total.detach()
        self._last_parts = parts
        return total

    def check_batch(self, inputs: Any, targets: Any) -> None:
        """Compute the loss of one batch in eval mode under ``no_grad``, to fail (bad ``loss_fn``, teacher
        output, feature shapes) before training changes anything; the model is left as it was."""
        with eval_mode(self.model), torch.no_grad():
            self.loss(call_model(self.model, inputs), targets, inputs)
        self._last_parts = None

    def after_step(self) -> bool:
        """Call after ``optimizer.step()``: counts the step, re-zeros frozen zeros, evaluates when due.

        Returns :attr:`should_stop` (True once early stopping triggers).
        """
        self.step += 1
        if self._zero_masks:
            with torch.no_grad():
                for param, keep in self._zero_masks:
                    param.mul_(keep)
        parts = self._last_parts
        if parts is not None:
            self.last = {name: float(value) for name, value in parts.items()}
            self._loss_sum += self.last["total"]
            self._loss_count += 1
            self._last_parts = None
        if self.eval_fn is not None and self.eval_every is not None and self.step % self.eval_every == 0:
            self.evaluate()
        return self.should_stop

    # -- evaluation, best weights, early stopping -------------------------------------------------------

    def evaluate(self) -> float:
        """Evaluate now (rank 0, broadcast under DDP), record an :class:`EvalPoint`, update best/patience."""
        if self.eval_fn is None:
            raise ConfigError("evaluate() needs an eval_fn: PruneCallbacks(model, eval_fn=...)")
        if distributed.is_distributed():  # rank 0 evaluates, every rank gets its value: same decisions
            metric = evaluate(self.model, self.eval_fn) if distributed.is_main() else float("nan")
            metric = distributed.broadcast_float(metric)
        else:
            metric = evaluate(self.model, self.eval_fn)
        if not math.isfinite(metric):
            raise ConfigError(
                f"eval_fn returned {metric} at step {self.step}: it must return a finite number"
            )
        mean_loss = self._loss_sum / self._loss_count if self._loss_count else float("nan")
        mean_loss = distributed.mean_over_ranks(mean_loss)
        self._loss_sum, self._loss_count = 0.0, 0
        self.history.append(EvalPoint(self.step, metric, mean_loss))
        if self.best_metric is None or metric > self.best_metric + self.min_delta:
            self.best_metric, self.best_step, self._bad_evals = metric, self.step, 0
            if self.keep_best:
                self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self._bad_evals += 1
            if self.patience is not None and self._bad_evals >= self.patience:
                self.should_stop = True
        return metric

    def restore_best(self) -> bool:
        """Load the best evaluated weights into the model; False if there is nothing to restore."""
        if self._best_state is None:
            return False
        self.model.load_state_dict(self._best_state)
        return True

    def close(self) -> None:
        """Remove every hook and give the teacher its training flags back (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._zero_masks.clear()
        if self._features is not None:
            self._features.close()
        for module, flag in self._teacher_flags:
            module.training = flag
        self._teacher_flags = []

    def __enter__(self) -> PruneCallbacks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _freeze_zeros(self) -> None:
        for module in self.model.modules():
            if not isinstance(module, PRUNABLE) or is_masked(module):
                continue
            param = module.weight
            keep = (param.detach() != 0).to(param.dtype)
            if bool(keep.all()) or not param.requires_grad:
                continue
            self._zero_masks.append((param, keep))
            self._handles.append(param.register_hook(lambda grad, keep=keep: grad * keep))
        if not self._zero_masks:
            warnings.warn(
                "keep_zeros=True: no unmasked Linear/Conv weight has zeros; nothing is frozen", stacklevel=3
            )


def check_callback_args(
    model: nn.Module,
    *,
    teacher: nn.Module | None,
    kd_alpha: object,
    kd_temperature: object,
    feature_kd: object,
    feature_kd_weight: object,
    loss_fn: object,
    eval_fn: object,
    eval_every: object,
    patience: object,
    min_delta: object,
) -> None:
    """Validate :class:`PruneCallbacks` arguments (shared with ``finetune``); raises :class:`ConfigError`.

    >>> check_callback_args(nn.Linear(2, 2), teacher=None, kd_alpha=None, kd_temperature=None,
    ...     feature_kd=None, feature_kd_weight=1.0, loss_fn=None, eval_fn=None, eval_every=None,
    ...     patience=None, min_delta=0.0)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if teacher is None:
        for name, value in (
            ("kd_alpha", kd_alpha),
            ("kd_temperature", kd_temperature),
            ("feature_kd", feature_kd),
        ):
            if value is not None:
                raise ConfigError(f"{name} is set but there is no teacher: pass teacher=<dense model>")
    else:
        if not isinstance(teacher, nn.Module):
            raise ConfigError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if teacher is model:
            raise ConfigError("teacher is the model itself: pass a copy of the dense model (copy.deepcopy)")
        check_kd_args(
            0.5 if kd_alpha is None else kd_alpha, 4.0 if kd_temperature is None else kd_temperature
        )
    if isinstance(feature_kd_weight, bool) or not isinstance(feature_kd_weight, (int, float)):
        raise ConfigError(f"feature_kd_weight must be a number >= 0, got {feature_kd_weight!r}")
    if not 0.0 <= feature_kd_weight < float("inf"):
        raise ConfigError(f"feature_kd_weight must be a finite number >= 0, got {feature_kd_weight!r}")
    for name, fn in (("loss_fn", loss_fn), ("eval_fn", eval_fn)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"{name} must be callable, got {type(fn).__name__}")
    check_positive_int("eval_every", eval_every)
    check_positive_int("patience", patience)
    if patience is not None and eval_fn is None:
        raise ConfigError("patience (early stopping) needs an eval_fn to watch")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0.0 <= min_delta < 1e300:
        raise ConfigError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
