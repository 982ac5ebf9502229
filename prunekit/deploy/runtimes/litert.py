"""LiteRT (TFLite): a ``.tflite`` file converted from the torch model by ``litert-torch`` (``torch.export``
capture, no TensorFlow needed), run by the ``ai-edge-litert`` interpreter with ``num_threads``.

The converted graph keeps PyTorch's layouts (NCHW inputs) and has the example's fixed shapes; a session
resizes the inputs when a batch of another size comes. INT8 goes through ``ai-edge-quantizer`` on the
``.tflite`` file: ``"dynamic"`` stores int8 weights with fp32 activations, ``"static"`` makes a fully int8
model (weights and activations) whose activation ranges come from the calibration batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit._inputs import ExampleInputs, eval_mode
from prunekit.deploy.onnx_export import deployable
from prunekit.deploy.runtimes.base import Artifact, Runtime, arrays, first_line
from prunekit.errors import ExportError


class LiteRTSession:
    """An ``ai_edge_litert`` interpreter; inputs are matched to the model's inputs in order."""

    def __init__(self, path: str, threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=path, num_threads=threads or os.cpu_count() or 1)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        interp = self._interp
        shapes = [tuple(d["shape"]) for d in interp.get_input_details()]
        if shapes != [a.shape for a in inputs]:
            for detail, array in zip(self._in, inputs, strict=True):
                interp.resize_tensor_input(detail["index"], list(array.shape))
            interp.allocate_tensors()
        for detail, array in zip(self._in, inputs, strict=True):
            interp.set_tensor(detail["index"], _quantize_input(array, detail))
        interp.invoke()
        return [_dequantize_output(np.array(interp.get_tensor(d["index"])), d) for d in self._out]


def _quantize_input(array: np.ndarray, detail: dict) -> np.ndarray:
    """``array`` in the input's dtype; a quantized (integer) input gets ``round(x / scale) + zero_point``."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        array = np.clip(np.round(array / scale) + zero, info.min, info.max)
    return np.ascontiguousarray(array, dtype=dtype)


def _dequantize_output(array: np.ndarray, detail: dict) -> np.ndarray:
    """A quantized (integer) output as float32, ``(q - zero_point) * scale``; others as they are."""
    scale, zero = detail["quantization"]
    if array.dtype.kind in "iu" and scale:
        return ((array.astype(np.float32) - zero) * scale).astype(np.float32)
    return array


class LiteRT(Runtime):
    name = "litert"
    extra = "litert"
    modules = ("onnx", "onnxruntime", "ai_edge_litert", "litert_torch")
    suffix = ".tflite"
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
        import litert_torch

        tensors = tuple(torch.from_numpy(a) for a in arrays(example_inputs))
        module = deployable(model)
        (tmp / "work").mkdir()
        fp32 = tmp / "work" / "fp32.tflite" if int8 else tmp / path.name
        try:
            with eval_mode(module), torch.no_grad():
                litert_torch.convert(module, tensors).export(str(fp32))
        except Exception as err:
            raise ExportError(f"litert-torch cannot convert the model: {first_line(err)}") from err
        if int8 is not None:
            _quantize(fp32, tmp / path.name, int8, calibration or [])
        return Artifact(self.name, str(path), [str(path)], int8, {"converter": "litert-torch"})

    def load(self, artifact: Artifact, threads: int | None = None) -> LiteRTSession:
        self.require()
        return LiteRTSession(artifact.path, threads)


def _quantize(source: Path, target: Path, mode: str, calibration: Sequence[ExampleInputs]) -> None:
    """INT8 with ai-edge-quantizer: int8 weights (dynamic) or int8 weights and activations (static)."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except Exception as err:
        raise ExportError(
            f'INT8 for litert needs ai-edge-quantizer ({first_line(err)}): pip install "prunekit[litert]"'
        ) from err
    try:
        qt = quantizer.Quantizer(str(source))
        if mode == "dynamic":
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            result = qt.quantize()
        else:
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            from ai_edge_litert.interpreter import Interpreter

            ((key, signature),) = Interpreter(model_path=str(source)).get_signature_list().items()
            samples = [dict(zip(signature["inputs"], arrays(b), strict=True)) for b in calibration]
            result = qt.quantize(qt.calibrate({key: samples}, num_threads=1))
        result.export_model(str(target))
    except Exception as err:
        raise ExportError(f"ai-edge-quantizer cannot quantize the model: {first_line(err)}") from err
