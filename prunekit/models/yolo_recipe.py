"""The YOLO recovery recipe: sparsity training, gradual pruning or a one-shot cut, then fine-tuning, each
stage with or without distillation from the input checkpoint (``prunekit yolo prune --recipe r.yaml``).

:func:`load_recipe` / :func:`recipe_from_dict` check every key before any training (one ``error:`` line for an
unknown key, a strength out of range, a criterion that needs calibration data); :func:`run_recipe` reads the
input checkpoint only, trains through :func:`prunekit.models.yolo_recover.recovery_trainer` and writes the
result atomically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.criteria import get_criterion
from prunekit.errors import ConfigError, ModelLoadError
from prunekit.measure.params import count_params
from prunekit.models.ultralytics import (
    detector_of,
    import_ultralytics,
    prune_yolo,
    read_checkpoint,
    save_yolo,
)
from prunekit.models.yolo_recover import (
    CRITERION_FOR,
    GradualPruning,
    SparsityTraining,
    _fraction,
    recovery_trainer,
)
from prunekit.recipe import read_yaml

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
    #: widths model.yaml states, so ultralytics' train() rebuilds the pruned model: oneshot/sparsity through
    #: ultralytics' modules only (``prune_yolo``'s default); gradual through ``Prunekit<Layer>`` rows
    #: (``GradualPruning(trainable=True)``: a training process registers them, prunekit's imports do)
    trainable: bool = True
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
    gradual_keys = tuple(
        f.name for f in fields(GradualPruning) if f.name not in ("ratio", "criterion", "trainable")
    )
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
    for key in ("kd", "trainable"):
        if not isinstance(data.get(key, False), bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {data[key]!r}")
    gradual = None
    if method == "gradual":
        trainable = data.get("trainable", True)
        gradual = GradualPruning(ratio=ratio, criterion=criterion, trainable=trainable, **gradual_opts)
    imgsz = data.get("imgsz", 320)
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise ConfigError(f"{source}: imgsz must be a positive multiple of 32, got {imgsz!r}")
    train = dict(_known(data.get("train", {}), TRAIN_KEYS, f"{source} (train)"))
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
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such recipe file: {path}")
    return recipe_from_dict(read_yaml(path, "recipe"), str(path))


def check_data_yaml(path: str | os.PathLike) -> Path:
    """Raise ConfigError unless ``path`` is a detection data.yaml whose train and val splits hold images."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.yaml not found: {path}")
    data = read_yaml(path, "data.yaml")
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
    "RecipeResult",
    "YoloRecipe",
    "check_data_yaml",
    "check_detector",
    "load_recipe",
    "recipe_from_dict",
    "run_recipe",
]
