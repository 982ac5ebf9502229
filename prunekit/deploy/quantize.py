"""INT8 quantization of ONNX files with ``onnxruntime.quantization``, on top of pruning.

Two modes:

- ``"dynamic"``: weights become int8 offline, activations are quantized on the fly at run time
  (``quantize_dynamic``; ConvInteger / MatMulInteger nodes). Needs no data. Best for Linear-heavy models:
  onnxruntime's ConvInteger is slow on CPU (digits CNN, batch 1: 0.70 ms vs 0.08 ms in fp32), so for CNNs
  use static mode, or ``op_types=("MatMul", "Gemm")`` to leave convolutions in fp32.
- ``"static"``: weights int8, activations uint8 with ranges measured on calibration batches
  (``quantize_static``, QDQ format, MinMax/Entropy/Percentile calibration). Usually the faster model.

Weights are quantized with 7 bits by default (``reduce_range=True``). onnxruntime's u8s8 integer kernels on
x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) add pairs of uint8 x int8 products in int16 (VPMADDUBSW),
which saturates when weights use the full int8 range; onnxruntime's docs name ``reduce_range`` as the remedy,
"especially for per-channel mode". Measured on an AVX2 CPU (static QDQ, per channel, 8 calibration batches;
output error relative to fp32): the digits CNN pruned to half its channels 0.121 with 8-bit weights, 0.011
with 7-bit ones; the same 8-bit model run through onnxruntime's reference (unfused) QDQ path is at 0.009, so
the 8-bit error is the kernel's, not the quantization's (the dense CNN: 0.108 vs 0.009; random-weight
MobileNetV2: 0.124 vs 0.050). With 7 bits the kernels and the reference agree on every model measured, at
the cost of one bit where the kernels do not saturate (random-weight ResNet-18: 0.022 with 8 bits, 0.034 with
7); ``bench/bench_int8_kernels.py`` reproduces the table. Each call also measures what quantization cost:
``QuantizeResult.output_rel_err`` and ``output_cosine`` compare the INT8 model with its fp32 source, in
onnxruntime on this machine, on ``compare_on`` or else the calibration batches (dynamic mode has none, so
without ``compare_on`` it reports no error).

The input is first run through onnxruntime's ``quant_pre_process`` (shape inference + graph optimisation),
which the quantizer recommends and which ``quantize_dynamic`` needs for files written by the torch.export
exporter (their value_info otherwise conflicts with the transposed weights it makes).

A PyTorch-side path (``torch.ao.quantization.quantize_dynamic``) is not offered: in torch 2.14 every call
warns that ``torch.ao.quantization`` is deprecated in favour of torchao, and quantized-tensor creation is
deprecated too.

>>> import torch
>>> from prunekit.deploy import export_onnx
>>> _ = export_onnx(torch.nn.Linear(256, 128), torch.randn(4, 256), "/tmp/fc.onnx")
>>> res = quantize_onnx("/tmp/fc.onnx", "/tmp/fc.int8.onnx", mode="dynamic")
>>> res.ratio > 3
True
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from prunekit._jsondata import JsonData
from prunekit.deploy.runtime import feed_names, first_line, onnx_session
from prunekit.errors import ConfigError, ExportError
from prunekit.progress import Bar, progress_bar

MODES = ("dynamic", "static")
CALIBRATE_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass
class QuantizeResult(JsonData):
    """Sizes before and after INT8 quantization, what the quantized graph is made of, and what it costs.

    ``output_rel_err`` (``||int8 - fp32|| / ||fp32||``, the largest over the model's outputs) and
    ``output_cosine`` (the smallest cosine similarity over the outputs) compare the INT8 model with its fp32
    source on the comparison batches (``compare_on``, else the calibration batches), both run in onnxruntime
    on this machine; None when there were none (dynamic mode without ``compare_on``).
    """

    path: str
    source: str
    mode: str
    format: str
    per_channel: bool
    calibrate_method: str | None
    calibration_batches: int
    bytes_before: int
    bytes_after: int
    op_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    preprocess: str = ""
    reduce_range: bool = True
    output_rel_err: float | None = None
    output_cosine: float | None = None

    @property
    def ratio(self) -> float:
        """``bytes_before / bytes_after`` (how many times smaller the file got)."""
        return self.bytes_before / self.bytes_after

    _derived = ("ratio",)


class _Batches(CalibrationDataReader):
    """The calibration batches, already converted to onnxruntime feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], bar: Bar | None = None) -> None:
        self.feeds, self.bar = feeds, bar
        self.it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self.it, None)
        if feed is not None and self.bar is not None:
            self.bar.advance()
        return feed

    def rewind(self) -> None:
        self.it = iter(self.feeds)


