"""Pruned ultralytics detectors through ultralytics' own exporter, and proof that the exports box alike.

A checkpoint written by :func:`prunekit.models.ultralytics.save_yolo` (the yaml-trainable kind or the
``trainable=False`` / ``--free`` kind) is an ordinary ultralytics ``.pt``; :func:`export_checkpoint` runs
``YOLO(pt).export(format=...)`` on it, and :func:`predict_agreement` runs ``YOLO(pt).predict`` and
``YOLO(exported).predict`` on the same images and matches their boxes (:func:`match_boxes`).

Export, step by step:

- The checkpoint is copied into a scratch directory next to the output and exported from there, because
  ultralytics writes every export next to the ``.pt`` it was given; the user's file and its directory are
  left as they were. The finished file or directory is then moved onto ``out_dir / NAME`` with one rename
  (:mod:`prunekit._atomic`), so an output exists only complete; a failed export leaves nothing behind.
- Nothing is downloaded: ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=False`` are set (ultralytics then only
  warns about a requirement it would have upgraded, e.g. its pinned ``pnnx``), ONNX is exported with
  ``simplify=False`` (``onnxslim`` is not a dependency), and no INT8 calibration set is asked for (fp32
  exports only). ``litert`` (``.tflite``; ultralytics 8.4 calls TFLite ``litert`` and maps ``tflite`` to
  it) needs ``litert-torch`` and ``ai-edge-litert``; without them the export fails with ultralytics'
  own first error line, e.g. ``No module named 'litert_torch'``.

Agreement: both predicts use the same square letterbox (``rect=False``; a static export only takes the
exported ``imgsz``), the same ``conf`` and ``iou``, on CPU. Boxes are paired greedily by IoU (pairs of
IoU >= ``min_iou``, highest first, each box used once); per image the result gives the matched fraction
(matched / the larger box count), the largest ``1 - IoU`` over matched pairs, the share of matched pairs of
the same class, the largest confidence difference, and that difference over the pairs whose classes differ
(a class flip with equal confidences is a tie, see :attr:`BoxAgreement.ok`). Each format has a
:class:`BoxTolerance`: fp32 runtimes must match every box; ultralytics compiles OpenVINO models with the
CPU plugin's default precision, which is bf16 on CPUs with bf16 units (:func:`openvino_precision`), and
there the tolerance is that of bf16 (scores differ in the third digit, and a box with a score near ``conf``
may be on one side only).

>>> a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
>>> [(i, j, round(v, 2)) for i, j, v in match_boxes(a, a[[1, 0]] + 1)]
[(0, 1, 0.68), (1, 0, 0.68)]
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunekit._atomic import atomic_dir, atomic_write, clean_stale
from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError, ExportError, ModelLoadError

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no downloads (fonts, assets, calibration images)
os.environ.setdefault("YOLO_AUTOINSTALL", "False")  # ultralytics: never pip-install a requirement itself

FORMATS = ("onnx", "torchscript", "openvino", "ncnn", "litert")
ALIASES = {"tflite": "litert"}
PACKAGES = {
    "onnx": ("onnx", "onnxruntime"),
    "torchscript": (),
    "openvino": ("openvino",),
    "ncnn": ("ncnn", "pnnx"),
    "litert": ("litert_torch", "ai_edge_litert"),
}
DIR_FORMATS = ("openvino", "ncnn")  # formats ultralytics writes as a directory
MATCH_IOU = 0.5


@dataclass(frozen=True)
class BoxTolerance:
    """How closely an export's boxes must follow the ``.pt``'s: the least matched fraction, the largest
    ``1 - IoU`` of a matched pair, the least class agreement, the largest confidence difference."""

    matched: float = 1.0
    iou_deficit: float = 1e-3
    classes: float = 1.0
    conf_diff: float = 1e-3


FP32 = BoxTolerance()
BF16 = BoxTolerance(matched=0.9, iou_deficit=0.05, classes=0.9, conf_diff=0.03)
TOLERANCES = {"onnx": FP32, "torchscript": FP32, "openvino": FP32, "ncnn": FP32, "litert": FP32}


def _ultralytics() -> Any:
    from prunekit.models.ultralytics import import_ultralytics

    return import_ultralytics()


def normalize_format(fmt: str) -> str:
    """``fmt`` as ultralytics names it (``tflite`` -> ``litert``); ConfigError for any other name.

    >>> normalize_format("TFLite"), normalize_format("onnx")
    ('litert', 'onnx')
    """
    name = ALIASES.get(str(fmt).strip().lower(), str(fmt).strip().lower())
    if name not in FORMATS:
        known = ", ".join((*FORMATS, *ALIASES))
        raise ConfigError(f"unknown export format {fmt!r}; choose from {known}")
    return name


def check_detector(pt: str | os.PathLike) -> Path:
    """``pt`` as a Path if it is an ultralytics detection checkpoint; else ModelLoadError / ConfigError."""
    path = Path(pt)
    if path.suffix != ".pt":
        raise ConfigError(f"expected an ultralytics .pt checkpoint, got {path.name!r}")
    _ultralytics()
    from ultralytics.nn.tasks import guess_model_task

    from prunekit.models.ultralytics import read_checkpoint

    task = guess_model_task(read_checkpoint(path))
    if task != "detect":
        raise ConfigError(f"{path} is a {task} model, not a detector (task 'detect')")
    return path


def output_name(pt: str | os.PathLike, fmt: str) -> str:
    """The name ultralytics gives the export of ``pt`` to ``fmt`` (next to the ``.pt``).

    >>> output_name("runs/p.pt", "openvino"), output_name("p.pt", "tflite")
    ('p_openvino_model', 'p.tflite')
    """
    stem = Path(pt).stem
    suffix = {"onnx": ".onnx", "torchscript": ".torchscript", "litert": ".tflite"}
    fmt = normalize_format(fmt)
    return f"{stem}{suffix[fmt]}" if fmt in suffix else f"{stem}_{fmt}_model"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_export_dir(path: Path) -> bool:
    if not (path / "metadata.yaml").is_file():
        raise ExportError(f"{path} exists and is not an ultralytics export (no metadata.yaml); not replaced")
    return True


def export_checkpoint(
    pt: str | os.PathLike,
    fmt: str,
    imgsz: int = 320,
    out_dir: str | os.PathLike | None = None,
    **export_args: Any,
) -> Path:
    """Export the ultralytics detector ``pt`` to ``fmt`` with ``YOLO(pt).export``; return the output path.

    ``fmt`` is one of :data:`FORMATS` (or ``tflite``); ``imgsz`` the (square, static) input side, a multiple
    of 32; ``out_dir`` (default: ``pt``'s directory) receives ``output_name(pt, fmt)``, a file or a
    directory, which replaces an earlier export of that name. ``export_args`` go to ultralytics' exporter
    (``opset``, ``batch``...). ``pt`` is never written, and the output appears only complete (see the module
    docstring). Raises ConfigError for a bad argument, ModelLoadError for a file that is not an ultralytics
    checkpoint, ExportError (ultralytics' first error line) when the export fails.
    """
    fmt = normalize_format(fmt)
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise ConfigError(f"imgsz must be a positive multiple of 32 (YOLO's largest stride), got {imgsz!r}")
    if any(k in export_args for k in ("format", "imgsz")):
        raise ConfigError("give format and imgsz as export_checkpoint's own arguments")
    source = check_detector(pt)
    out = Path(out_dir) if out_dir is not None else source.parent
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    target = out / output_name(source, fmt)
    if os.path.lexists(target) and not (target.is_dir() and (target / "metadata.yaml").is_file()):
        if target.is_dir() or target.is_symlink() or fmt in DIR_FORMATS:
            raise ConfigError(f"{target} exists and is not an earlier ultralytics export; not replaced")
    ultralytics = _ultralytics()
    if fmt == "onnx":
        export_args.setdefault("simplify", False)
    export_args.setdefault("device", "cpu")
    clean_stale(target)
    scratch = Path(tempfile.mkdtemp(dir=out, prefix=f".{target.name}.pk-{os.getpid()}-", suffix=".tmp"))
    try:
        copy = scratch / source.name
        shutil.copyfile(source, copy)
        try:
            produced = ultralytics.YOLO(str(copy), task="detect").export(
                format=fmt, imgsz=imgsz, verbose=False, **export_args
            )
        except Exception as err:  # ultralytics raises whatever its converter raised
            message = f"ultralytics cannot export {source.name} to {fmt}: {_first_line(err)}"
            raise ExportError(message) from err
        produced = Path(str(produced))
        if produced.name != target.name or not produced.exists():
            raise ExportError(f"ultralytics wrote {produced}, expected {target.name}")
        if produced.is_dir():

            def fill(tmp: Path) -> None:
                for item in produced.iterdir():
                    os.replace(item, tmp / item.name)

            atomic_dir(target, fill, replaceable=_is_export_dir)
        else:
            atomic_write(target, lambda tmp: os.replace(produced, tmp))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def bundled_images() -> list[Path]:
    """The images shipped inside the ultralytics package (``ultralytics/assets``: bus.jpg, zidane.jpg)."""
    root = Path(_ultralytics().__file__).parent / "assets"
    return sorted(root.glob("*.jpg"))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``xyxy`` boxes ``a`` (N, 4) and ``b`` (M, 4): an (N, M) tensor.

    >>> box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]])).tolist()
    [[0.3333333432674408]]
    """
    a, b = a.double(), b.double()
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union)).float()


