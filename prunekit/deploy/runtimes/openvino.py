"""OpenVINO: IR (``model.xml`` + ``model.bin``) converted from the verified ONNX file with
``openvino.convert_model`` and written with ``openvino.save_model`` (fp32 weights, not compressed to fp16).

Sessions compile for ``"CPU"`` with ``INFERENCE_NUM_THREADS`` and ``INFERENCE_PRECISION_HINT=f32`` (on
CPUs with bf16 units OpenVINO otherwise runs in bf16, which is a different model). Static INT8 goes through
NNCF's post-training ``nncf.quantize`` with the calibration batches, when ``nncf`` is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.deploy.runtimes.base import Artifact, Runtime, arrays, first_line
from prunekit.deploy.runtimes.onnxruntime import write_onnx
from prunekit.errors import ExportError


class OpenVINOSession:
    """A model compiled for OpenVINO's CPU plugin."""

    def __init__(self, path: str, threads: int | None) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = ov.Core().compile_model(path, "CPU", config)
        except Exception as err:
            raise ExportError(f"OpenVINO cannot compile {path}: {first_line(err)}") from err

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = self._compiled(list(inputs))
        return [np.asarray(result[out]) for out in self._compiled.outputs]


class OpenVINO(Runtime):
    name = "openvino"
    extra = "openvino"
    modules = ("onnx", "onnxruntime", "onnxscript", "openvino")
    suffix = ".xml"
    int8_modes = ("static",)

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
        import openvino as ov

        onnx_file, details = write_onnx(model, example_inputs, tmp / "work", "model.onnx", opset)
        try:
            # read_model, not convert_model: convert_model takes a path string with a comma for a list of
            # model files, so an output named "a,b.xml" (or in a folder with a comma) would not convert
            converted = ov.Core().read_model(str(onnx_file))
            if int8 is not None:
                converted = _nncf_quantize(converted, calibration or [])
            ov.save_model(converted, str(tmp / path.name), compress_to_fp16=False)
        except ExportError:
            raise
        except Exception as err:
            raise ExportError(f"OpenVINO cannot convert the model: {first_line(err)}") from err
        files = [str(path), str(path.with_suffix(".bin"))]
        return Artifact(self.name, str(path), files, int8, {"onnx": details})

    def load(self, artifact: Artifact, threads: int | None = None) -> OpenVINOSession:
        self.require()
        return OpenVINOSession(artifact.path, threads)


def _nncf_quantize(model: object, calibration: Sequence[ExampleInputs]) -> object:
    try:
        import nncf
    except Exception as err:
        raise ExportError(
            f"INT8 for openvino needs nncf, which does not import ({first_line(err)}): pip install nncf"
        ) from err
    samples = [arrays(batch) for batch in calibration]
    return nncf.quantize(model, nncf.Dataset(samples), subset_size=sum(s[0].shape[0] for s in samples))
