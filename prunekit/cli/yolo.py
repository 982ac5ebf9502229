"""``prunekit yolo prune | check | finetune``: ultralytics checkpoints in, ultralytics checkpoints out.

prunekit yolo check yolov8n.yaml --ratio 0.5 --imgsz 320
prunekit yolo prune yolov8n.pt --ratio 0.3 --out pruned.pt      # YOLO("pruned.pt"): val/predict/export/train
prunekit yolo prune yolov8n.pt --ratio 0.3 --free --out p.pt    # more pruning; stock `yolo train` refuses it
prunekit yolo prune dense.pt --recipe recipe.yaml --out p.pt    # train sparse/gradual, cut, fine-tune
prunekit yolo finetune pruned.pt --data data.yaml --epochs 10   # ultralytics' trainer, pruned arch kept
prunekit yolo scenes DIR --train 2000 --val 400 --imgsz 320     # the offline digits-on-photos benchmark
prunekit yolo export pruned.pt --format onnx,openvino,ncnn      # ultralytics' exporter; boxes vs the .pt
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._common import (
    JsonOpt,
    SeedOpt,
    app,
    before_after_table,
    console,
    new_output,
    writable,
    write_json,
)
from prunekit.cli.structured import (
    CriterionOpt,
    IgnoreOpt,
    MaxRatioOpt,
    RatioOpt,
    RoundToOpt,
    ScopeOpt,
    prune_config,
)
from prunekit.errors import ConfigError

yolo_app = typer.Typer(
    help="Ultralytics YOLO: prune exactly, save for YOLO(), fine-tune keeping the pruned arch."
)
app.add_typer(yolo_app, name="yolo")

YoloModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="NAME.yaml (e.g. yolov8n.yaml, yolo11n-seg.yaml) or a local ultralytics .pt file.",
    ),
]
ImgszOpt = Annotated[int, typer.Option("--imgsz", help="Side of the traced example image (multiple of 32).")]


@yolo_app.command("prune")
def prune(
    ctx: typer.Context,
    model: YoloModelArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="FILE.pt",
            help="Ultralytics checkpoint to write.",
            dir_okay=False,
            callback=new_output,
        ),
    ],
    ratio: RatioOpt = 0.3,
    imgsz: ImgszOpt = 320,
    criterion: CriterionOpt = "l2",
    scope: ScopeOpt = None,
    ignore: IgnoreOpt = None,
    round_to: RoundToOpt = None,
    max_ratio: MaxRatioOpt = 0.9,
    half: Annotated[
        bool | None,
        typer.Option(
            "--half/--fp32",
            help="Store fp16 (like ultralytics' releases) or fp32 weights; default: MODEL's own dtype.",
            show_default=False,
        ),
    ] = None,
    free: Annotated[
        bool,
        typer.Option(
            "--free",
            help="Prune widths model.yaml cannot state too (more pruning); stock `yolo train` then refuses "
            "the checkpoint and `prunekit yolo finetune` trains it.",
        ),
    ] = False,
    stock_modules: Annotated[
        bool,
        typer.Option(
            "--stock-modules/--prunekit-modules",
            help="--stock-modules: name only ultralytics' modules in model.yaml, so `yolo train` works in a "
            "process without prunekit (widths ultralytics derives - head hidden convs, SPPF, ... - follow "
            "what it derives, or stay whole). "
            "--prunekit-modules cuts those too, in Prunekit<Layer> rows that a training process must "
            "register first (prunekit.models.yolo_modules.register()).",
        ),
    ] = True,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            metavar="RECIPE.yaml",
            help="Recover while pruning, in ultralytics' trainer: sparsity training (or gradual pruning), "
            "the cut, fine-tuning, optional distillation from MODEL (a dense detector .pt). The recipe "
            "holds every pruning and training option (docs/YOLO.md, 'Recovery inside ultralytics' "
            "trainer').",
            dir_okay=False,
        ),
    ] = None,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Prune MODEL's channels (head outputs, classes, DFL bins kept); write an ultralytics checkpoint.

    By default the pruned widths are written into the checkpoint's model.yaml, so ultralytics' own
    `YOLO("pruned.pt").train()` (and `yolo train`) rebuilds the pruned model; --prunekit-modules cuts
    more, for training processes that register prunekit's module names. --recipe trains as it prunes."""
    from prunekit.models.ultralytics import prune_to_file

    if recipe is not None:
        options = ("ratio", "imgsz", "criterion", "scope", "ignore", "round_to", "max_ratio", "half", "free",
                   "stock_modules", "seed")  # fmt: skip
        # by name: recent typer carries its own copy of click (and of its ParameterSource enum)
        given = [n for n in options if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") != "DEFAULT"]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise ConfigError(
                f"with --recipe, the pruning options belong in the recipe, not on the command line ({flags})"
            )
        _run_recipe(model, out, recipe, json_path)
        return
    config = prune_config(ratio, criterion, scope, ignore, round_to, max_ratio)
    result = prune_to_file(
        model,
        out,
        config,
        imgsz=imgsz,
        half=half,
        trainable=not free,
        stock_modules=stock_modules,
        seed=seed,
    )
    write_json(json_path, result.to_dict() | {"checkpoint": str(out), "seed": seed})
    console.print(before_after_table(f"prunekit yolo prune {model}", result))
    train = "`prunekit yolo finetune`" if free else "ultralytics' own train() or `prunekit yolo finetune`"
    console.print(f"wrote {out}: use it with ultralytics.YOLO({str(out)!r}); fine-tune with {train}")


