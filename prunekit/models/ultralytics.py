"""Ultralytics YOLO in, ultralytics checkpoints out: load, prune exactly, save for ``YOLO("pruned.pt")``.

The ultralytics model (``DetectionModel``, ``SegmentationModel``, ``PoseModel``, ``OBBModel``,
``ClassificationModel``) is pruned by the generic structural engine; nothing here knows YOLO's layers except
two facts the engine cannot see from one forward:

- Which outputs keep their shapes. In eval mode the model returns ``(y, raw)``; ``raw`` holds the head's
  tensors for the loss (box distributions, class scores, mask coefficients, protos — all kept) and ``feats``,
  the neck's feature maps, of which the loss and the decoder read only the spatial size. Pruning traces
  :class:`HeadOutputs`, a view of the model that returns everything but ``feats``, so the neck stays
  prunable while class count, DFL bins, mask/keypoint channels and every decoded output keep their shapes.
- ``C2f.c`` (and its subclasses ``C3k2``, ``C2fAttn``...): a Python int the exporter's ``forward_split`` uses;
  the plan updates it like any other attribute, so plans replay with it.
- ultralytics ``Attention`` (YOLO11's ``C2PSA``/``PSA``) ends with ``.view(B, C, H, W)`` where ``C`` is read
  from its input's shape, a width the trace cannot tie to the heads: these modules are kept whole (passed to
  ``ignore``; reports say "ignored by user"), the rest of the network is pruned.

:func:`save_yolo` writes ultralytics' own checkpoint format (a pickled dict with the module under ``"model"``,
as ``YOLO.save`` and the trainer write it) plus a ``"prunekit"`` entry holding the plans as JSON, so
``ultralytics.YOLO("pruned.pt")``, ``yolo predict/val/export`` use it unchanged. Ultralytics' trainer
rebuilds every model from ``model.yaml``: :func:`prune_yolo` keeps to widths a yaml can state and writes them
there (:mod:`prunekit.models.yolo_yaml`), so a stock ``train()`` rebuilds the pruned model;
:func:`prunekit.models.yolo_train.finetune_yolo` trains any pruned model without a rebuild.

>>> m = load_yolo("yolov8n.yaml")
>>> res = prune_yolo(m, ratio=0.5, imgsz=64)
>>> res.params_after < res.params_before, type(m).__name__
(True, 'DetectionModel')
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._atomic import atomic_write
from prunekit.config import PruneConfig, resolve
from prunekit.errors import ConfigError, ModelLoadError
from prunekit.measure.params import count_params
from prunekit.models.family import Family, FileFormat, register_family
from prunekit.models.files import unsafe_globals
from prunekit.models.yolo_modules import register
from prunekit.models.yolo_yaml import checkpoint_yaml, trainable_plan
from prunekit.plan import Plan
from prunekit.structured import pipeline
from prunekit.structured.api import CheckReport, check
from prunekit.structured.pipeline import PlanTransform, PruneResult, Scored

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: never reach the network (weights, fonts, hub)
DEFAULT_IMGSZ = 640
DEFAULT_RATIO = 0.3  # prune_yolo's ratio when neither a ratio, a config nor a target is given
_ARG_TYPES = (str, int, float, bool, type(None))


def import_ultralytics() -> Any:
    """The ``ultralytics`` package with prunekit's layers registered; ModelLoadError when it is missing."""
    try:
        import ultralytics
    except ImportError as err:
        raise ModelLoadError('ultralytics:NAME specs need ultralytics: pip install "prunekit[yolo]"') from err
    register()  # the Prunekit<Layer> names a pruned checkpoint's yaml may use, for a later train()
    return ultralytics


def load_yolo(spec: str) -> nn.Module:
    """Build ``NAME.yaml`` (random weights) or read a local ultralytics ``.pt``; return the model, fp32, eval.

    ``.pt`` files are read with ultralytics' restricted loader (``weights_only=True`` plus an allow-list of
    ultralytics/torch classes): no code from the file runs, and nothing is downloaded.

    >>> type(load_yolo("yolo11n.yaml")).__name__
    'DetectionModel'
    """
    ultralytics = import_ultralytics()
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        try:
            if _output_module(spec) == "RTDETRDecoder":  # YOLO() cannot tell RT-DETR's task; RTDETR() can
                yolo = ultralytics.RTDETR(spec)
            else:
                yolo = ultralytics.YOLO(spec, verbose=False)
        except (FileNotFoundError, KeyError, TypeError, ValueError, NotImplementedError) as err:
            raise ModelLoadError(f"ultralytics cannot build {spec!r}: {type(err).__name__}: {err}") from err
        return yolo.model.float().eval()
    if path.suffix != ".pt":
        raise ModelLoadError(f"ultralytics specs are NAME.yaml or a local .pt checkpoint, got {spec!r}")
    return read_checkpoint(path).float().eval()


