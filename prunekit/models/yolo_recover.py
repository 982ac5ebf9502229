"""Recovery inside ultralytics' trainer: sparsity training before the cut, gradual structured pruning while
training, atomic checkpoints; distillation (``distill_model``) works with both.

:func:`recovery_trainer` returns a subclass of :func:`prunekit.models.yolo_train.keep_arch_trainer` (the
task's ultralytics trainer, training the given model without a yaml rebuild) that adds, through the
trainer's own seams (``optimizer_step``, ``save_model``, ``final_eval`` and callbacks):

- **sparsity training** (:class:`SparsityTraining`): at every optimizer step the gradient of
  ``lam_t * penalty`` is added to the task loss's, after ultralytics' clip of the latter to norm 10 (like
  weight decay, the regulariser is not shrunk by a loss spike). ``penalty="group_lasso"`` is
  ``sum_g sum_i ||unit i of group g||_2`` over prunekit's coupled groups (a unit is every entry the cut of
  channel ``i`` removes: the conv filter, its BN entries, the next convs' input slices);
  ``penalty="bn_l1"`` is ``sum |gamma|`` over the BatchNorm scales in those groups (network slimming). Only
  prunable groups are penalised (the head's outputs, classes and DFL bins are not). ``lam_t`` follows
  :class:`StrengthSchedule` (linear warm-up, constant, linear decay over the run). ``strength`` is per mean
  image loss, as in the papers: ultralytics sums its loss over the batch, so the penalty is multiplied by
  ``batch * accumulate``. Then :func:`prunekit.models.ultralytics.prune_yolo` with the matching criterion
  (``l2`` after group lasso, ``bn_scale`` after BN-L1) cuts what the regulariser drove down.
- **gradual pruning** (:class:`GradualPruning`): a
  :class:`prunekit.schedules.StructuredGradualPruner` on the student, stepped once per training batch
  (cubic schedule from ``start`` to ``end``, fractions of the run's batches, ``steps`` pruning steps).
  Removed units are soft cuts (exactly zero in the model *and* in the trainer's EMA, which is what
  ultralytics validates and saves). At the end of training the final EMA is cut physically and written as
  ``weights/pruned.pt`` (:func:`~prunekit.models.ultralytics.save_yolo`, the plan inside), a normal pruned
  checkpoint that ``YOLO("pruned.pt")`` and ``yolo val`` use and :func:`~prunekit.models.yolo_train.
  finetune_yolo` fine-tunes. By default its widths are free (``model.yaml`` does not state them);
  ``GradualPruning(trainable=True)`` makes it yaml-trainable, as ``prune_yolo(..., stock_modules=False)``:
  at the start the groups whose cut ``model.yaml`` cannot state even through ``Prunekit<Layer>`` rows are
  found on a trial cut at the final ratio and never masked, and the final cut goes through
  :func:`~prunekit.models.yolo_yaml.trainable_plan`, so the checkpoint's ``model.yaml`` rebuilds the pruned
  model in ultralytics' own ``train()`` (once :func:`~prunekit.models.yolo_modules.register` ran, as
  importing :mod:`prunekit.models.ultralytics` does). A masked group the final yaml still cannot state stays
  in the checkpoint with its removed units at zero (the same function; the plan's meta names it).
- **atomic checkpoints**: ``last.pt``/``best.pt``/``epochN.pt`` (every epoch, and the optimizer-stripped
  final copies) are written to a temporary file and renamed, so an interrupted run leaves the last good
  checkpoint.

    from ultralytics import YOLO
    trainer = recovery_trainer(gradual=GradualPruning(ratio=0.5))
    YOLO("dense.pt").train(trainer=trainer, data="data.yaml", epochs=30, distill_model="dense.pt")

:func:`prunekit.models.yolo_recipe.run_recipe` chains these stages from a recipe (``prunekit yolo prune
--recipe``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit._atomic import atomic_write, write_bytes
from prunekit.config import PruneConfig
from prunekit.errors import ConfigError
from prunekit.models.ultralytics import (
    C2fAttrs,
    HeadOutputs,
    _ignore,
    example_inputs,
    save_yolo,
)
from prunekit.models.yolo_train import keep_arch_trainer
from prunekit.regularize import BATCH_NORMS
from prunekit.structured import pipeline

PENALTIES = ("group_lasso", "bn_l1")
CRITERION_FOR = {"group_lasso": "l2", "bn_l1": "bn_scale"}  # what each penalty drives down, as scored
MAX_STRENGTH = 0.1  # above this the penalty swamps the detection loss (papers use 1e-5 .. 1e-3)
PRUNED_NAME = "pruned.pt"  # the physically cut checkpoint a gradual run writes next to last.pt/best.pt


def _fraction(value: Any, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class StrengthSchedule:
    """``strength`` ramped up linearly over the first ``warmup`` of the run, held, then decayed linearly to
    zero over the last ``decay`` (both fractions of the run, ``warmup + decay <= 1``).

    >>> s = StrengthSchedule(1e-3, warmup=0.2, decay=0.5)
    >>> [round(s.at(p) * 1e3, 3) for p in (0.0, 0.1, 0.2, 0.4, 0.75, 1.0)]
    [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    """

    strength: float
    warmup: float = 0.0
    decay: float = 0.0

    def __post_init__(self) -> None:
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= MAX_STRENGTH:
            raise ConfigError(f"sparsity strength must be in (0, {MAX_STRENGTH}], got {s!r}")
        _fraction(self.warmup, "warmup")
        _fraction(self.decay, "decay")
        if self.warmup + self.decay > 1:
            raise ConfigError(f"warmup + decay must not exceed 1, got {self.warmup} + {self.decay}")

    def at(self, progress: float) -> float:
        """The strength at ``progress`` (the fraction of the run done, 0..1)."""
        p = min(max(progress, 0.0), 1.0)
        if self.warmup and p < self.warmup:
            return self.strength * p / self.warmup
        if self.decay and p > 1 - self.decay:
            return self.strength * (1 - p) / self.decay
        return float(self.strength)


@dataclass(frozen=True)
class SparsityTraining:
    """Options of sparsity training: the ``penalty`` (``group_lasso`` or ``bn_l1``) and its schedule."""

    strength: float = 1e-4
    penalty: str = "group_lasso"
    warmup: float = 0.1
    decay: float = 0.0

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise ConfigError(f"penalty must be one of {', '.join(PENALTIES)}, got {self.penalty!r}")
        StrengthSchedule(self.strength, self.warmup, self.decay)  # validates strength, warmup and decay

    @property
    def schedule(self) -> StrengthSchedule:
        return StrengthSchedule(self.strength, self.warmup, self.decay)


@dataclass(frozen=True)
class GradualPruning:
    """Options of gradual pruning: the final ``ratio`` of units removed, reached by a cubic schedule from
    ``start`` to ``end`` (fractions of the run's batches) in ``steps`` pruning steps; ``criterion``,
    ``scope`` and ``max_ratio`` as in :func:`prunekit.prune`. ``trainable``: end in a yaml-trainable
    checkpoint (groups the yaml cannot state are never masked; the ratio is that of the others' units)."""

    ratio: float = 0.5
    start: float = 0.0
    end: float = 0.75
    steps: int = 4
    criterion: str = "l2"
    scope: str = "global"
    max_ratio: float = 0.9
    trainable: bool = False  # end in a checkpoint whose model.yaml states its widths (module doc)

    def __post_init__(self) -> None:
        if not isinstance(self.trainable, bool):
            raise ConfigError(f"trainable must be true or false, got {self.trainable!r}")
        _fraction(self.ratio, "ratio", high=0.95)
        _fraction(self.start, "start")
        _fraction(self.end, "end")
        if self.start >= self.end:
            raise ConfigError(f"start ({self.start}) must come before end ({self.end})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")

    def schedule(self, total: int) -> tuple[int, int, int]:
        """``(start_step, end_step, frequency)`` in batches for a run of ``total`` batches."""
        start = min(int(self.start * total), total - 1)
        span = max(1, int(self.end * total) - start)
        frequency = max(1, span // self.steps)
        n = max(1, min(self.steps, span // frequency))
        return start, start + n * frequency, frequency


def _student(model: nn.Module) -> nn.Module:
    """The detector being trained: the model itself, or the student of ultralytics' DistillationModel."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "student_model", model)


class CoupledPenalty:
    """Group lasso or BN-L1 over the prunable coupled groups of an ultralytics detector.

    The groups are traced once; the penalty reads the detector's current parameters on every call.

    >>> from prunekit.models.ultralytics import load_yolo
    >>> pen = CoupledPenalty(load_yolo("yolov8n.yaml"), "bn_l1", imgsz=64)
    >>> round(pen().item())  # every BN scale starts at 1; all 5,296 of YOLOv8n's are in prunable groups
    5296
    """

    def __init__(self, detector: nn.Module, penalty: str = "group_lasso", *, imgsz: int = 64) -> None:
        if penalty not in PENALTIES:
            raise ConfigError(f"penalty must be one of {', '.join(PENALTIES)}, got {penalty!r}")
        self.penalty = penalty
        self.detector = detector
        x = example_inputs(detector, imgsz).to(next(detector.parameters()).device)
        cfg = PruneConfig(ignore=_ignore(detector, ()))
        view = HeadOutputs(detector)
        was_training = detector.training
        detector.eval()
        try:
            report = pipeline.trace(view, x, pipeline.with_names(cfg, view), "sparsity training")
        finally:
            detector.train(was_training)
        modules = dict(detector.named_modules())
        self._terms: list[tuple[int, list[tuple[str, int, Tensor, Tensor]]]] = []
        for g in report.prunable_groups:
            members = []
            for m in g.members:
                owner, _, leaf = m.name.rpartition(".")
                is_scale = leaf == "weight" and isinstance(modules.get(owner), BATCH_NORMS)
                if penalty == "bn_l1" and not is_scale:
                    continue
                index = torch.as_tensor(m.index, dtype=torch.long)
                units = torch.as_tensor(m.units, dtype=torch.long)
                members.append((m.name, m.dim, index, units))
            if members:
                self._terms.append((g.width, members))
        if not self._terms:
            raise ConfigError(f"{penalty}: the detector has no prunable group to regularise")

    def __call__(self) -> Tensor:
        params = dict(self.detector.named_parameters(remove_duplicate=False))
        totals = []
        for width, members in self._terms:
            if self.penalty == "bn_l1":
                for name, dim, index, _ in members:
                    p = params[name]
                    totals.append(p.index_select(dim, index.to(p.device)).abs().sum())
                continue
            squares = None
            for name, dim, index, units in members:
                p = params.get(name)
                if p is None:  # a buffer (BN running stats): not trained, not penalised
                    continue
                rows = p.index_select(dim, index.to(p.device)).movedim(dim, 0).reshape(len(index), -1)
                part = rows.square().sum(dim=1)
                if squares is None:
                    squares = torch.zeros(width, dtype=part.dtype, device=part.device)
                squares = squares.index_add(0, units.to(part.device), part)
            if squares is not None:
                totals.append(squares.clamp_min(1e-24).sqrt().sum())  # no infinite slope at an exact zero
        return torch.stack(totals).sum()


class _AtomicPath(type(Path())):  # type: ignore[misc]
    """A path whose ``write_bytes`` is atomic (temporary file, then rename), for ultralytics' checkpoints."""

    def write_bytes(self, data: Any) -> int:  # type: ignore[override]
        write_bytes(Path(str(self)), bytes(data))
        return len(data)


class _Recovery:
    """Mixin for ultralytics trainers: sparsity penalty, gradual pruning and atomic checkpoints."""

    prunekit_sparsity: SparsityTraining | None = None
    prunekit_gradual: GradualPruning | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.penalty: CoupledPenalty | None = None
        self.pruner: Any = None
        self.pruned: Path | None = None  # the physically cut checkpoint of a gradual run
        self.yaml_kept: dict[int, str] = {}  # groups a trainable gradual run never masks, and why
        #: ``(batch, strength, penalty)`` at every optimizer step with a penalty
        self.sparsity_log: list[tuple[int, float, float]] = []
        self.batches_done = 0  #: training batches run so far, resumed epochs included (the schedules' clock)
        for event, callback in (
            ("on_train_start", _on_train_start),
            ("on_train_batch_end", _on_batch_end),
            ("on_train_end", _on_train_end),
        ):  # first, so every other callback sees the removed units at zero and the pruned checkpoint
            self.callbacks[event].insert(0, callback)

    @property
    def batches_total(self) -> int:
        """Batches of the whole run: ``epochs * batches per epoch`` (``epochs`` as the trainer has it now:
        a ``time=`` run re-estimates it every epoch)."""
        loader = getattr(self, "train_loader", None)
        return max(1, self.epochs * len(loader)) if loader is not None else 1

    def _imgsz(self) -> int:
        imgsz = self.args.imgsz
        side = int(imgsz if isinstance(imgsz, int) else max(imgsz))
        return max(32, side // 32 * 32)

    def optimizer_step(self) -> None:
        """Ultralytics' step (unscale, clip the task gradient to norm 10, step, EMA update) with the penalty's
        gradient added after the clip: like weight decay, the regulariser is not shrunk by a loss spike."""
        sparsity = self.prunekit_sparsity
        if sparsity is None:
            return super().optimizer_step()
        if self.penalty is None:
            self.penalty = CoupledPenalty(_student(self.model), sparsity.penalty, imgsz=self._imgsz())
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(
            self.model.parameters(),
            max_norm=10.0,
            **({"foreach": False} if self.device.type == "npu" else {}),
        )
        lam = sparsity.schedule.at(self.batches_done / self.batches_total)
        if lam > 0:
            value = self.penalty()
            (value * (lam * self.batch_size * self.accumulate)).backward()  # per mean image loss (module doc)
            self.sparsity_log.append((self.batches_done, lam, float(value.detach())))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)
        return None

    def save_model(self) -> bool:
        self.wdir, self.last, self.best = map(_AtomicPath, (self.wdir, self.last, self.best))  # epochN.pt too
        return super().save_model()

    def final_eval(self) -> None:
        """Ultralytics' final validation of ``best.pt``, its optimizer-stripped copies written atomically."""
        from ultralytics.utils import RANK
        from ultralytics.utils.torch_utils import strip_optimizer

        def strip(path: Path, updates: dict | None = None) -> dict:
            return atomic_write(path, lambda tmp: strip_optimizer(path, s=str(tmp), updates=updates))

        model = self.best if self.best.exists() else None
        if RANK in {-1, 0}:
            ckpt = strip(self.last) if self.last.exists() else {}
            if model:
                strip(self.best, {"train_results": ckpt.get("train_results")})
        if model:
            self.validator.args.plots = self.args.plots
            self.validator.args.compile = False
            self.metrics = self.validator(model=model)
            self.metrics.pop("fitness", None)
            self.epoch += 1  # ultralytics logs the best metrics at step epochs + 1
            self.run_callbacks("on_fit_epoch_end")
            self.epoch -= 1


def _on_train_start(trainer: Any) -> None:
    trainer.batches_done = trainer.start_epoch * len(trainer.train_loader)
    gradual = trainer.prunekit_gradual
    if gradual is None:
        return
    if trainer.start_epoch or trainer.args.time:
        raise ConfigError(
            "gradual pruning needs the whole run in one go with a fixed number of epochs (its removed units "
            "are not in ultralytics' checkpoint): start it again without resume= / time=, or fine-tune "
            "weights/last.pt"
        )
    from prunekit.schedules.structured_gradual import StructuredGradualPruner

    student = _student(trainer.model)
    x = example_inputs(student, trainer._imgsz()).to(next(student.parameters()).device)
    start, end, frequency = gradual.schedule(trainer.batches_total)
    was_training = student.training
    student.eval()
    try:
        options = dict(start_step=start, end_step=end, frequency=frequency, criterion=gradual.criterion,
                       scope=gradual.scope, max_ratio=gradual.max_ratio,
                       ignore=_ignore(student, ()))  # fmt: skip
        trainer.pruner = StructuredGradualPruner(HeadOutputs(student), x, gradual.ratio, **options)
        if gradual.trainable:
            report = trainer.pruner.report
            trainer.yaml_kept = unstatable_groups(student, report, x, gradual, trainer._imgsz())
            if trainer.yaml_kept:
                trainer.pruner = StructuredGradualPruner(
                    HeadOutputs(student), x, gradual.ratio, keep_whole=trainer.yaml_kept, **options
                )
    finally:
        student.train(was_training)
    trainer.pruner_inputs = x


def unstatable_groups(
    detector: nn.Module, report: Any, x: Tensor, gradual: GradualPruning, imgsz: int
) -> dict[int, str]:
    """Prunable groups of ``report`` whose cut ``detector``'s yaml cannot state through ``Prunekit<Layer>``
    rows, with why: found by :func:`~prunekit.models.yolo_yaml.trainable_plan` on a trial local cut of
    ``gradual.ratio`` of every group (``detector`` is not changed).

    >>> from prunekit.models.ultralytics import load_yolo
    >>> m = load_yolo("yolo11n.yaml"); x = example_inputs(m, 64)
    >>> report = pipeline.trace(HeadOutputs(m), x, PruneConfig(ignore=_ignore(m, ())), "doc")
    >>> unstatable_groups(m, report, x, GradualPruning(ratio=0.5), 64)
    {}
    """
    from prunekit.models.yolo_yaml import trainable_plan
    from prunekit.structured.select import build_plan, choose_units

    detector = copy.deepcopy(detector).cpu()
    x = x.cpu()
    scores = {g.id: torch.arange(g.width, dtype=torch.float32) for g in report.groups}
    removed = choose_units(report, scores, gradual.ratio, "local", None, gradual.max_ratio)
    finish = C2fAttrs(detector, imgsz, trainable=True)
    trial = finish(build_plan(report, removed, {}))
    try:
        _plan, _yaml, _kept, why = trainable_plan(
            detector, HeadOutputs, x, trial, report, lambda _m, p: finish(p), stock_modules=False
        )
    except ValueError as err:
        raise ConfigError(f"gradual trainable=True: {err}; use trainable=False (free widths)") from err
    return why


def _ema_student(trainer: Any) -> nn.Module | None:
    ema = getattr(trainer, "ema", None)
    return _student(ema.ema) if ema is not None and getattr(ema, "ema", None) is not None else None


def _on_batch_end(trainer: Any) -> None:
    trainer.batches_done += 1
    if trainer.pruner is None:
        return
    trainer.pruner.step()  # re-zeroes the removed units (and removes more at a pruning step)
    ema = _ema_student(trainer)
    if ema is not None:
        trainer.pruner.zero_removed(ema)


def _on_train_end(trainer: Any) -> None:
    pruner = trainer.pruner
    ema = _ema_student(trainer)
    if pruner is None or ema is None:
        return
    from prunekit.structured.cut import apply

    while not pruner.done:  # a run stopped early (patience, time): finish the schedule's last steps
        pruner.step()
    model = copy.deepcopy(ema).float().eval()
    pruner.zero_removed(model)
    trainable = trainer.prunekit_gradual.trainable
    finish = C2fAttrs(model, trainer._imgsz(), trainable=trainable)
    plan = finish(pruner.plan())
    yaml = None
    if trainable:
        plan, yaml = _yaml_cut(model.cpu(), plan, pruner, trainer.pruner_inputs.cpu(), finish)
        plan.meta["ultralytics"]["never_masked"] = {str(g): w for g, w in trainer.yaml_kept.items()}
    apply(HeadOutputs(model), plan, trainer.pruner_inputs.to(next(model.parameters()).device))
    if yaml is not None:
        model.yaml = yaml  # states every pruned width: ultralytics' train() rebuilds this model
    model.args = vars(trainer.args) if hasattr(trainer.args, "__dict__") else dict(trainer.args)
    trainer.pruned = save_yolo(model.cpu(), Path(trainer.wdir) / PRUNED_NAME, plans=plan)
    trainer.prunekit_plan = plan


def _yaml_cut(model: nn.Module, plan: Any, pruner: Any, x: Tensor, finish: C2fAttrs) -> tuple[Any, dict]:
    """``plan`` restricted to what ``model.yaml`` states through ``Prunekit<Layer>`` rows, and that yaml."""
    from prunekit.models.yolo_yaml import trainable_plan

    try:
        plan, yaml, kept, why = trainable_plan(
            model, HeadOutputs, x, plan, pruner.report, lambda _m, p: finish(p), stock_modules=False
        )
    except ValueError as err:
        raise ConfigError(f"gradual trainable=True: the yaml cannot state the final cut ({err})") from err
    plan.meta["ultralytics"]["kept_for_yaml"] = sorted(kept)
    plan.meta["ultralytics"]["kept_for_yaml_why"] = {str(g): why[g] for g in sorted(kept)}
    return plan, yaml


def recovery_trainer(
    task: str = "detect",
    *,
    sparsity: SparsityTraining | None = None,
    gradual: GradualPruning | None = None,
) -> type:
    """An ultralytics trainer class for ``task`` with sparsity training and/or gradual pruning (see the
    module doc); pass it as ``YOLO(...).train(trainer=...)``. Without options it only makes the checkpoint
    writes atomic.

    >>> recovery_trainer(gradual=GradualPruning(ratio=0.5)).__name__
    'RecoveryDetectionTrainer'
    """
    if sparsity is not None and not isinstance(sparsity, SparsityTraining):
        raise ConfigError(f"sparsity must be a SparsityTraining, got {type(sparsity).__name__}")
    if gradual is not None and not isinstance(gradual, GradualPruning):
        raise ConfigError(f"gradual must be a GradualPruning, got {type(gradual).__name__}")
    base = keep_arch_trainer(task)
    name = "Recovery" + base.__name__.removeprefix("KeepArch")
    attrs = {"__module__": __name__, "prunekit_sparsity": sparsity, "prunekit_gradual": gradual}
    return type(name, (_Recovery, base), attrs)


__all__ = [
    "CoupledPenalty",
    "GradualPruning",
    "SparsityTraining",
    "StrengthSchedule",
    "recovery_trainer",
]
