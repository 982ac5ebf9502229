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
  finetune_yolo` fine-tunes (its widths are free, so ``model.yaml`` does not state them).
- **atomic checkpoints**: ``last.pt``/``best.pt``/``epochN.pt`` (every epoch, and the optimizer-stripped
  final copies) are written to a temporary file and renamed, so an interrupted run leaves the last good
  checkpoint.

    from ultralytics import YOLO
    trainer = recovery_trainer(gradual=GradualPruning(ratio=0.5))
    YOLO("dense.pt").train(trainer=trainer, data="data.yaml", epochs=30, distill_model="dense.pt")

:func:`run_recipe` chains the stages (sparsity training or gradual pruning or a one-shot cut, then
fine-tuning, with or without distillation) from a :class:`YoloRecipe` (``prunekit yolo prune --recipe``).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit._atomic import atomic_write, write_bytes
from prunekit.config import PruneConfig
from prunekit.criteria import get_criterion
from prunekit.errors import ConfigError, ModelLoadError
from prunekit.measure.params import count_params
from prunekit.models.ultralytics import (
    C2fAttrs,
    HeadOutputs,
    _ignore,
    detector_of,
    example_inputs,
    import_ultralytics,
    prune_yolo,
    read_checkpoint,
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
    ``scope`` and ``max_ratio`` as in :func:`prunekit.prune`."""

    ratio: float = 0.5
    start: float = 0.0
    end: float = 0.75
    steps: int = 4
    criterion: str = "l2"
    scope: str = "global"
    max_ratio: float = 0.9

    def __post_init__(self) -> None:
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
        trainer.pruner = StructuredGradualPruner(
            HeadOutputs(student), x, gradual.ratio, start_step=start, end_step=end, frequency=frequency,
            criterion=gradual.criterion, scope=gradual.scope, max_ratio=gradual.max_ratio,
            ignore=_ignore(student, ()),
        )  # fmt: skip
    finally:
        student.train(was_training)
    trainer.pruner_inputs = x


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
    plan = C2fAttrs(model, trainer._imgsz(), trainable=False)(pruner.plan())
    apply(HeadOutputs(model), plan, trainer.pruner_inputs.to(next(model.parameters()).device))
    model.args = vars(trainer.args) if hasattr(trainer.args, "__dict__") else dict(trainer.args)
    trainer.pruned = save_yolo(model.cpu(), Path(trainer.wdir) / PRUNED_NAME, plans=plan)
    trainer.prunekit_plan = plan


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


# ----------------------------------------------------------------------------------------------------------
# the recipe: sparsity training | gradual | one-shot  ->  fine-tuning (+ distillation)

METHODS = ("sparsity", "gradual", "oneshot")
#: ultralytics train arguments a recipe's ``train`` may set (shared by all its training stages)
TRAIN_KEYS = ("batch", "workers", "device", "lr0", "lrf", "optimizer", "warmup_epochs", "seed", "patience",
              "close_mosaic", "mosaic", "amp", "cos_lr", "dis", "nbs", "momentum", "weight_decay",
              "deterministic")  # fmt: skip
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class YoloRecipe:
    """One recovery run: ``method`` (``sparsity``: sparsity training, then the one-shot cut with the
    criterion the penalty favours; ``gradual``: pruning during training; ``oneshot``: the cut alone),
    then ``finetune_epochs`` of fine-tuning; ``kd`` distils from the input (dense) checkpoint in every
    training stage. ``train`` holds ultralytics train arguments shared by the stages (``batch``,
    ``workers``, ``device``, ``lr0``...)."""

    data: str
    method: str = "sparsity"
    ratio: float = 0.5
    criterion: str | None = None  # default: the penalty's (sparsity), l2 otherwise
    imgsz: int = 320
    trainable: bool = True  # oneshot/sparsity: widths model.yaml states (stock `yolo train` keeps them)
    sparsity_epochs: int = 10
    gradual_epochs: int = 10
    finetune_epochs: int = 10
    kd: bool = False
    sparsity: SparsityTraining = field(default_factory=SparsityTraining)
    gradual: GradualPruning | None = None
    train: dict[str, Any] = field(default_factory=dict)
    project: str | None = None  # ultralytics runs directory; default: next to the output

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _epochs(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
        raise ConfigError(f"{name} must be an integer in [0, 10000], got {value!r}")
    return value


def _known(data: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    return data


def recipe_from_dict(data: Any, source: str = "recipe") -> YoloRecipe:
    """Validate a recipe mapping (unknown keys and out-of-range values are ConfigErrors naming ``source``).

    >>> r = recipe_from_dict({"data": "d.yaml", "method": "gradual", "ratio": 0.4, "gradual": {"steps": 8}})
    >>> r.method, r.gradual.ratio, r.criterion
    ('gradual', 0.4, 'l2')
    """
    top = tuple(f.name for f in fields(YoloRecipe))
    data = dict(_known(data, top, source))
    if "data" not in data:
        raise ConfigError(f"{source} needs 'data' (the dataset's data.yaml)")
    if not isinstance(data["data"], str):
        raise ConfigError(f"{source}: data must be a path to a data.yaml, got {data['data']!r}")
    method = data.get("method", "sparsity")
    if method not in METHODS:
        raise ConfigError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
    sparsity_keys = tuple(f.name for f in fields(SparsityTraining))
    sparsity = SparsityTraining(**_known(data.get("sparsity", {}), sparsity_keys, f"{source} (sparsity)"))
    gradual_keys = tuple(f.name for f in fields(GradualPruning) if f.name not in ("ratio", "criterion"))
    gradual_opts = _known(data.get("gradual", {}), gradual_keys, f"{source} (gradual)")
    ratio = _fraction(data.get("ratio", 0.5), "ratio", high=0.95)
    criterion = data.get("criterion")
    if criterion is None:
        criterion = CRITERION_FOR[sparsity.penalty] if method == "sparsity" else "l2"
    if not isinstance(criterion, str):
        raise ConfigError(f"{source}: criterion must be a name, got {criterion!r}")
    if get_criterion(criterion).needs_data:  # unknown names raise here, before any training
        raise ConfigError(
            f"{source}: criterion {criterion!r} needs calibration data; the recipe cuts with a data-free one "
            "(l2, l1, bn_scale, fpgm, ...)"
        )
    gradual = None
    if method == "gradual":
        gradual = GradualPruning(ratio=ratio, criterion=criterion, **gradual_opts)
    imgsz = data.get("imgsz", 320)
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise ConfigError(f"{source}: imgsz must be a positive multiple of 32, got {imgsz!r}")
    train = dict(_known(data.get("train", {}), TRAIN_KEYS, f"{source} (train)"))
    for key in ("kd", "trainable"):
        if not isinstance(data.get(key, False), bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {data[key]!r}")
    project = data.get("project")
    if project is not None and not isinstance(project, str):
        raise ConfigError(f"{source}: project must be a directory path, got {project!r}")
    return YoloRecipe(
        data=data["data"], method=method, ratio=ratio, criterion=criterion, imgsz=imgsz,
        trainable=data.get("trainable", True),
        sparsity_epochs=_epochs(data.get("sparsity_epochs", 10), "sparsity_epochs"),
        gradual_epochs=_epochs(data.get("gradual_epochs", 10), "gradual_epochs"),
        finetune_epochs=_epochs(data.get("finetune_epochs", 10), "finetune_epochs"),
        kd=data.get("kd", False), sparsity=sparsity, gradual=gradual, train=train, project=project,
    )  # fmt: skip


def load_recipe(path: str | os.PathLike) -> YoloRecipe:
    """Read a recipe YAML file (see :func:`recipe_from_dict`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such recipe file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    return recipe_from_dict(data, str(path))


def check_data_yaml(path: str | os.PathLike) -> Path:
    """Raise ConfigError unless ``path`` is a detection data.yaml whose train and val splits hold images."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.yaml not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict) or "train" not in data or "val" not in data or "names" not in data:
        raise ConfigError(f"{path} is not a dataset yaml: it needs 'train', 'val' and 'names'")
    root = Path(data.get("path") or path.parent)
    root = root if root.is_absolute() else path.parent / root
    for split in ("train", "val"):
        for entry in data[split] if isinstance(data[split], list) else [data[split]]:
            where = root / str(entry)
            if where.is_file():  # a list of image paths
                images = [line for line in where.read_text().splitlines() if line.strip()]
            elif where.is_dir():
                images = [p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
            else:
                images = []
            if not images:
                raise ConfigError(f"{path}: the {split} split {where} has no images")
    return path


def check_detector(path: str | os.PathLike) -> nn.Module:
    """The detector an ultralytics ``.pt`` holds; ConfigError unless it is one (a ``Detect`` head, task
    ``detect``)."""
    path = Path(path)
    if path.suffix != ".pt":
        raise ConfigError(f"the recipe starts from an ultralytics .pt checkpoint, got {path.name!r}")
    try:
        model = read_checkpoint(path)
        detector_of(model)
    except ModelLoadError as err:
        raise ConfigError(str(err)) from err
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    if type(model) is not DetectionModel:  # not its subclasses (segment, pose, obb, RT-DETR, world)
        raise ConfigError(f"{path} is not a detector ({type(model).__name__}); the recipe trains detectors")
    return model


@dataclass
class RecipeResult:
    """What :func:`run_recipe` did: the checkpoint written, sizes, the final validation, stage times."""

    checkpoint: str
    method: str
    kd: bool
    params_before: int
    params_after: int
    map50_95: float | None
    map50: float | None
    seconds: dict[str, float]
    runs: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _train(model: Any, trainer: type, args: dict[str, Any]) -> Any:
    import_ultralytics()
    from ultralytics import YOLO

    yolo = YOLO(str(model)) if isinstance(model, (str, Path)) else model
    yolo.train(trainer=trainer, **args)
    return yolo


def _box(yolo: Any) -> tuple[float | None, float | None]:
    box = getattr(getattr(yolo, "metrics", None), "box", None)
    return (float(box.map), float(box.map50)) if box is not None else (None, None)


def run_recipe(
    model: str | os.PathLike,
    out: str | os.PathLike,
    recipe: YoloRecipe,
    *,
    log: Callable[[str], None] | None = None,
) -> RecipeResult:
    """Run ``recipe`` on the dense detector checkpoint ``model``; write the recovered pruned checkpoint
    to ``out`` (atomically; ``model`` is only read). Stages train with ultralytics' trainer under
    ``recipe.project`` (default ``<out's dir>/<out's stem>_runs``), each run in its own directory.

    >>> run_recipe("dense.pt", "pruned.pt", load_recipe("recipe.yaml"))  # doctest: +SKIP
    """
    say = log or (lambda _msg: None)
    out = Path(out)
    if out.suffix != ".pt":
        raise ConfigError(f"--out must name a .pt file (ultralytics' format), got {out.name!r}")
    dense = check_detector(model)
    check_data_yaml(recipe.data)
    project = Path(recipe.project) if recipe.project else out.parent / f"{out.stem}_runs"
    half = next(dense.parameters()).dtype == torch.float16
    params_before = count_params(dense).total
    teacher = {"distill_model": str(model)} if recipe.kd else {}
    common = {"data": recipe.data, "imgsz": recipe.imgsz, "project": str(project.resolve()), "plots": False,
              "exist_ok": True, "verbose": False, **recipe.train}  # fmt: skip
    common.setdefault("device", "cpu")
    seconds: dict[str, float] = {}
    runs: dict[str, str] = {}
    current: Path = Path(model)
    plans: list[Any] = []

    def stage(name: str, trainer: type, epochs: int, kd: bool) -> Any:
        t0 = time.perf_counter()
        say(f"{name}: {epochs} epoch(s){' with distillation' if kd else ''}")
        yolo = _train(current, trainer, {**common, "epochs": epochs, "name": name, **(teacher if kd else {})})
        seconds[name] = round(time.perf_counter() - t0, 2)
        runs[name] = str(yolo.trainer.save_dir)
        return yolo

    if recipe.method == "gradual":
        trainer = recovery_trainer(gradual=recipe.gradual)
        yolo = stage("gradual", trainer, max(1, recipe.gradual_epochs), recipe.kd)
        current = yolo.trainer.pruned
        plans.append(yolo.trainer.prunekit_plan)
    else:
        if recipe.method == "sparsity" and recipe.sparsity_epochs:
            trainer = recovery_trainer(sparsity=recipe.sparsity)
            yolo = stage("sparsity", trainer, recipe.sparsity_epochs, recipe.kd)
            current = Path(yolo.trainer.last)
        t0 = time.perf_counter()
        detector = read_checkpoint(current).float().eval()
        result = prune_yolo(detector, ratio=recipe.ratio, criterion=recipe.criterion, imgsz=recipe.imgsz,
                            trainable=recipe.trainable)  # fmt: skip
        plans.append(result.plan)
        current = save_yolo(detector, project / f"{recipe.method}_pruned.pt", plans=result.plan)
        seconds["prune"] = round(time.perf_counter() - t0, 2)
        say(f"pruned: params {result.params_before:,} -> {result.params_after:,}")
    if recipe.finetune_epochs:
        yolo = stage("finetune", recovery_trainer(), recipe.finetune_epochs, recipe.kd)
        current = Path(yolo.trainer.best if Path(yolo.trainer.best).exists() else yolo.trainer.last)
    else:
        import_ultralytics()
        from ultralytics import YOLO

        yolo = YOLO(str(current))
        yolo.metrics = yolo.val(**{k: v for k, v in common.items() if k in ("data", "imgsz", "device",
                                                                             "project", "plots", "batch")},
                                name="val", exist_ok=True)  # fmt: skip
    final = read_checkpoint(current).float().eval()
    final.args = getattr(final, "args", None) or {}
    save_yolo(final, out, plans=plans, half=half)
    map50_95, map50 = _box(yolo)
    return RecipeResult(
        checkpoint=str(out), method=recipe.method, kd=recipe.kd, params_before=params_before,
        params_after=count_params(final).total, map50_95=map50_95, map50=map50, seconds=seconds, runs=runs,
    )  # fmt: skip


__all__ = [
    "CoupledPenalty",
    "GradualPruning",
    "RecipeResult",
    "SparsityTraining",
    "StrengthSchedule",
    "YoloRecipe",
    "check_data_yaml",
    "check_detector",
    "load_recipe",
    "recipe_from_dict",
    "recovery_trainer",
    "run_recipe",
]
