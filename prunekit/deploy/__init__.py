"""Deploy: verified ONNX export, INT8 quantization with onnxruntime, and pickle-free checkpoints.

Checkpoints need only the core dependencies. The ONNX functions need the ``onnx`` extra
(``pip install 'prunekit[onnx]'``: onnx, onnxruntime, onnxscript); they are imported on first use, so
``import prunekit.deploy`` works, and stays fast, without them.

>>> import torch
>>> from prunekit.deploy import export_onnx, quantize_onnx, save, load
>>> net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
>>> export_onnx(net, torch.randn(2, 32), "/tmp/net.onnx").initializer_params
2762
>>> quantize_onnx("/tmp/net.onnx", "/tmp/net.int8.onnx", mode="dynamic").ratio > 2
True
>>> _ = save(net, "/tmp/net-ckpt")
>>> load("/tmp/net-ckpt", model=torch.nn.Sequential(
...     torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)))[0].out_features
64
"""

from __future__ import annotations

import importlib
from typing import Any

from prunekit.deploy.checkpoint import SavedCheckpoint, load, read_info, save

_NEEDS_ONNX = {
    "ExportResult": "onnx_export",
    "export_onnx": "onnx_export",
    "QuantizeResult": "quantize",
    "quantize_onnx": "quantize",
    "onnx_accuracy": "runtime",
    "onnx_latency": "runtime",
    "onnx_session": "runtime",
    "run_onnx": "runtime",
}


def __getattr__(name: str) -> Any:
    """Import the ONNX half of the package on first use, with an install hint if the extra is missing."""
    if name not in _NEEDS_ONNX:
        raise AttributeError(f"module 'prunekit.deploy' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"prunekit.deploy.{_NEEDS_ONNX[name]}")
    except ImportError as err:
        raise ImportError(
            f"prunekit.deploy.{name} needs onnx, onnxruntime and onnxscript: "
            f"pip install 'prunekit[onnx]' ({err})"
        ) from err
    return getattr(module, name)


__all__ = [
    "ExportResult",
    "QuantizeResult",
    "SavedCheckpoint",
    "export_onnx",
    "load",
    "onnx_accuracy",
    "onnx_latency",
    "onnx_session",
    "quantize_onnx",
    "read_info",
    "run_onnx",
    "save",
]