def _run_recipe(model: str, out: Path, recipe: Path, json_path: Path | None) -> None:
    from prunekit.models.yolo_recipe import load_recipe, run_recipe

    loaded = load_recipe(recipe)
    result = run_recipe(model.removeprefix("ultralytics:"), out, loaded, log=console.print)
    write_json(json_path, result.to_dict() | {"recipe": loaded.to_dict()})
    score = "n/a" if result.map50_95 is None else f"{result.map50_95:.4f}"
    console.print(
        f"wrote {out}: {result.method}{' + KD' if result.kd else ''}, params {result.params_before:,} -> "
        f"{result.params_after:,}, mAP50-95 {score}"
    )


@yolo_app.command("check")
def check(
    model: YoloModelArg,
    ratio: RatioOpt = 0.5,
    imgsz: ImgszOpt = 320,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Prune a copy of MODEL, compare it with the masked reference (MODEL unchanged); exit 1 if inexact."""
    import torch

    from prunekit.models.ultralytics import check_yolo, load_yolo

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a NAME.yaml's random initialisation
        net = load_yolo(model.removeprefix("ultralytics:"))
    report = check_yolo(net, ratio=ratio, imgsz=imgsz)
    write_json(json_path, report.to_dict() | {"seed": seed})
    console.print(
        f"{'exact' if report.ok else 'NOT EXACT'}: max |err| {report.max_abs_err:.2e}, "
        f"MACs x{report.macs_ratio:.3f}, "
        f"params x{report.params_ratio:.3f}; {report.n_prunable_groups} of {report.n_groups} groups prunable"
    )
    for group in report.pinned:
        console.print(f"  pinned {group['members'][0]} ({group['width']}): {'; '.join(group['reasons'][:1])}")
    if not report.ok:
        raise typer.Exit(1)


@yolo_app.command("finetune")
def finetune(
    model: Annotated[str, typer.Argument(metavar="PRUNED.pt", help="A pruned ultralytics checkpoint.")],
    data: Annotated[str, typer.Option("--data", help="Dataset yaml, as for `yolo train data=...`.")],
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    imgsz: Annotated[int, typer.Option("--imgsz")] = 640,
    batch: Annotated[int, typer.Option("--batch")] = 16,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    project: Annotated[
        str | None, typer.Option("--project", help="Runs directory (ultralytics').", callback=writable)
    ] = None,
    name: Annotated[str, typer.Option("--name")] = "finetune",
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            metavar="DENSE.pt",
            help="Distil from this (dense) ultralytics checkpoint: ultralytics' feature distillation.",
        ),
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Fine-tune PRUNED.pt with ultralytics' own trainer, keeping the pruned architecture."""
    from prunekit.models.yolo_train import finetune_yolo

    args = {"data": data, "epochs": epochs, "imgsz": imgsz, "batch": batch, "device": device, "name": name}
    yolo = finetune_yolo(model, teacher=teacher, **args, **({"project": project} if project else {}))
    box = getattr(yolo.metrics, "box", None)
    summary = {"best": str(yolo.trainer.best), "map50_95": float(box.map) if box is not None else None}
    write_json(json_path, summary)
    console.print(f"fine-tuned: {summary['best']} (mAP50-95 {summary['map50_95']})")


@yolo_app.command("scenes")
def scenes(
    out: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="New directory for the dataset (or one holding this very set)."),
    ],
    train: Annotated[int, typer.Option("--train", help="Training images.")] = 2000,
    val: Annotated[int, typer.Option("--val", help="Validation images.")] = 400,
    imgsz: Annotated[int, typer.Option("--imgsz", help="Image side (multiple of 32).")] = 320,
    max_objects: Annotated[int, typer.Option("--max-objects", help="Most digits per image.")] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write the offline detection benchmark (real digit scans on real photographs) in ultralytics' layout."""
    from prunekit.models.yolo_scenes import make_scenes_dataset

    data = make_scenes_dataset(out, n_train=train, n_val=val, imgsz=imgsz, max_objects=max_objects, seed=seed)
    console.print(f"dataset: {data}   (yolo train data={data})")


