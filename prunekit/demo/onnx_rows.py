"""The demo's deployment rows: a stage's model exported to ONNX, then quantized to INT8, run in onnxruntime.

``export_rows`` exports the model with :func:`prunekit.deploy.export_onnx` (verified against PyTorch), makes a
static INT8 copy with :func:`prunekit.deploy.quantize_onnx` calibrated on 256 training images, and measures
both files the way :mod:`prunekit.demo.run` measures PyTorch stages: test accuracy, size of the file and its
zstd-compressed size, and latency at the same batch sizes (onnxruntime, the same thread count, best round).
The rows need the ``onnx`` extra; :func:`onnx_available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import zstandard
from torch import nn

from prunekit.demo.data import IMAGE_SHAPE
from prunekit.demo.stages import DemoContext
from prunekit.measure.latency import LatencyStats
from prunekit.measure.size import DEFAULT_ZSTD_LEVEL, SizeInfo

CALIBRATION_IMAGES = 256


def onnx_available() -> bool:
    """True when onnx, onnxruntime and onnxscript (the ``onnx`` extra) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime", "onnxscript"))


@dataclass
class OnnxRow:
    """Figures of one ONNX file (parameters and MACs are those of the PyTorch model it came from)."""

    name: str
    title: str
    path: Path
    accuracy: float
    size: SizeInfo
    latency: list[LatencyStats]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _file_size(path: Path) -> SizeInfo:
    data = path.read_bytes()
    compressed = zstandard.ZstdCompressor(level=DEFAULT_ZSTD_LEVEL).compress(data)
    return SizeInfo(len(data), len(compressed), f"zstd-{DEFAULT_ZSTD_LEVEL}")


def _latency(path: Path, ctx: DemoContext, batches: tuple[int, ...]) -> list[LatencyStats]:
    from prunekit.deploy import onnx_latency

    cfg = ctx.config
    best: list[LatencyStats] | None = None
    for _ in range(cfg.latency_rounds):
        stats = [
            onnx_latency(
                path,
                ctx.splits.x_test[:b],
                runs=cfg.latency_runs,
                warmup=cfg.latency_warmup,
                threads=cfg.threads,
            )
            for b in batches
        ]
        best = (
            stats
            if best is None
            else [min(a, b, key=lambda s: s.median_ms) for a, b in zip(best, stats, strict=True)]
        )
    return best or []


def export_rows(
    model: nn.Module, source: str, ctx: DemoContext, folder: Path, batches: tuple[int, ...]
) -> list[OnnxRow]:
    """Export ``model`` (the stage named ``source``) to fp32 ONNX and static INT8, and measure both files."""
    from prunekit.deploy import export_onnx, onnx_accuracy, quantize_onnx

    fp32_path, int8_path = folder / f"{source}.onnx", folder / f"{source}.int8.onnx"
    start = time.perf_counter()
    exported = export_onnx(model, torch.zeros(2, *IMAGE_SHAPE), fp32_path, verify=True, dynamic_batch=True)
    export_s = time.perf_counter() - start
    calibration = ctx.splits.x_train[:CALIBRATION_IMAGES].split(64)
    start = time.perf_counter()
    quantized = quantize_onnx(fp32_path, int8_path, mode="static", calibration=calibration)
    quantize_s = time.perf_counter() - start
    rows = []
    for name, title, path, seconds, extra in (
        (
            "onnx",
            f"{source} in onnxruntime (fp32 ONNX, verified)",
            fp32_path,
            export_s,
            {"initializer_params": exported.initializer_params, "max_abs_err": exported.max_abs_err},
        ),
        (
            "onnx-int8",
            f"{source} in onnxruntime, static INT8 ({len(calibration)} calibration batches)",
            int8_path,
            quantize_s,
            {"int8_format": quantized.format, "quantized_ops": quantized.op_counts},
        ),
    ):
        accuracy = onnx_accuracy(path, ctx.test_loader())
        rows.append(
            OnnxRow(
                name, title, path, accuracy, _file_size(path), _latency(path, ctx, batches), seconds, extra
            )
        )
        ctx.console.print(f"{name} ({title}): accuracy {100 * accuracy:.2f}%, {path.stat().st_size:,} bytes")
    return rows