def read_checkpoint(path: Path) -> nn.Module:
    """The module an ultralytics ``.pt`` holds, in the dtype it was stored in (released weights are fp16)."""
    if not path.is_file():
        raise ModelLoadError(f"no such file: {path} (prunekit never downloads weights)")
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except (TypeError, RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot read ultralytics checkpoint {path}: {first}") from err
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{path} is not an ultralytics checkpoint (no module under 'model' or 'ema')")
    return model


def _output_module(spec: str) -> str | None:
    """Name of the yaml's last head module (``Detect``, ``Segment``, ``RTDETRDecoder``...), or None."""
    from ultralytics.nn.tasks import yaml_model_load

    head = yaml_model_load(spec).get("head") or [[None]]
    return head[-1][-2] if len(head[-1]) >= 2 else None


def default_input_shape(spec: str) -> tuple[int, ...]:
    """Input shape for an ``ultralytics:`` spec: ``(1, channels, 640, 640)`` (``imgsz`` of a checkpoint).

    >>> default_input_shape("yolov8n.yaml")
    (1, 3, 640, 640)
    """
    model = load_yolo(spec)
    args = getattr(model, "args", None)
    imgsz = args.get("imgsz", DEFAULT_IMGSZ) if isinstance(args, dict) else DEFAULT_IMGSZ
    side = int(imgsz if isinstance(imgsz, int) else max(imgsz))
    return (1, _channels(model), side, side)


def _channels(model: nn.Module) -> int:
    yaml = getattr(model, "yaml", None)
    return int(yaml.get("channels", 3)) if isinstance(yaml, dict) else 3


def detector_of(model: Any) -> nn.Module:
    """The ultralytics nn.Module inside ``model`` (a ``YOLO`` object or the module itself)."""
    inner = getattr(model, "model", None)
    if isinstance(getattr(inner, "model", None), nn.Sequential):  # a YOLO object (itself an nn.Module)
        model = inner
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "model", None), nn.Sequential):
        raise ConfigError(
            f"expected an ultralytics YOLO object or model (with a .model Sequential), "
            f"got {type(model).__name__}"
        )
    return model


def example_inputs(model: Any, imgsz: int = DEFAULT_IMGSZ) -> torch.Tensor:
    """A fixed random image batch ``(1, channels, imgsz, imgsz)``; ``imgsz`` must be a multiple of 32.

    >>> example_inputs(load_yolo("yolov8n.yaml"), 64).shape
    torch.Size([1, 3, 64, 64])
    """
    if not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise ConfigError(f"imgsz must be a positive multiple of 32 (YOLO's largest stride), got {imgsz!r}")
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, _channels(detector_of(model)), imgsz, imgsz), generator=generator)


def _without_feats(out: Any) -> Any:
    if isinstance(out, dict):
        return {k: _without_feats(v) for k, v in out.items() if k != "feats"}
    if isinstance(out, (list, tuple)):
        return type(out)(_without_feats(v) for v in out)
    return out


class HeadOutputs(nn.Module):
    """The ultralytics model seen through the outputs that must keep their shapes (all but ``feats``).

    It shares the model's layers under the same names (``model.0.conv.weight``...), so a plan made on it
    applies to the ultralytics model itself, and cutting it cuts the model. It runs with every head's
    ``export`` flag off, so the raw predictions of every branch are outputs: in export mode a YOLO26 head
    returns only its one-to-many decode, and its one-to-one branch (still computed) would look like dead
    channels free to cut, though ``end2end`` inference and training read it.

    >>> m = load_yolo("yolov8n.yaml")
    >>> [n for n, _ in HeadOutputs(m).named_parameters()] == [n for n, _ in m.named_parameters()]
    True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.model
        self._forward = model.forward  # a bound method, not a submodule: names stay those of the model

    def deployed(self) -> nn.Module:
        """The ultralytics model these layers belong to, as it runs (its heads in their own export mode):
        what a latency target times (:func:`~prunekit.structured.pipeline.deployed_form`)."""
        return self._forward.__self__

    def forward(self, x: torch.Tensor) -> Any:
        heads = [m for m in self.model.modules() if getattr(m, "export", None) is True]
        for m in heads:
            m.export = False
        try:
            return _without_feats(self._forward(x))
        finally:
            for m in heads:
                m.export = True


def _c2f_attrs(model: nn.Module, plan: Plan) -> dict[str, dict[str, list[int]]]:
    """Plan attribute updates for ``c`` of every C2f-like module (``cv1`` yields ``2 * c`` channels)."""
    attrs = {}
    for name, module in model.named_modules():
        c = getattr(module, "c", None)
        conv = getattr(getattr(module, "cv1", None), "conv", None)
        if not (hasattr(module, "forward_split") and isinstance(c, int) and isinstance(conv, nn.Conv2d)):
            continue
        weight = f"{name}.cv1.conv.weight"
        removed = len(plan.removals.get(weight, {}).get(0, []))
        if conv.out_channels == 2 * c and removed:
            attrs[name] = {"c": [c, (conv.out_channels - removed) // 2]}
    return attrs


def _ignore(detector: nn.Module, ignore: Iterable[str | nn.Module]) -> tuple[str | nn.Module, ...]:
    """The user's ``ignore`` plus every ultralytics ``Attention`` module (kept whole, see the module doc)."""
    from ultralytics.nn.modules.block import Attention

    return (*ignore, *(m for m in detector.modules() if isinstance(m, Attention)))