def _input_names(model_path: Path) -> list[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    stored = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in stored]


def _calibration_feeds(
    names: list[str], calibration: Iterable, what: str = "calibration"
) -> list[dict[str, np.ndarray]]:
    """onnxruntime feeds of each batch; ``what`` names the argument in errors (calibration, compare_on)."""
    feeds = []
    for i, batch in enumerate(calibration):
        try:
            feeds.append(feed_names(names, batch))
        except ConfigError as err:
            raise ConfigError(
                f"{what} batch {i}: {err}; give model inputs only, e.g. (x for x, _ in loader)"
            ) from err
    if not feeds:
        raise ConfigError(f"{what} is empty: give at least one batch of model inputs")
    return feeds


def _check_args(src: Path, out: Path, mode: str, calibration: Iterable | None, calibrate_method: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "static" and calibration is None:
        raise ConfigError('mode="static" needs calibration=<iterable of input batches>')
    if mode == "dynamic" and calibration is not None:
        raise ConfigError('calibration is only used with mode="static"; drop it or pass mode="static"')
    if calibrate_method not in CALIBRATE_METHODS:
        raise ConfigError(
            f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}, got {calibrate_method!r}"
        )
    if not src.is_file():
        raise ConfigError(f"no such ONNX file: {src}")
    if out.resolve() == src.resolve():
        raise ConfigError(f"out_path must differ from onnx_path ({src})")
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: give a file path in an existing directory")


def quantize_onnx(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    mode: str = "dynamic",
    calibration: Iterable | None = None,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    op_types: Sequence[str] | None = None,
    reduce_range: bool = True,
    compare_on: Iterable | None = None,
) -> QuantizeResult:
    """Write an INT8 copy of ``onnx_path`` to ``out_path`` and report how much smaller it is.

    ``calibration`` (``mode="static"`` only) is an iterable of input batches, each given like example
    inputs (a tensor, a tuple or a dict), e.g. ``(x for x, _ in train_loader)``; ``calibrate_method``
    ``"entropy"`` and ``"percentile"`` need all batches of one shape (e.g. ``DataLoader(drop_last=True)``).
    ``per_channel`` quantizes weights with one scale per output channel (better accuracy when channels
    differ in range). ``op_types`` limits quantization to these ONNX op types (None: every type onnxruntime
    can quantize). ``reduce_range`` quantizes weights with 7 bits, which keeps onnxruntime's integer kernels
    from saturating on x86 CPUs without VNNI (see the module docstring); ``False`` gives 8-bit weights, for
    CPUs with VNNI or other runtimes. The output is written atomically and loaded once in onnxruntime
    before the call returns, then run and compared with the source (``output_rel_err``,
    ``output_cosine``) on ``compare_on`` (input batches given like ``calibration``), by default on the
    calibration batches; a dynamic quantization without ``compare_on`` reports no error (None).

    >>> import torch
    >>> calib = [torch.randn(8, 256) for _ in range(4)]
    >>> res = quantize_onnx("/tmp/fc.onnx", "/tmp/fc.qdq.onnx", mode="static", calibration=calib)
    >>> res.format, res.calibration_batches, res.output_rel_err < 0.05
    ('QDQ', 4, True)
    """
    start = time.perf_counter()
    src, out = Path(onnx_path), Path(out_path)
    _check_args(src, out, mode, calibration, calibrate_method)
    if op_types is not None and (isinstance(op_types, str) or not op_types):
        raise ConfigError(
            f'op_types must be a non-empty list of ONNX op types like ["MatMul"], got {op_types!r}'
        )
    settings = {
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "weight_type": QuantType.QInt8,
        "op_types_to_quantize": None if op_types is None else [str(t) for t in op_types],
    }
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        prepared, quantized = work / "prepared.onnx", work / "quantized.onnx"
        with progress_bar(f"int8 {mode}: prepare, calibrate, check", None) as bar:
            preprocess = _pre_process(src, prepared)
            feeds = []
            if mode == "static":
                feeds = _calibration_feeds(_input_names(prepared), calibration)
                _check_batch_shapes(feeds, calibrate_method)
            compared = (
                feeds
                if compare_on is None
                else _calibration_feeds(_input_names(src), compare_on, "compare_on")
            )
            bar.update(total=len(feeds) + 2, completed=1)  # prepare, each calibration batch, check
            _quantize(src, prepared, quantized, mode, feeds, calibrate_method, settings, bar)
            session = onnx_session(quantized)  # raises ExportError if onnxruntime cannot load the result
            rel_err, cosine = _fidelity(onnx_session(src), session, compared) if compared else (None, None)
            bar.update(completed=len(feeds) + 2)
        graph = onnx.load(str(quantized)).graph
        os.replace(quantized, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return QuantizeResult(
        path=str(out),
        source=str(src),
        mode=mode,
        format="QDQ" if mode == "static" else "QOperator",
        per_channel=per_channel,
        calibrate_method=calibrate_method if mode == "static" else None,
        calibration_batches=len(feeds),
        bytes_before=src.stat().st_size,
        bytes_after=out.stat().st_size,
        op_counts=dict(sorted(Counter(node.op_type for node in graph.node).items())),
        seconds=time.perf_counter() - start,
        preprocess=preprocess,
        reduce_range=reduce_range,
        output_rel_err=rel_err,
        output_cosine=cosine,
    )


def _quantize(
    src: Path,
    prepared: Path,
    quantized: Path,
    mode: str,
    feeds: list[dict[str, np.ndarray]],
    calibrate_method: str,
    settings: dict[str, Any],
    bar: Bar | None = None,
) -> None:
    """Static QDQ quantization calibrated on ``feeds`` (``bar`` advanced per batch read), or dynamic
    quantization; ``settings``: both's."""
    try:
        if mode == "static":
            quantize_static(
                str(prepared),
                str(quantized),
                _Batches(feeds, bar),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                calibrate_method=CALIBRATE_METHODS[calibrate_method],
                **settings,
            )
        else:
            quantize_dynamic(str(prepared), str(quantized), **settings)
    except Exception as err:
        raise ExportError(f"onnxruntime {mode} quantization of {src} failed: {first_line(err)}") from err


def _check_batch_shapes(feeds: list[dict[str, np.ndarray]], calibrate_method: str) -> None:
    """Entropy and percentile calibration stack the batches' activations, so they need one batch shape."""
    if calibrate_method == "minmax":
        return
    first = {name: a.shape for name, a in feeds[0].items()}
    for i, feed in enumerate(feeds[1:], start=1):
        shapes = {name: a.shape for name, a in feed.items()}
        if shapes != first:
            raise ConfigError(
                f'calibrate_method="{calibrate_method}" needs calibration batches of one shape: batch {i} '
                f"has {_shapes(shapes)}, batch 0 {_shapes(first)}; drop the partial last batch "
                f'(DataLoader(..., drop_last=True)) or use calibrate_method="minmax"'
            )


def _shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())