def match_boxes(
    reference: torch.Tensor, other: torch.Tensor, min_iou: float = MATCH_IOU
) -> list[tuple[int, int, float]]:
    """Greedy IoU matching: ``(i, j, iou)`` pairs of ``reference[i]`` and ``other[j]``, highest IoU first,
    each box in at most one pair, only pairs with IoU >= ``min_iou``; sorted by ``i``.

    >>> match_boxes(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[5.0, 5, 6, 6]]))
    []
    """
    if not len(reference) or not len(other):
        return []
    iou = box_iou(reference, other)
    order = torch.argsort(iou.flatten(), descending=True, stable=True)
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs = []
    for flat in order.tolist():
        i, j = divmod(flat, iou.shape[1])
        value = float(iou[i, j])
        if value < min_iou:
            break
        if i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        pairs.append((i, j, value))
    return sorted(pairs)


@dataclass
class ImageAgreement(JsonData):
    """Boxes of one image: the ``.pt``'s (``n_reference``) against the export's (``n_exported``)."""

    image: str
    n_reference: int
    n_exported: int
    matched: int
    iou_deficit: float
    class_agreement: float
    conf_diff: float
    flip_conf_diff: float = 0.0
    _derived = ("matched_fraction",)

    @property
    def matched_fraction(self) -> float:
        """Matched pairs over the larger box count (1.0 when neither predicts a box)."""
        most = max(self.n_reference, self.n_exported)
        return self.matched / most if most else 1.0