def _validate_common(model: nn.Module) -> None:
    floating = {p.dtype for p in model.parameters()}
    if floating - {torch.float32}:
        raise ConfigError(
            f"prune an fp32 model (call .float() first); this one has {sorted(map(str, floating))}"
        )


class C2fAttrs:
    """Plan transform: ``c`` of every C2f-like module, and the ultralytics facts of the plan in its meta."""

    def __init__(self, detector: nn.Module, imgsz: int, trainable: bool) -> None:
        self.detector, self.imgsz, self.trainable = detector, imgsz, trainable

    def __call__(self, plan: Plan, scored: Scored | None = None) -> Plan:
        for name, attrs in _c2f_attrs(self.detector, plan).items():
            plan.attrs.setdefault(name, {}).update(attrs)
        task = getattr(self.detector, "task", None)
        plan.meta["ultralytics"] = {"imgsz": self.imgsz, "task": task, "trainable": self.trainable}
        plan.meta["ultralytics"].setdefault("kept_for_yaml", [])
        return plan


class YamlTrainable:
    """Plan transform: keep whole every group whose cut ``model.yaml`` cannot state
    (:func:`~prunekit.models.yolo_yaml.trainable_plan`); ``yaml`` is then the yaml of the plan."""

    def __init__(self, detector: nn.Module, finish: C2fAttrs, stock_modules: bool = True) -> None:
        self.detector, self.finish, self.stock_modules = detector, finish, stock_modules
        self.yaml: dict | None = None

    def __call__(self, plan: Plan, scored: Scored) -> Plan:
        def finish(model: nn.Module, plan: Plan) -> Plan:
            return self.finish(plan)

        try:
            plan, self.yaml, kept, why = trainable_plan(
                self.detector,
                HeadOutputs,
                scored.example_inputs,
                plan,
                scored.report,
                finish,
                stock_modules=self.stock_modules,
                scores=scored.scores,
            )
        except ValueError as err:
            raise ConfigError(
                f"cannot state this model's pruned widths in its yaml ({err}); prune with trainable=False "
                "(`prunekit yolo prune --free`) and fine-tune with finetune_yolo"
            ) from err
        plan.meta["ultralytics"]["kept_for_yaml"] = sorted(kept)
        plan.meta["ultralytics"]["kept_for_yaml_why"] = {str(g): why[g] for g in sorted(kept)}
        return plan


