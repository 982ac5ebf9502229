"""Fine-tune a pruned YOLO with ultralytics' own trainer, keeping the pruned architecture as it is.

Ultralytics' trainers never train the module they are given. ``YOLO.train`` calls
``trainer.get_model(cfg=model.yaml, weights=model)``, which builds a fresh model from the yaml and copies over
the weights whose shapes match (``intersect_dicts``). :func:`prunekit.models.ultralytics.prune_yolo` (by
default) writes the pruned widths into ``model.yaml`` (:mod:`prunekit.models.yolo_yaml`), so that rebuild *is*
the pruned model and a stock ``train()`` just works. A model pruned with ``trainable=False`` has widths no
yaml can state (its yaml is made to fail loudly instead of rebuilding the dense network); this module trains
such models, or any model, without a rebuild:

:func:`keep_arch_trainer` returns a subclass of the task's trainer (``DetectionTrainer``,
``SegmentationTrainer``, ``PoseTrainer``, ``OBBTrainer``, ``ClassificationTrainer``) whose ``get_model``
returns a copy of the given model instead of rebuilding it. Everything else (data, augmentation, loss, EMA,
validation, checkpoints, ``best.pt``) is ultralytics' own. Use it as ``YOLO("pruned.pt").train(
trainer=keep_arch_trainer("detect"), data=...)`` or through :func:`finetune_yolo`. The trained ``best.pt``
holds the pruned architecture (ultralytics saves the EMA module itself) and loads with ``YOLO()`` as usual.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.ultralytics import detector_of, import_ultralytics

TASKS = ("detect", "segment", "pose", "obb", "classify")


def _num_classes(model: nn.Module) -> int | None:
    head = model.model[-1]
    nc = getattr(head, "nc", None)
    if nc is None and hasattr(head, "linear"):
        nc = head.linear.out_features
    return nc


class _KeepArchitecture:
    """Mixin for ultralytics trainers: ``get_model`` returns (a copy of) the given model, never a rebuild."""

    def get_model(self, cfg: Any = None, weights: nn.Module | None = None, verbose: bool = True) -> nn.Module:
        if not isinstance(weights, nn.Module):
            raise ConfigError(
                "keep_arch_trainer needs the pruned model itself: load it with YOLO('pruned.pt') and keep "
                "pretrained=True (a yaml would rebuild the dense architecture)"
            )
        nc = _num_classes(weights)
        if nc is not None and nc != self.data["nc"]:
            raise ConfigError(
                f"the pruned model predicts {nc} classes but the dataset has {self.data['nc']}; "
                "fine-tune on data with the same classes (its head is kept as pruned)"
            )
        model = copy.deepcopy(weights).float()
        for p in model.parameters():
            p.requires_grad = True  # the trainer freezes what it must (e.g. the DFL conv) itself
        if hasattr(self, "set_model_names_for_load"):
            model = self.set_model_names_for_load(model)
        return model


@functools.cache
def keep_arch_trainer(task: str = "detect") -> type:
    """The ultralytics trainer class for ``task`` that fine-tunes the given (pruned) model as it is.

    >>> keep_arch_trainer("detect").__name__
    'KeepArchDetectionTrainer'
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    import_ultralytics()
    from ultralytics.models import yolo

    base = {
        "detect": yolo.detect.DetectionTrainer,
        "segment": yolo.segment.SegmentationTrainer,
        "pose": yolo.pose.PoseTrainer,
        "obb": yolo.obb.OBBTrainer,
        "classify": yolo.classify.ClassificationTrainer,
    }[task]
    return type(f"KeepArch{base.__name__}", (_KeepArchitecture, base), {"__module__": __name__})


def finetune_yolo(
    model: Any, *, teacher: str | Path | None = None, **train_args: Any
) -> Any:  # -> ultralytics.YOLO
    """Fine-tune a pruned ultralytics checkpoint (path or ``YOLO`` loaded from one) with ultralytics' trainer.

    ``train_args`` are ``YOLO.train`` arguments (``data``, ``epochs``, ``imgsz``, ``batch``, ``lr0``, ...).
    ``teacher`` (the dense model's ``.pt``) adds knowledge distillation: ultralytics' own
    ``distill_model`` (feature distillation at the head's input levels, 1x1 projectors bridging the pruned
    widths, weight ``dis``). Returns the ``YOLO`` object: its ``.model`` is ``best.pt`` (fine-tuned, still
    pruned), ``.metrics`` the final validation and ``.trainer.best`` the checkpoint's path.

    >>> finetune_yolo("pruned.pt", data="data.yaml", epochs=3, imgsz=160)  # doctest: +SKIP
    """
    ultralytics = import_ultralytics()
    if "trainer" in train_args:
        raise ConfigError("finetune_yolo chooses the trainer itself; call YOLO.train for a custom trainer")
    if train_args.get("pretrained") is False:
        raise ConfigError("pretrained=False would rebuild the dense model from yaml; leave it out")
    if teacher is not None:
        if "distill_model" in train_args:
            raise ConfigError("give the teacher once: teacher= or distill_model=, not both")
        if Path(teacher).suffix != ".pt" or not Path(teacher).is_file():
            raise ConfigError(f"teacher must be an existing ultralytics .pt checkpoint, got {str(teacher)!r}")
        train_args["distill_model"] = str(teacher)
    yolo = ultralytics.YOLO(str(model)) if isinstance(model, (str, Path)) else model
    if not getattr(yolo, "ckpt", None):
        raise ConfigError(
            "fine-tune a model loaded from a checkpoint: save_yolo(model, 'pruned.pt') and pass 'pruned.pt'"
        )
    detector_of(yolo)
    yolo.train(trainer=keep_arch_trainer(yolo.task), **train_args)
    return yolo
