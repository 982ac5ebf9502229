"""Dense vs structurally pruned vs pruned + INT8, as ONNX files run in onnxruntime (deployment results).

For each model: export the dense and the pruned model with ``prunekit.export_onnx`` (verified against
PyTorch), quantize both to static INT8 with ``prunekit.quantize_onnx``, and measure in the same run: file
size, the parameter count held in the file, onnxruntime latency at batch 1 and 8 (median of interleaved
rounds), and accuracy where real data exists (the digits CNN). ResNet-50 and YOLOv8n have random weights
(no downloads), so instead of accuracy we report how closely INT8 follows fp32 (cosine of the outputs).

    .venv/bin/python bench/bench_deploy.py            # writes the `deploy` section of docs/RESULTS.md
    .venv/bin/python bench/bench_deploy.py --quick    # smaller budget, prints only
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import FirstOutput, common_args, finish, machine_line
from rich.console import Console

import prunekit as pk
from prunekit.demo.data import load_splits
from prunekit.demo.model import build_model
from prunekit.demo.stages import DemoConfig, DemoContext, channels_finetune, train_dense
from prunekit.deploy import export_onnx, onnx_accuracy, onnx_latency, quantize_onnx, run_onnx

console = Console()


def digits_models(quick: bool) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    cfg = DemoConfig(epochs=4 if quick else 15, finetune_epochs=2 if quick else 5, channel_ratio=0.5)
    ctx = DemoContext(cfg, load_splits(), Console(quiet=True), progress=False)
    dense = train_dense(build_model(cfg.seed), ctx)
    pruned = channels_finetune(copy.deepcopy(dense), ctx)
    s = ctx.splits
    info = {
        "input": torch.zeros(1, 1, 8, 8),
        "calib": list(s.x_train[:256].split(32)),
        "test": [(s.x_test, s.y_test)],
        "ratio": cfg.channel_ratio,
    }
    return dense, pruned, info


def torchvision_models(name: str, ratio: float, size: int) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    import torchvision

    torch.manual_seed(0)
    dense = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, size, size)
    pruned = copy.deepcopy(dense)
    pk.prune(pruned, x, ratio=ratio, round_to=8)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, size, size, generator=gen) for _ in range(4)]
    return dense, pruned, {"input": x, "calib": calib, "test": None, "ratio": ratio}


def yolo_models(ratio: float, size: int) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    from ultralytics import YOLO

    torch.manual_seed(0)
    dense = YOLO("yolov8n.yaml").model.eval()
    for m in dense.modules():  # ultralytics' own export path sets these: a fixed-shape, export-friendly head
        if type(m).__name__ == "Detect":
            m.export, m.format = True, "onnx"
    x = torch.randn(1, 3, size, size)
    pruned = copy.deepcopy(dense)
    pk.prune(pruned, x, ratio=ratio, round_to=8)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.rand(4, 3, size, size, generator=gen) for _ in range(4)]
    return FirstOutput(dense).eval(), FirstOutput(pruned).eval(), {
        "input": x, "calib": calib, "test": None, "ratio": ratio,
    }  # fmt: skip


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def measure(name: str, dense, pruned, info: dict, folder: Path, rounds: int, runs: int) -> list[dict]:
    x = info["input"]
    files = {}
    rows = []
    for tag, model in (("dense", dense), ("pruned", pruned)):
        fp32 = folder / f"{name}-{tag}.onnx"
        int8 = folder / f"{name}-{tag}.int8.onnx"
        t0 = time.perf_counter()
        exported = export_onnx(model, x, fp32, verify=True, dynamic_batch=True)
        t1 = time.perf_counter()
        quantize_onnx(fp32, int8, mode="static", calibration=info["calib"])
        t2 = time.perf_counter()
        params = pk.count_params(model).total
        files[f"{tag} fp32"] = (fp32, exported.initializer_params, params, t1 - t0, exported.max_abs_err)
        files[f"{tag} INT8"] = (int8, None, params, t2 - t1, None)
    probe = torch.cat(info["calib"])[:4]
    reference = {tag: run_onnx(files[f"{tag} fp32"][0], probe)[0] for tag in ("dense", "pruned")}
    batches = {1: x.expand(1, *x.shape[1:]).contiguous(), 8: x.expand(8, *x.shape[1:]).contiguous()}
    lat: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):  # interleave every file at every batch size, keep each one's best round
        for key, (path, *_rest) in files.items():
            for b, xb in batches.items():
                stats = onnx_latency(path, xb, runs=runs, warmup=3, threads=1)
                lat.setdefault((key, b), []).append(stats.median_ms)
    dense_b1 = min(lat[("dense fp32", 1)])
    for key, (path, init_params, params, seconds, err) in files.items():
        tag = key.split()[0]
        row = {
            "model": name,
            "variant": key,
            "bytes": path.stat().st_size,
            "params": params,
            "initializer_params": init_params,
            "b1_ms": min(lat[(key, 1)]),
            "b8_ms": min(lat[(key, 8)]),
            "seconds": seconds,
            "max_abs_err": err,
        }
        row["speedup_b1"] = dense_b1 / row["b1_ms"]
        row["speedup_b8"] = min(lat[("dense fp32", 8)]) / row["b8_ms"]
        if info["test"] is not None:
            row["accuracy"] = onnx_accuracy(path, info["test"])
        if key.endswith("INT8"):
            row["int8_cosine"] = cosine(run_onnx(path, probe)[0], reference[tag])
        rows.append(row)
        console.print(row)
    return rows


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def markdown(rows: list[dict], machine: str, elapsed: float, quick: bool, notes: dict) -> str:
    out = [
        "## Deployment: dense vs pruned vs pruned + INT8 in onnxruntime",
        "",
        f"`bench/bench_deploy.py`{' --quick' if quick else ''}. {machine} onnxruntime with 1 intra-op "
        "thread. Machine shared with other jobs: "
        f"latencies are the best of interleaved rounds. ({elapsed:.0f} s)",
        "",
        "Every file is written by `prunekit.export_onnx` (checked with onnx.checker and compared with "
        "PyTorch in onnxruntime at two batch sizes) and quantized by `prunekit.quantize_onnx(mode='static')` "
        "(QDQ, per-channel weights). 'pruned' = `prunekit.prune(ratio, round_to=8)` structural channel "
        f"pruning ({notes}). The digits CNN is trained on the real digits data (15 epochs; pruned: 50% of "
        "channels + 5 epochs fine-tune); its accuracy is onnxruntime's on the 450 test images. ResNet-50 and "
        "YOLOv8n have random weights (no downloads): instead of accuracy, 'INT8 cosine' is the cosine "
        "similarity of the INT8 file's outputs with its fp32 file's on 4 calibration-like inputs (INT8 of "
        "random weights is a hard case). ResNet-50 and YOLOv8n are calibrated on random inputs.",
        "",
        "| model | variant | file | params in file | params | b1 ms | b1 speedup | b8 ms | b8 speedup "
        "| accuracy | INT8 cosine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "-"
        cos = f"{r['int8_cosine']:.4f}" if "int8_cosine" in r else "-"
        init = f"{r['initializer_params']:,}" if r["initializer_params"] is not None else "(int8)"
        out.append(
            f"| {r['model']} | {r['variant']} | {r['bytes'] / 1024:,.0f} KiB | {init} | {r['params']:,} "
            f"| {_ms(r['b1_ms'])} | {r['speedup_b1']:.2f}x | {_ms(r['b8_ms'])} | {r['speedup_b8']:.2f}x "
            f"| {acc} | {cos} |"
        )
    out += [
        "",
        "Speedups are against the dense fp32 ONNX file of the same model in the same run. 'params in file' "
        "counts the float initializers of the fp32 file: BatchNorm is folded into the convolutions by the "
        "exporter, so it is the model's parameters minus the BatchNorm weights and biases, and the pruned "
        "file really holds only the pruned model's weights.",
    ]
    return "\n".join(out)


def main() -> None:
    quick = "small budget; print, do not write RESULTS.md"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(1, quick)])
    parser.add_argument("--skip", nargs="*", default=[], help="models to skip: digits resnet50 yolov8n")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rounds, runs = (2, 5) if args.quick else (5, 20)
    rows: list[dict] = []
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "digits" not in args.skip:
            rows += measure("digits CNN", *digits_models(args.quick), folder, rounds, runs)
            notes.append("digits CNN 0.5")
        if "resnet50" not in args.skip:
            size = 224
            rows += measure("ResNet-50", *torchvision_models("resnet50", 0.5, size), folder, rounds, runs)
            notes.append(f"ResNet-50 0.5 at {size}x{size}")
        if "yolov8n" not in args.skip:
            size = 320
            rows += measure("YOLOv8n", *yolo_models(0.3, size), folder, rounds, runs)
            notes.append(f"YOLOv8n 0.3 at {size}x{size}")
    elapsed = time.perf_counter() - start
    text = markdown(rows, machine_line(args.threads), elapsed, args.quick, "; ".join(notes))
    finish("deploy", text, args, write=not args.quick)


if __name__ == "__main__":
    main()