@yolo_app.command("export")
def export(
    model: Annotated[str, typer.Argument(metavar="PT", help="An ultralytics detection checkpoint (.pt).")],
    formats: Annotated[
        str,
        typer.Option(
            "--format",
            help="Comma-separated: onnx, torchscript, openvino, ncnn, litert (tflite).",
        ),
    ] = "onnx",
    imgsz: Annotated[
        int, typer.Option("--imgsz", help="Exported (static) input side, multiple of 32.")
    ] = 320,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            metavar="DIR",
            help="Where the exports go (default: PT's directory).",
            file_okay=False,
            callback=writable,
        ),
    ] = None,
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            help="Comma-separated images to compare boxes on (default: ultralytics' bus.jpg, zidane.jpg).",
        ),
    ] = None,
    conf: Annotated[float, typer.Option("--conf", help="Predict confidence threshold.")] = 0.25,
    iou: Annotated[float, typer.Option("--iou", help="Predict NMS IoU threshold.")] = 0.7,
    json_path: JsonOpt = None,
) -> None:
    """Export PT with ultralytics' own exporter, predict with PT and each export, compare their boxes.

    PT itself is never written; each export appears complete or not at all. Exit 1 when an export's boxes
    are outside its runtime's tolerance (or none are predicted: lower --conf)."""
    from rich.table import Table

    from prunekit.errors import ConfigError
    from prunekit.models.yolo_export import (
        check_detector,
        export_checkpoint,
        normalize_format,
        predict_agreement,
    )

    names = [normalize_format(f) for f in formats.split(",") if f.strip()]
    if not names:
        raise ConfigError("--format names no format")
    pictures = [Path(p.strip()) for p in images.split(",") if p.strip()] if images is not None else None
    missing = [str(p) for p in pictures or [] if not p.is_file()]
    if missing:
        raise ConfigError(f"no such image: {missing[0]}")
    check_detector(model)
    rows = []
    for fmt in dict.fromkeys(names):
        path = export_checkpoint(model, fmt, imgsz, out_dir)
        rows.append((path, predict_agreement(model, path, pictures, conf, iou, imgsz=imgsz)))
    table = Table(title=f"prunekit yolo export {model}: boxes of each export vs the .pt (conf {conf})")
    for column in ("format", "output", "boxes pt/export", "matched", "1-IoU", "classes", "conf diff"):
        table.add_column(column)
    for column in ("pt ms", "export ms", "within tolerance"):
        table.add_column(column)
    for path, agree in rows:
        exported = sum(i.n_exported for i in agree.images)
        table.add_row(
            agree.format,
            path.name,
            f"{agree.boxes}/{exported}",
            f"{agree.matched_fraction:.3f}",
            f"{agree.iou_deficit:.1e}",
            f"{agree.class_agreement:.3f}",
            f"{agree.conf_diff:.1e}",
            f"{agree.reference_ms:.1f}",
            f"{agree.exported_ms:.1f}",
            "yes" if agree.ok else "NO",
        )
    console.print(table)
    for path, agree in rows:
        console.print(f"wrote {path}")
        for note in agree.notes:
            console.print(f"{agree.format}: {note}")
    write_json(json_path, {"exports": [a.to_dict() | {"output": str(p)} for p, a in rows]})
    if not all(agree.ok for _, agree in rows):
        raise typer.Exit(1)
