"""onnxruntime: an ONNX file (any opset 11..23, see :func:`prunekit.deploy.export_onnx`), INT8 through
``onnxruntime.quantization`` (dynamic, or static QDQ with calibration batches).

>>> import torch
>>> rt = OnnxRuntime()
>>> art = rt.export(torch.nn.Linear(4, 2), torch.randn(1, 4), "/tmp/rt-lin.onnx", opset=13)
>>> art.details["exporter"], [o.shape for o in rt.load(art, threads=1).run([np.zeros((3, 4), np.float32)])]
('torch.onnx.export(dynamo=False)', [(3, 2)])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.deploy.runtimes.base import Artifact, Runtime


class OnnxSession:
    """An onnxruntime CPU session fed positionally."""

    def __init__(self, path: str, threads: int | None) -> None:
        from prunekit.deploy.runtime import onnx_session

        self._session = onnx_session(path, threads=threads)
        self._names = [i.name for i in self._session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(zip(self._names, inputs, strict=True)))


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    extra = "onnx"
    modules = ("onnx", "onnxruntime", "onnxscript")
    suffix = ".onnx"
    int8_modes = ("dynamic", "static")

    def _write(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        tmp: Path,
        path: Path,
        *,
        opset: int | None,
        int8: str | None,
        calibration: Sequence[ExampleInputs] | None,
    ) -> Artifact:
        onnx_file, details = write_onnx(model, example_inputs, tmp, path.name, opset)
        if int8 is not None:
            from prunekit.deploy.quantize import quantize_onnx

            fp32 = onnx_file.rename(tmp / "work" / "fp32.onnx")
            quantized = quantize_onnx(fp32, onnx_file, mode=int8, calibration=calibration)
            details["int8"] = quantized.to_dict()
        return Artifact(self.name, str(path), [str(path)], int8, details)

    def load(self, artifact: Artifact, threads: int | None = None) -> OnnxSession:
        self.require()
        return OnnxSession(artifact.path, threads)


def write_onnx(
    model: nn.Module, example_inputs: ExampleInputs, directory: Path, name: str, opset: int | None
) -> tuple[Path, dict]:
    """Export a verified ONNX file ``directory/name`` (``directory`` and ``directory/work``, for scratch
    files, are made); return its path and the export's record. Shared by the runtimes that convert from ONNX.
    """
    from prunekit.deploy.onnx_export import export_onnx

    (directory / "work").mkdir(parents=True, exist_ok=True)
    result = export_onnx(model, example_inputs, directory / name, opset=opset)
    return directory / name, result.to_dict()