def _fidelity(
    fp32: ort.InferenceSession, int8: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]
) -> tuple[float, float]:
    """``(largest relative error, smallest cosine similarity)`` of int8's outputs against fp32's on feeds."""
    sums = None
    for feed in feeds:
        pairs = zip(fp32.run(None, feed), int8.run(None, feed), strict=True)
        terms = [
            [np.sum((q - f) ** 2), np.sum(f * f), np.sum(q * q), np.sum(f * q)]
            for f, q in ((f.astype(np.float64), q.astype(np.float64)) for f, q in pairs)
        ]
        sums = np.array(terms) if sums is None else sums + np.array(terms)
    diff, ref, own, dot = sums.T
    rel_err = np.sqrt(diff / np.maximum(ref, np.finfo(np.float64).tiny))
    cosine = dot / np.maximum(np.sqrt(ref * own), np.finfo(np.float64).tiny)
    return float(rel_err.max()), float(cosine.min())


def _pre_process(src: Path, prepared: Path) -> str:
    """onnxruntime's recommended pre-processing; says which shape inference it could use.

    Symbolic shape inference fails on some graphs with dynamic dims (YOLO heads, for one); onnxruntime then
    advises ``skip_symbolic_shape=True``, which keeps ONNX's own shape inference and the graph optimisation.
    That path needs the exporter's ``value_info`` dropped first: the optimiser rewrites initializers (e.g.
    transposed Gemm weights) under their old names, and the stale shapes then fail ONNX shape inference.
    The result records which path was taken. When symbolic shape inference fails, onnxruntime dumps
    ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` file into the current directory; the first attempt
    therefore runs with the private work directory as the current directory, so nothing lands in the user's.
    """
    here = os.getcwd()
    os.chdir(prepared.parent)
    try:
        quant_pre_process(str(src.resolve()), str(prepared.resolve()))
        return "symbolic shape inference + optimisation"
    except Exception as err:
        symbolic_error = first_line(err)
    finally:
        os.chdir(here)
    bare = prepared.with_name("bare.onnx")
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    onnx.save(model, str(bare))
    try:
        quant_pre_process(str(bare), str(prepared), skip_symbolic_shape=True)
    except Exception as err:
        raise ExportError(f"onnxruntime quant_pre_process fails on {src}: {first_line(err)}") from err
    return f"ONNX shape inference + optimisation (symbolic shape inference failed: {symbolic_error})"