@dataclass
class BoxAgreement(JsonData):
    """:func:`predict_agreement`'s result: per image, the worst case over them, latencies and the verdict."""

    format: str
    conf: float
    iou: float
    imgsz: int
    images: list[ImageAgreement]
    tolerance: BoxTolerance
    reference_ms: float | None = None
    exported_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    _derived = (
        "boxes", "matched_fraction", "iou_deficit", "class_agreement", "conf_diff", "flip_conf_diff", "ok",
    )  # fmt: skip

    @property
    def boxes(self) -> int:
        """Boxes the ``.pt`` predicts over all images."""
        return sum(i.n_reference for i in self.images)

    @property
    def matched_fraction(self) -> float:
        """The least matched fraction over the images."""
        return min((i.matched_fraction for i in self.images), default=1.0)

    @property
    def iou_deficit(self) -> float:
        """The largest ``1 - IoU`` of a matched pair over the images."""
        return max((i.iou_deficit for i in self.images), default=0.0)

    @property
    def class_agreement(self) -> float:
        """The least share of matched pairs with the same class over the images."""
        return min((i.class_agreement for i in self.images), default=1.0)

    @property
    def conf_diff(self) -> float:
        """The largest confidence difference of a matched pair over the images."""
        return max((i.conf_diff for i in self.images), default=0.0)

    @property
    def flip_conf_diff(self) -> float:
        """The largest confidence difference of a matched pair whose classes differ, over the images."""
        return max((i.flip_conf_diff for i in self.images), default=0.0)

    @property
    def ok(self) -> bool:
        """Boxes exist and every image is within :attr:`tolerance`. A pair whose classes differ while its
        confidences agree within ``tolerance.conf_diff`` is a tie the runtime's precision cannot order
        (the export's class scores as high in the ``.pt`` as the ``.pt``'s own, within that difference):
        classes pass when their agreement reaches ``tolerance.classes`` or every differing pair is such a
        tie."""
        tol = self.tolerance
        classes = self.class_agreement >= tol.classes or self.flip_conf_diff <= tol.conf_diff
        return (
            self.boxes > 0
            and self.matched_fraction >= tol.matched
            and self.iou_deficit <= tol.iou_deficit
            and classes
            and self.conf_diff <= tol.conf_diff
        )

    def to_dict(self) -> dict[str, Any]:  # the tolerance as a plain dict
        data = super().to_dict()
        data["tolerance"] = dict(vars(self.tolerance))
        return data


