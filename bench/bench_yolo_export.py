"""Pruned YOLO through ultralytics' own exporter: does each format export, and does it box like the .pt?

For YOLOv8n and YOLO11n: train the dense model briefly on prunekit's offline scenes set (digits on real
photographs, :mod:`prunekit.models.yolo_scenes`), prune it at ratio 0.5 both ways (the yaml-trainable
checkpoint and the ``--free`` one), fine-tune each pruned checkpoint briefly with ultralytics' trainer
(:func:`prunekit.models.yolo_train.finetune_yolo`, so it predicts real boxes), then for every format
``export_checkpoint`` and ``predict_agreement`` (:mod:`prunekit.models.yolo_export`) on ultralytics'
bundled bus.jpg / zidane.jpg plus scenes validation images. Trained weights are cached in ``--cache``.
Writes section ``yolo-export`` of docs/RESULTS.md and ``bench/results/yolo_export.json``.

    .venv/bin/python bench/bench_yolo_export.py --quick [--cache DIR] [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, common_args, finish, machine_line, markdown_table

from prunekit._atomic import write_text
from prunekit.models.yolo_export import FP32

MODELS = ("yolov8n.yaml", "yolo11n.yaml")
FORMATS = ("onnx", "torchscript", "openvino", "ncnn", "litert")
RATIO = 0.5
JSON = ROOT / "bench" / "results" / "yolo_export.json"


def budget(quick: bool) -> dict:
    """Training and data sizes: ``--quick`` is what a shared 2-core CPU affords in minutes."""
    if quick:
        return dict(n_train=300, n_val=60, imgsz=160, epochs=10, finetune=5, conf=0.001, scene_images=4)
    return dict(n_train=2000, n_val=400, imgsz=320, epochs=60, finetune=10, conf=0.25, scene_images=8)


def dense_checkpoint(cfg: str, data: Path, cache: Path, b: dict) -> Path:
    """``cfg`` trained from scratch on the scenes set (cached under ``cache/runs``)."""
    import ultralytics

    best = cache / "runs" / cfg.removesuffix(".yaml") / "weights" / "best.pt"
    if best.is_file():
        return best
    yolo = ultralytics.YOLO(cfg)
    yolo.train(
        data=str(data), epochs=b["epochs"], imgsz=b["imgsz"], batch=16, workers=0, device="cpu",
        plots=False, project=str(cache / "runs"), name=cfg.removesuffix(".yaml"), exist_ok=True,
        verbose=False, amp=False,
    )  # fmt: skip
    return Path(yolo.trainer.best)


def _params(pt: Path) -> int:
    from prunekit.models.ultralytics import load_yolo

    return sum(p.numel() for p in load_yolo(str(pt)).parameters())


@contextlib.contextmanager
def openvino_f32() -> Iterator[None]:
    """Within: every OpenVINO model is compiled with ``INFERENCE_PRECISION_HINT=f32`` (what ultralytics'
    backend does not ask for on x86), to tell the IR's agreement from that of bf16 inference."""
    import openvino as ov

    compile_model = ov.Core.compile_model

    def f32(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["config"] = {**(kwargs.get("config") or {}), "INFERENCE_PRECISION_HINT": "f32"}
        return compile_model(self, *args, **kwargs)

    ov.Core.compile_model = f32
    try:
        yield
    finally:
        ov.Core.compile_model = compile_model


def pruned_checkpoint(dense: Path, kind: str, data: Path, cache: Path, b: dict) -> tuple[Path, float]:
    """``dense`` pruned at :data:`RATIO` (``kind`` yaml or free), fine-tuned; the best.pt and params kept."""
    from prunekit.models.ultralytics import prune_to_file
    from prunekit.models.yolo_train import finetune_yolo

    name = f"{dense.parents[1].name}-{kind}"
    pruned = cache / "pruned" / f"{name}.pt"
    best = cache / "finetune" / name / "weights" / "best.pt"
    if pruned.is_file() and best.is_file():  # cached by an earlier run with the same --cache
        return best, _params(pruned) / _params(dense)
    pruned.parent.mkdir(parents=True, exist_ok=True)
    res = prune_to_file(str(dense), pruned, ratio=RATIO, imgsz=b["imgsz"], trainable=kind == "yaml")
    args = dict(data=str(data), epochs=b["finetune"], imgsz=b["imgsz"], batch=16, workers=0, device="cpu")
    args |= dict(plots=False, project=str(cache / "finetune"), name=name, exist_ok=True, verbose=False)
    yolo = finetune_yolo(pruned, amp=False, **args)
    return Path(yolo.trainer.best), res.params_ratio


def one(cfg: str, kind: str, data: Path, cache: Path, b: dict, images: list[Path]) -> list[dict]:
    """Every format for one pruned checkpoint: a record each (export ok, agreement, latency)."""
    from prunekit.errors import PruneError
    from prunekit.models.yolo_export import export_checkpoint

    pt, params_ratio = pruned_checkpoint(dense_checkpoint(cfg, data, cache, b), kind, data, cache, b)
    out_dir = cache / "exports" / f"{cfg.removesuffix('.yaml')}-{kind}"
    rows = []
    for fmt in FORMATS:
        row = {"model": cfg.removesuffix(".yaml"), "kind": kind, "ratio": RATIO, "params_ratio": params_ratio}
        row |= {"format": fmt, "imgsz": b["imgsz"], "conf": b["conf"]}
        t0 = time.perf_counter()
        try:
            path = export_checkpoint(pt, fmt, b["imgsz"], out_dir)
        except PruneError as err:
            rows.append(row | {"exported": False, "error": str(err)})
            print(rows[-1], flush=True)
            continue
        row |= {"exported": True, "export_s": time.perf_counter() - t0}
        rows.append(row | _agreement(pt, path, images, b))
        print({k: v for k, v in rows[-1].items() if k != "tolerance"}, flush=True)
        if fmt == "openvino":
            with openvino_f32():
                f32 = _agreement(pt, path, images, b, tolerance=FP32)
            rows.append(row | {"format": "openvino f32"} | f32)
            print({k: v for k, v in rows[-1].items() if k != "tolerance"}, flush=True)
    return rows


def _agreement(pt: Path, path: Path, images: list[Path], b: dict, **options: Any) -> dict:
    from prunekit.models.yolo_export import predict_agreement

    agree = predict_agreement(pt, path, images, conf=b["conf"], imgsz=b["imgsz"], **options)
    return {k: v for k, v in agree.to_dict().items() if k not in ("images", "format", "conf", "imgsz")}


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if row.get(key) is not None else "-"


def _row(r: dict) -> list:
    ok = ("yes" if r["ok"] else "NO") if r["exported"] else "-"
    ratio = f"{r['exported_ms'] / r['reference_ms']:.2f}" if r["exported"] else "-"
    return [
        r["model"], r["kind"], f"{r['params_ratio']:.3f}", r["format"], "yes" if r["exported"] else "no",
        r.get("boxes", "-"), _cell(r, "matched_fraction", ".3f"), _cell(r, "iou_deficit", ".1e"),
        _cell(r, "class_agreement", ".3f"), _cell(r, "conf_diff", ".1e"), ok,
        _cell(r, "reference_ms", ".1f"), _cell(r, "exported_ms", ".1f"), ratio,
    ]  # fmt: skip


def _exporter_versions() -> dict[str, str]:
    """Versions of the installed exporter packages whose versions decide a format's result."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("openvino", "ncnn", "pnnx", "litert-torch", "ai-edge-litert"):
        try:
            found[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def main() -> None:
    quick = "scenes 300/60 at 160 px, 10 + 5 epochs, conf 0.001"
    ap = argparse.ArgumentParser(parents=[common_args(quick=quick)])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "prunekit-bench-yolo-export"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import ultralytics

    from prunekit.models.yolo_export import bundled_images, openvino_precision
    from prunekit.models.yolo_scenes import make_scenes_dataset

    b = budget(args.quick)
    cache = Path(args.cache)
    data = make_scenes_dataset(
        cache / f"scenes{b['imgsz']}", n_train=b["n_train"], n_val=b["n_val"], imgsz=b["imgsz"]
    )
    val = sorted((data.parent / "images" / "val").glob("*.jpg"))[: b["scene_images"]]
    images = [*bundled_images(), *val]
    rows = []
    for cfg in MODELS:
        for kind in ("yaml", "free"):
            rows.extend(one(cfg, kind, data, cache, b, images))
    header = ["model", "kind", "params kept", "format", "exported", "boxes (.pt)", "matched", "1 - IoU"]
    header += ["classes", "conf diff", "within tol.", "pt ms", "export ms", "export / pt"]
    table = markdown_table(header, [_row(r) for r in rows], align="lllllrrrrrlrrr")
    errors = sorted({r["error"] for r in rows if not r["exported"]})
    text = "\n".join(
        [
            "## YOLO: pruned checkpoints through ultralytics' exporter",
            "",
            f"YOLOv8n and YOLO11n trained from scratch on the scenes set ({b['n_train']} train images,"
            f" {b['imgsz']} px, {b['epochs']} epochs), pruned at ratio {RATIO} as the yaml-trainable"
            f" checkpoint and the `--free` one, each fine-tuned {b['finetune']} epochs with ultralytics'"
            " trainer, then `YOLO(pt).export(format=...)` through `yolo_export.export_checkpoint` (offline,"
            " fp32, static imgsz) and `YOLO(exported).predict` against `YOLO(pt).predict` on ultralytics'"
            f" bus.jpg and zidane.jpg plus {len(val)} scenes val images, conf {b['conf']}, iou 0.7, square"
            " letterbox. *matched*: the least share of boxes paired (IoU >= 0.5, greedy) over the images;"
            " *1 - IoU*, *conf diff*: the largest over matched pairs; *classes*: the least share of pairs of"
            " the same class; *within tol.*: the format's tolerance (fp32: every box matched, 1 - IoU and"
            " conf diff <= 1e-3, classes equal or, where they differ, confidences equal within 1e-3: a tie)."
            " *pt ms*, *export ms*: median ultralytics inference time per image (1"
            " image, after one warm-up), measured in the same run on a shared 2-core machine (other"
            " engineers' jobs running), so ratios are rough. `bench/bench_yolo_export.py"
            f"{' --quick' if args.quick else ''}`; records in `bench/results/yolo_export.json`.",
            "",
            *table,
            "",
            f"OpenVINO's CPU plugin runs at {openvino_precision()} by default here and ultralytics asks for"
            " no precision on x86, so its rows are judged with the bf16 tolerance where that is bf16"
            " (matched >= 0.9, 1 - IoU <= 0.05, classes >= 0.9, conf diff <= 0.03). *openvino f32*: the"
            " same IR and the same ultralytics predict with every OpenVINO compile asked for"
            " `INFERENCE_PRECISION_HINT=f32` (patched in by the bench), judged with the fp32 tolerance: it"
            " tells the exported IR's agreement from that of bf16 inference.",
            "Ultralytics' NCNN backend leaves ncnn's thread count at its default (every core); on this"
            " shared, loaded machine its per-image times vary by 10x and more between rows and say little"
            " about the model.",
            *(
                [
                    'LiteRT rows need the `[litert]` extra (`pip install -e ".[litert]"`: litert-torch,'
                    " ai-edge-litert; about 700 MB), which the default install leaves out; ultralytics"
                    " converts through litert-torch's `torch.export` capture, no TensorFlow."
                ]
                if any(r["format"] == "litert" and r["exported"] for r in rows)
                else []
            ),
            *(f"Export failure: `{e}`" for e in errors),
            "",
            machine_line(args.threads, ultralytics=ultralytics.__version__, **_exporter_versions()),
        ]
    )
    finish("yolo-export", text, args)
    if not args.no_write:
        write_text(JSON, json.dumps({"records": rows}, indent=1) + "\n")
        print(f"wrote {JSON}")


if __name__ == "__main__":
    main()