def prune_yolo(
    model: Any,
    config: PruneConfig | None = None,
    *,
    imgsz: int = 320,
    trainable: bool = True,
    ratio: float | None = None,
    criterion: str | None = None,
    scope: str | None = None,
    ignore: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    max_ratio: float | None = None,
    target: Any = None,
    data: Any = None,
    loss_fn: Any = None,
    stock_modules: bool = True,
) -> PruneResult:
    """Prune an ultralytics model (or the model inside a ``YOLO`` object) in place; return the PruneResult.

    Head outputs keep their shapes (classes, DFL bins, masks, keypoints, angles); the neck and backbone are
    pruned by :func:`prunekit.prune`'s road (:mod:`prunekit.structured.pipeline`) with the options of a
    :class:`prunekit.PruneConfig` (``config``, or keywords; ``ratio`` defaults to 0.3 here), this module's
    plan transforms added. ``imgsz`` is the side of the traced example image (any multiple of 32; the
    pruned model runs at every size). A ``YOLO`` object's cached predictor is dropped so the next
    ``predict`` uses the pruned layers.

    ``trainable=True`` keeps to widths that ``model.yaml`` can state and writes them into ``model.yaml``, so
    ultralytics' stock ``train()`` rebuilds the pruned model (see :mod:`prunekit.models.yolo_yaml`).
    ``stock_modules=True`` (the default) names only ultralytics' modules, so ``yolo train`` in a process that
    never imports prunekit rebuilds it; widths must then be multiples of 8 (``round_to`` defaults to 8) and
    widths ultralytics derives inside a layer (head hidden convs, SPPF, bottlenecks) are cut to what
    ultralytics will derive, or stay whole where that is out of reach.
    ``stock_modules=False`` cuts those too, and any width (``round_to`` as given, by default none, as
    ``trainable=False``), stated in ``Prunekit<Layer>`` rows (:mod:`prunekit.models.yolo_modules`): the saved
    modules are
    ultralytics' own, but a process that trains from that yaml must register the names first
    (``load_yolo`` and ``prune_yolo`` do; else :func:`prunekit.models.yolo_modules.register`), and without
    them its ``train()`` fails on the unknown name (never silently dense). ``trainable=False`` prunes
    freely; a stock ``train()`` then fails loudly and :func:`prunekit.models.yolo_train.finetune_yolo`
    fine-tunes it.

    >>> m = load_yolo("yolov8n.yaml")
    >>> round(prune_yolo(m, ratio=0.5, imgsz=64).params_ratio, 2), m.yaml["width_multiple"]
    (0.37, 1.0)
    >>> round(prune_yolo(load_yolo("yolov8n.yaml"), ratio=0.5, imgsz=64, trainable=False).params_ratio, 2)
    0.25
    """
    cfg = resolve(
        PruneConfig, config, "prune_yolo", "ratio", ratio=ratio, criterion=criterion, scope=scope,
        ignore=ignore, round_to=round_to, max_ratio=max_ratio, target=target, data=data, loss_fn=loss_fn,
    )  # fmt: skip
    if config is None and ratio is None and cfg.target is None:
        cfg = cfg.replace(ratio=DEFAULT_RATIO)
    detector = detector_of(model)
    _validate_common(detector)
    x = example_inputs(detector, imgsz)
    cfg = cfg.replace(ignore=_ignore(detector, cfg.ignore))
    finish = C2fAttrs(detector, imgsz, trainable)
    yaml_step = YamlTrainable(detector, finish, stock_modules) if trainable else None
    transforms: list[PlanTransform] = [finish] if yaml_step is None else [finish, yaml_step]
    if trainable and stock_modules and cfg.round_to is None:  # a stock row rounds its width up to 8
        cfg = cfg.replace(round_to=8)
    view = HeadOutputs(detector)
    result = pipeline.run(detector, x, cfg, verb="prune_yolo", view=view, transforms=transforms)
    yaml = yaml_step.yaml if yaml_step is not None else None
    detector.yaml = yaml if yaml is not None else checkpoint_yaml(detector)  # what the trainer rebuilds
    if hasattr(model, "predictor"):
        model.predictor = None
    return result


def check_yolo(
    model: Any, config: PruneConfig | None = None, *, imgsz: int = 320, **options: Any
) -> CheckReport:
    """Prune a copy and compare it with the masked reference on all kept outputs; ``model`` is untouched.

    ``config`` / ``options`` as for :func:`prunekit.check` (``ratio`` defaults to 0.5).

    >>> check_yolo(load_yolo("yolov8n.yaml"), ratio=0.5, imgsz=64).ok
    True
    """
    cfg = resolve(PruneConfig, config, "check_yolo", "ratio", **options)
    detector = detector_of(model)
    _validate_common(detector)
    cfg = cfg.replace(ignore=_ignore(detector, cfg.ignore))
    return check(HeadOutputs(detector), example_inputs(detector, imgsz), cfg)


def sync_c2f(model: nn.Module) -> nn.Module:
    """Set ``c`` of every C2f-like module from its ``cv1`` width (for models pruned by a plan without it).

    >>> sync_c2f(load_yolo("yolov8n.yaml")).model[2].c
    16
    """
    for module in detector_of(model).modules():
        conv = getattr(getattr(module, "cv1", None), "conv", None)
        if (
            hasattr(module, "forward_split")
            and isinstance(getattr(module, "c", None), int)
            and conv is not None
        ):
            module.c = conv.out_channels // 2
    return model


def _train_args(detector: nn.Module) -> dict[str, Any]:
    args = getattr(detector, "args", None)
    args = vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else args
    if not isinstance(args, dict):
        return {}
    return {k: v for k, v in args.items() if isinstance(v, _ARG_TYPES) or _is_int_list(v)}


