"""Run ONNX files with onnxruntime on the CPU: outputs, top-1 accuracy, latency.

Inputs are given the way prunekit takes example inputs: a tensor (the model's one input), a tuple/list
(positional, matched to the ONNX inputs in order) or a dict (matched by input name). Non-tensor entries of a
tuple/dict were baked into the graph at export and are skipped.

>>> import torch
>>> from prunekit.deploy import export_onnx
>>> _ = export_onnx(torch.nn.Linear(4, 2), torch.randn(3, 4), "/tmp/lin.onnx")
>>> [o.shape for o in run_onnx("/tmp/lin.onnx", torch.randn(5, 4))]
[(5, 2)]
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from prunekit._inputs import ExampleInputs, batch_size_of
from prunekit.errors import ConfigError, ExportError
from prunekit.measure.latency import LatencyStats, check_timing_args

CPU = ("CPUExecutionProvider",)
Model = str | os.PathLike | ort.InferenceSession


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its class name if it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def onnx_session(path: str | os.PathLike, *, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``path``; ``threads``: intra-op threads (None: onnxruntime's default).

    >>> onnx_session("/tmp/lin.onnx").get_providers()
    ['CPUExecutionProvider']
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such ONNX file: {path}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1 or None, got {threads}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=list(CPU))
    except Exception as err:
        raise ExportError(f"onnxruntime cannot load {path}: {first_line(err)}") from err


def _session(model: Model) -> ort.InferenceSession:
    return model if isinstance(model, ort.InferenceSession) else onnx_session(model)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def feed(session: ort.InferenceSession, inputs: ExampleInputs) -> dict[str, np.ndarray]:
    """The ``{input name: array}`` dict onnxruntime wants for ``inputs`` (see the module docstring).

    >>> sorted(feed(onnx_session("/tmp/lin.onnx"), torch.zeros(1, 4)))
    ['input']
    """
    return feed_names([i.name for i in session.get_inputs()], inputs)


def feed_names(names: list[str], inputs: ExampleInputs) -> dict[str, np.ndarray]:
    """Like :func:`feed`, for a model whose input names are ``names``.

    >>> feed_names(["a", "b"], {"b": torch.ones(1), "a": torch.zeros(1)})["a"].tolist()
    [0.0]
    """
    if isinstance(inputs, Mapping):
        given = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        missing = [n for n in names if n not in given]
        if missing:
            raise ConfigError(f"the ONNX model needs inputs {names}, the dict has no {', '.join(missing)}")
        return {n: _numpy(given[n]) for n in names}
    seq = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    tensors = [t for t in seq if isinstance(t, torch.Tensor)]
    if len(tensors) != len(names):
        raise ConfigError(f"the ONNX model takes {len(names)} input(s) {names}, got {len(tensors)} tensor(s)")
    return {n: _numpy(t) for n, t in zip(names, tensors, strict=True)}


def run_onnx(model: Model, inputs: ExampleInputs) -> list[np.ndarray]:
    """Run an ONNX file (or an existing session) on ``inputs``; return every output, in order.

    >>> run_onnx("/tmp/lin.onnx", torch.zeros(2, 4))[0].shape
    (2, 2)
    """
    session = _session(model)
    return session.run(None, feed(session, inputs))


def onnx_accuracy(model: Model, loader: Iterable) -> float:
    """Top-1 accuracy in [0, 1] of an ONNX classifier (argmax of its first output) on ``(inputs, targets)``.

    >>> onnx_accuracy("/tmp/lin.onnx", [(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))]) in (0.0, 1.0)
    True
    """
    session = _session(model)
    correct = count = 0
    for inputs, targets in loader:
        logits = session.run(None, feed(session, inputs))[0]
        correct += int((logits.argmax(axis=1) == _numpy(targets)).sum())
        count += len(targets)
    if count == 0:
        raise ConfigError("the evaluation loader is empty: give it at least one batch")
    return correct / count


def onnx_latency(
    path: str | os.PathLike,
    inputs: ExampleInputs,
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
) -> LatencyStats:
    """Time ``runs`` onnxruntime runs after ``warmup`` untimed ones (same fields as ``measure_latency``).

    ``threads=None`` uses ``torch.get_num_threads()`` intra-op threads, so the numbers compare with
    :func:`prunekit.measure_latency` taken with the same setting.

    >>> onnx_latency("/tmp/lin.onnx", torch.zeros(1, 4), runs=3, warmup=1, threads=1).runs
    3
    """
    check_timing_args(runs=runs, warmup=warmup, threads=threads)
    used = threads if threads is not None else torch.get_num_threads()
    session = onnx_session(path, threads=used)
    arrays = feed(session, inputs)
    for _ in range(warmup):
        session.run(None, arrays)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, arrays)
        times.append((time.perf_counter() - start) * 1000.0)
    return LatencyStats.from_times(times, warmup=warmup, batch_size=batch_size_of(inputs), threads=used)