def compare_boxes(name: str, reference: Any, exported: Any, min_iou: float = MATCH_IOU) -> ImageAgreement:
    """Compare two ultralytics ``Boxes`` (``.xyxy``, ``.conf``, ``.cls``) of one image."""
    pairs = match_boxes(reference.xyxy.cpu(), exported.xyxy.cpu(), min_iou)
    ref_cls, exp_cls = reference.cls.cpu(), exported.cls.cpu()
    ref_conf, exp_conf = reference.conf.cpu(), exported.conf.cpu()
    same = [float(ref_cls[i] == exp_cls[j]) for i, j, _ in pairs]
    diffs = [abs(float(ref_conf[i] - exp_conf[j])) for i, j, _ in pairs]
    return ImageAgreement(
        image=name,
        n_reference=len(reference),
        n_exported=len(exported),
        matched=len(pairs),
        iou_deficit=max((1.0 - v for _, _, v in pairs), default=0.0),
        class_agreement=sum(same) / len(same) if same else 1.0,
        conf_diff=max(diffs, default=0.0),
        flip_conf_diff=max((d for d, ok in zip(diffs, same, strict=True) if not ok), default=0.0),
    )


def _format_of(exported: Path) -> str:
    name = exported.name
    for fmt in ("openvino", "ncnn"):
        if exported.is_dir() and name.endswith(f"_{fmt}_model"):
            return fmt
    by_suffix = {".onnx": "onnx", ".torchscript": "torchscript", ".tflite": "litert"}
    if exported.is_file() and exported.suffix in by_suffix:
        return by_suffix[exported.suffix]
    raise ConfigError(
        f"{exported} is not an ultralytics export (.onnx, .torchscript, .tflite, *_openvino_model/, "
        "*_ncnn_model/)"
    )


def openvino_precision() -> str:
    """The precision OpenVINO's CPU plugin runs a model at when none is asked for (``f32``, ``bf16``...);
    ultralytics' OpenVINO backend asks for none on x86."""
    import openvino as ov

    return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).removeprefix("<Type: ").strip("'>")


def _predict(model: Any, images: list[str], **args: Any) -> tuple[list[Any], float]:
    model.predict(images[:1], **args)  # warm-up: session creation, first-call allocations
    results = model.predict(images, **args)
    return results, statistics.median(r.speed["inference"] for r in results)


def predict_agreement(
    pt: str | os.PathLike,
    exported: str | os.PathLike,
    images: Sequence[str | os.PathLike] | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    *,
    imgsz: int = 320,
    min_iou: float = MATCH_IOU,
    tolerance: BoxTolerance | None = None,
) -> BoxAgreement:
    """Predict ``images`` (default :func:`bundled_images`) with ``YOLO(pt)`` and ``YOLO(exported)`` and
    match their boxes image by image (:func:`match_boxes`, pairs of IoU >= ``min_iou``).

    ``imgsz`` must be the side ``exported`` was exported at; ``conf`` and ``iou`` are ultralytics' predict
    thresholds. ``tolerance`` defaults to the format's (:data:`TOLERANCES`). Latencies are the median of
    ultralytics' own per-image inference time (``Results.speed``, ms) after one warm-up image.
    """
    pt_path = check_detector(pt)
    exported = Path(exported)
    if not exported.exists():
        raise ModelLoadError(f"no such export: {exported}")
    fmt = _format_of(exported)
    for name, value in (("conf", conf), ("iou", iou), ("min_iou", min_iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    paths = [Path(p) for p in (images if images is not None else bundled_images())]
    if not paths:
        raise ConfigError("no images to predict")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"no such image: {missing[0]}")
    ultralytics = _ultralytics()
    args = dict(imgsz=imgsz, conf=conf, iou=iou, rect=False, device="cpu", half=False)
    args |= dict(verbose=False, save=False)
    sources = [str(p) for p in paths]
    ref, ref_ms = _predict(ultralytics.YOLO(str(pt_path), task="detect"), sources, **args)
    try:
        got, got_ms = _predict(ultralytics.YOLO(str(exported), task="detect"), sources, **args)
    except Exception as err:  # the runtime's own error (missing package, wrong input size...)
        raise ExportError(f"ultralytics cannot run {exported.name}: {_first_line(err)}") from err
    rows = [compare_boxes(p.name, r.boxes, g.boxes, min_iou) for p, r, g in zip(paths, ref, got, strict=True)]
    notes, default = [], TOLERANCES[fmt]
    if fmt == "openvino":
        precision = openvino_precision()
        notes.append(f"OpenVINO ran at its CPU default precision, {precision} (ultralytics sets none)")
        default = BF16 if precision in ("bf16", "bfloat16", "f16", "float16") else FP32
    return BoxAgreement(
        format=fmt,
        conf=float(conf),
        iou=float(iou),
        imgsz=imgsz,
        images=rows,
        tolerance=tolerance or default,
        reference_ms=ref_ms,
        exported_ms=got_ms,
        notes=notes,
    )