def _is_int_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)


def save_yolo(
    model: Any,
    path: str | os.PathLike,
    *,
    plans: Plan | Iterable[Plan] | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` as an ultralytics checkpoint that ``ultralytics.YOLO(path)`` loads; return the path.

    The file is ultralytics' own format (a pickled dict, ``"model"`` the module; ``half=True`` stores fp16
    like ultralytics' released weights, the default fp32 reloads bit-exactly). ``plans`` (JSON) are kept under
    ``"prunekit"``. The model itself is not changed; the file is written atomically (temp file + rename).

    >>> m = load_yolo("yolov8n.yaml"); res = prune_yolo(m, ratio=0.3, imgsz=64)
    >>> save_yolo(m, "/tmp/pruned-doc.pt", plans=res.plan).name
    'pruned-doc.pt'
    """
    ultralytics = import_ultralytics()
    detector = detector_of(model)
    plan_list = [plans] if isinstance(plans, Plan) else list(plans or [])
    if any(not isinstance(p, Plan) for p in plan_list):
        raise ConfigError("plans must be a prunekit Plan or a list of Plans")
    path = Path(path)
    if path.suffix != ".pt":
        raise ConfigError(f"ultralytics checkpoints end in .pt, got {path.name!r}")
    saved = sync_c2f(copy.deepcopy(detector)).eval()
    saved.yaml = checkpoint_yaml(saved)
    saved.args = _train_args(detector)
    if hasattr(saved, "criterion"):
        saved.criterion = None
    saved = saved.half() if half else saved.float()
    for p in saved.parameters():
        p.requires_grad = False
    ckpt = {
        "date": datetime.now(timezone.utc).isoformat(),
        "version": ultralytics.__version__,
        "epoch": -1,
        "best_fitness": None,
        "model": saved,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": saved.args,
        "train_metrics": None,
        "prunekit": {"plans": [p.to_dict() for p in plan_list], "params": count_params(saved).total},
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return path


def prune_to_file(
    spec: str,
    out: str | os.PathLike,
    config: PruneConfig | None = None,
    *,
    imgsz: int = 320,
    half: bool | None = None,
    trainable: bool = True,
    seed: int | None = None,
    stock_modules: bool = True,
    **options: Any,
) -> PruneResult:
    """Load ``spec`` (``[ultralytics:]NAME.yaml`` or an ultralytics ``.pt``), :func:`prune_yolo` it with
    ``config`` or ``options`` (those of :class:`prunekit.PruneConfig`) and write ``out`` with
    :func:`save_yolo`; ``out`` must end in ``.pt`` and is checked before anything is loaded.

    ``half=None`` stores the weights in the input's dtype (fp16 for a released ``.pt``, fp32 for a yaml);
    ``seed`` fixes a yaml's random initialisation (see :func:`~prunekit.models.spec.load_model`)."""
    if Path(out).suffix != ".pt":
        raise ConfigError(f"--out must name a .pt file (ultralytics' format), got {Path(out).name!r}")
    name = spec.removeprefix("ultralytics:")
    if Path(name).suffix == ".pt":
        stored = read_checkpoint(Path(name))
        half = next(stored.parameters()).dtype == torch.float16 if half is None else half
        model = stored.float().eval()
    else:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = load_yolo(name)
    result = prune_yolo(
        model, config, imgsz=imgsz, trainable=trainable, stock_modules=stock_modules, **options
    )
    save_yolo(model, out, plans=result.plan, half=bool(half))
    return result


def is_ultralytics_spec(spec: str) -> bool:
    """``ultralytics:...``, a model ``.yaml`` (ultralytics' model configs), or a ``.pt`` file whose pickle
    needs ultralytics classes (read from the file's pickle opcodes; nothing is unpickled).

    >>> is_ultralytics_spec("ultralytics:yolov8n.yaml"), is_ultralytics_spec("torchvision:resnet18")
    (True, False)
    """
    path = Path(spec)
    if spec.startswith("ultralytics:") or path.suffix in (".yaml", ".yml"):
        return True
    if path.suffix == ".pt" and path.is_file():
        return any(name.split(".", 1)[0] == "ultralytics" for name in unsafe_globals(path))
    return False


FAMILY = register_family(
    Family(
        "ultralytics",
        load_yolo,
        form="ultralytics:NAME.yaml",
        requires="ultralytics",
        extra="yolo",
        input_shape=default_input_shape,
        local_paths=True,
        file_format=FileFormat(".pt", "an ultralytics checkpoint", is_ultralytics_spec, prune_to_file),
    )
)
