"""How far static INT8 strays from fp32 with 8- vs 7-bit weights, per channel vs per tensor (onnxruntime).

For each model and ``quantize_onnx`` setting, two errors of the INT8 outputs relative to the fp32 file's
(``||int8 - fp32|| / ||fp32||`` on held-out inputs): 'kernel' runs the file as onnxruntime deploys it (QDQ
fused into integer kernels), 'reference' with graph optimisation off (onnxruntime's float QDQ reference).
Where 'kernel' is far above 'reference', the integer kernels lose precision on this CPU (u8s8 saturation
on x86 without VNNI); ``reduce_range=True``, the default, removes that gap. The models: the digits CNN
trained 3 epochs, the same pruned to half its channels (no fine-tune), and torchvision's ResNet-18 and
MobileNetV2 with random weights at 64x64 (calibrated and measured on random inputs).

    .venv/bin/python bench/bench_int8_kernels.py             # every model and setting (~5 min, 2 cores)
    .venv/bin/python bench/bench_int8_kernels.py --no-write  # print the table, leave docs/RESULTS.md

The table is written as the ``int8-kernels`` section of ``--out`` (docs/RESULTS.md by default).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from _common import common_args, finish, machine_line, markdown_table

from prunekit.demo.data import load_splits, make_loaders
from prunekit.demo.model import build_model
from prunekit.deploy import export_onnx, quantize_onnx
from prunekit.recover.train import train
from prunekit.structured import prune


def outputs(path: Path, xs: list[np.ndarray], optimise: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0] for x in xs])


def measure(name: str, fp32: Path, calibration: list[torch.Tensor], xs: list[np.ndarray]) -> list[list]:
    """One row per (per_channel, reduce_range): the model, the setting, and the two relative errors."""
    ref = outputs(fp32, xs, optimise=True)
    rows = []
    for per_channel, reduce_range in itertools.product((True, False), (False, True)):
        out = fp32.with_suffix(".int8.onnx")
        quantize_onnx(
            fp32,
            out,
            mode="static",
            calibration=calibration,
            per_channel=per_channel,
            reduce_range=reduce_range,
        )
        errs = [np.linalg.norm(outputs(out, xs, opt) - ref) / np.linalg.norm(ref) for opt in (True, False)]
        rows.append([name, per_channel, reduce_range, f"{errs[0]:.4f}", f"{errs[1]:.4f}"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[common_args(threads=1)])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[list] = []
    work = Path(tempfile.mkdtemp(prefix="int8_kernels."))
    splits = load_splits()
    train_loader, test_loader = make_loaders(splits, batch_size=64)
    calibration = [x for x, _ in itertools.islice(iter(train_loader), 8)]
    xs = [x.numpy() for x, _ in test_loader]
    dense = build_model(0)
    train(dense, train_loader, epochs=3, lr=3e-3, progress=False, seed=0)
    pruned = build_model(0)
    pruned.load_state_dict(dense.state_dict())
    prune(pruned.eval(), splits.x_test[:2], ratio=0.5)
    for name, file, model in (
        ("digits CNN", "dense", dense.eval()),
        ("digits CNN pruned 50%", "pruned", pruned),
    ):
        export_onnx(model, splits.x_test[:2], work / f"{file}.onnx")
        rows += measure(name, work / f"{file}.onnx", calibration, xs)
    g = torch.Generator().manual_seed(0)
    for name, ctor in (
        ("resnet18", torchvision.models.resnet18),
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
    ):
        torch.manual_seed(0)
        export_onnx(
            ctor(num_classes=100).eval(), torch.randn(2, 3, 64, 64, generator=g), work / f"{name}.onnx"
        )
        calib = [torch.randn(8, 3, 64, 64, generator=g) for _ in range(8)]
        rows += measure(
            name,
            work / f"{name}.onnx",
            calib,
            [torch.randn(16, 3, 64, 64, generator=g).numpy() for _ in range(4)],
        )
    header = ["model", "per_channel", "reduce_range", "kernel rel. err", "reference rel. err"]
    text = "\n".join(
        [
            "## Static INT8 in onnxruntime: integer kernels vs float reference, 8- vs 7-bit weights",
            "",
            machine_line(args.threads, onnxruntime=ort.__version__),
            "",
            *markdown_table(header, rows, align="lllrr"),
        ]
    )
    finish("int8-kernels", text, args)


if __name__ == "__main__":
    main()
