"""YOLOv8n on real handwritten digits, offline: train, prune 30 % / 50 % of channels, fine-tune, measure.

Pipeline (everything local, CPU only):

1. ``make_digits_dataset``: scikit-learn's real 8x8 digit scans, upscaled and pasted on noisy canvases,
   YOLO txt labels, train/val split over disjoint scans, ``data.yaml``.
2. Train ``yolov8n.yaml`` (random init, 10 classes) with ultralytics' trainer.
3. For each ratio, two ways: ``prune_yolo(trainable=False)`` (free widths) + ``save_yolo`` (an ultralytics
   checkpoint) + ``finetune_yolo`` (ultralytics' trainer, module kept as it is); and ``prune_yolo`` with the
   default ``trainable=True`` (widths the checkpoint's yaml states) + ultralytics' stock
   ``YOLO("pruned.pt").train()``, which rebuilds the pruned model from that yaml.
4. Report mAP50-95 and mAP50 (ultralytics' validator on the val split), params, MACs, and batch-1 CPU
   latency of the fused model in PyTorch and of ultralytics' ONNX export in onnxruntime (1 thread each).

    .venv/bin/python examples/yolo_digits.py     # full run; writes the "yolo" section of docs/RESULTS.md
    .venv/bin/python examples/yolo_digits.py --quick --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _results import write_section  # noqa: E402

from prunekit.demo.run import environment  # noqa: E402
from prunekit.deploy.runtime import onnx_latency  # noqa: E402
from prunekit.measure.latency import measure_latency  # noqa: E402
from prunekit.measure.macs import count_macs  # noqa: E402
from prunekit.measure.params import count_params  # noqa: E402
from prunekit.models.ultralytics import HeadOutputs, example_inputs, load_yolo, prune_yolo, save_yolo  # noqa: E402
from prunekit.models.yolo_data import make_digits_dataset  # noqa: E402
from prunekit.models.yolo_train import finetune_yolo  # noqa: E402


def _train_args(args: argparse.Namespace, data: Path, name: str, epochs: int) -> dict:
    return dict(
        data=str(data),
        epochs=epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        workers=0,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(args.out / "runs"),
        name=name,
        exist_ok=True,
        seed=0,
        close_mosaic=max(1, epochs // 4),
    )


def measure(ckpt: Path, data: Path, args: argparse.Namespace) -> dict:
    """mAP (ultralytics' validator), params, MACs, PyTorch and onnxruntime latency of one checkpoint."""
    from ultralytics import YOLO

    metrics = YOLO(str(ckpt)).val(
        data=str(data), imgsz=args.imgsz, batch=args.batch, workers=0, plots=False, verbose=False,
        project=str(args.out / "runs"), name="val", exist_ok=True,
    )  # fmt: skip
    model = load_yolo(str(ckpt))
    x = example_inputs(model, args.imgsz)
    params, macs = count_params(model).total, count_macs(HeadOutputs(model), x)
    fused = model.fuse(verbose=False).eval()
    torch_ms = measure_latency(fused, x, runs=args.runs, warmup=10, threads=1).median_ms
    onnx = YOLO(str(ckpt)).export(format="onnx", imgsz=args.imgsz, simplify=False, verbose=False)
    ort_ms = onnx_latency(onnx, x, runs=args.runs, warmup=10, threads=1).median_ms
    return {
        "map50_95": float(metrics.box.map),
        "map50": float(metrics.box.map50),
        "params": params,
        "macs": macs,
        "torch_ms": torch_ms,
        "ort_ms": ort_ms,
    }


def run(args: argparse.Namespace) -> dict:
    from ultralytics import YOLO

    torch.set_num_threads(args.threads)
    t0 = time.time()
    data = make_digits_dataset(
        args.out / "digits", n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz, seed=0
    )
    dense = YOLO("yolov8n.yaml")
    dense.train(**_train_args(args, data, "dense", args.epochs))
    dense_ckpt = Path(dense.trainer.best)
    rows = {"dense": {**measure(dense_ckpt, data, args), "train_epochs": args.epochs}}
    print(json.dumps(rows["dense"]))
    for ratio, trainable in ((r, t) for r in args.ratios for t in (False, True)):
        tag = f"pruned{round(ratio * 100)} {'yaml, stock train' if trainable else 'free, finetune_yolo'}"
        model = load_yolo(str(dense_ckpt))
        res = prune_yolo(model, ratio=ratio, imgsz=args.imgsz, trainable=trainable)
        name = f"{tag.split()[0]}-{'yaml' if trainable else 'free'}"
        start = save_yolo(model, args.out / f"{name}.pt", plans=res.plan)
        no_ft = measure(start, data, args)
        ft_args = _train_args(args, data, name, args.ft_epochs)
        if trainable:
            tuned = YOLO(str(start))
            tuned.train(**ft_args)  # ultralytics' own trainer, no prunekit code involved
        else:
            tuned = finetune_yolo(start, **ft_args)
        rows[tag] = {
            **measure(Path(tuned.trainer.best), data, args),
            "ratio": ratio,
            "map50_95_before_ft": no_ft["map50_95"],
            "ft_epochs": args.ft_epochs,
            "prune_s": sum(res.seconds.values()),
        }
        print(json.dumps(rows[tag]))
    return {"rows": rows, "minutes": (time.time() - t0) / 60, "env": environment(), "args": _args_dict(args)}


def _args_dict(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def markdown(result: dict) -> str:
    rows, a, env = result["rows"], result["args"], result["env"]
    dense = rows["dense"]
    lines = [
        "## YOLO: YOLOv8n on pasted real digits (examples/yolo_digits.py)",
        "",
        f"Dataset: {a['n_train']} train / {a['n_val']} val images of {a['imgsz']} px, scikit-learn's real "
        "8x8 digit scans (disjoint scans for train and val) upscaled and pasted, 1-4 per image, 10 classes. "
        f"Dense yolov8n trained from scratch for {a['epochs']} epochs; each pruned model fine-tuned "
        f"{a['ft_epochs']} epochs with ultralytics' trainer, pruned architecture kept: *free* = "
        "`prune_yolo(trainable=False)` + `finetune_yolo`; *yaml* = `prune_yolo()` (widths the checkpoint's "
        "yaml states) + stock `YOLO('pruned.pt').train()`. "
        "mAP from ultralytics' validator on the val split; MACs at the training size; latency: batch 1, "
        f"{a['imgsz']} px, 1 thread, median of {a['runs']} runs, Conv+BN fused (PyTorch) / ultralytics' "
        "ONNX export (onnxruntime).",
        "",
        "| model | params | MACs | mAP50-95 pruned, no FT | mAP50-95 | mAP50 | PyTorch ms | ORT ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tag, r in rows.items():
        rel = "" if tag == "dense" else f" ({r['params'] / dense['params']:.2f}x)"
        mrel = "" if tag == "dense" else f" ({r['macs'] / dense['macs']:.2f}x)"
        before = "—" if tag == "dense" else f"{r['map50_95_before_ft']:.3f}"
        lines.append(
            f"| {tag} | {r['params'] / 1e6:.2f} M{rel} | {r['macs'] / 1e6:.0f} M{mrel} | {before} | "
            f"{r['map50_95']:.3f} | {r['map50']:.3f} | {r['torch_ms']:.1f} | {r['ort_ms']:.1f} |"
        )
    lines += [
        "",
        f"Budget: {result['minutes']:.0f} min wall on {env['cores']} shared cores ({env['cpu']}, torch "
        f"{env['torch']}), {datetime.date.today().isoformat()}. Small data and few epochs: the dense model "
        "is far from converged, so the figures show the pipeline and the relative cost of pruning, not a "
        "tuned detector. Latency on a shared machine varies by ~10-20 %.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/prunekit-yolo-digits"))
    parser.add_argument("--n-train", type=int, default=480)
    parser.add_argument("--n-val", type=int, default=120)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--ft-epochs", type=int, default=10)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny data and 1 epoch: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/RESULTS.md alone")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_val, args.imgsz, args.epochs, args.ft_epochs, args.runs = 32, 16, 96, 1, 1, 5
    result = run(args)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    print(text)
    if not args.no_write:
        write_section("yolo", text, ROOT / "docs" / "RESULTS.md")


if __name__ == "__main__":
    main()
