"""NCNN: ``model.param`` + ``model.bin`` converted by ``pnnx`` (TorchScript trace -> pnnx -> ncnn), run by
the ``ncnn`` Python binding on the CPU with ``opt.num_threads``, fp16 storage and arithmetic off (so it
compares with fp32 PyTorch).

pnnx names the graph's inputs ``in0, in1, ...`` and outputs ``out0, out1, ...``. An ncnn ``Mat`` has no
batch dimension: a session runs each sample of a batch in turn and stacks the outputs, so batch-N latency is
N batch-1 runs. ncnn's INT8 needs its ``ncnn2table``/``ncnn2int8`` tools, which no pip package ships, so
``int8`` is not offered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit._inputs import ExampleInputs, eval_mode
from prunekit.deploy.onnx_export import deployable
from prunekit.deploy.runtimes.base import Artifact, Runtime, arrays, check_out_path, first_line, staged
from prunekit.errors import ExportError

_BLOB = re.compile(r"^(in|out)\d+$")


def _blobs(param: str) -> tuple[list[str], list[str]]:
    """The input and output blob names of an ncnn param file written by pnnx, in index order."""
    names: set[str] = set()
    for line in Path(param).read_text().splitlines()[2:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        names.update(n for n in fields[4 : 4 + n_in + n_out] if _BLOB.match(n))
    order = sorted(names, key=lambda n: int(n.lstrip("inout")))
    return [n for n in order if n.startswith("in")], [n for n in order if n.startswith("out")]


class NCNNSession:
    """An ``ncnn.Net`` loaded once; every run makes a fresh extractor per sample."""

    def __init__(self, param: str, threads: int | None) -> None:
        import ncnn

        self._ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_vulkan_compute = False
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = False
        if threads is not None:
            opt.num_threads = threads
        if self.net.load_param(param) != 0 or self.net.load_model(str(Path(param).with_suffix(".bin"))) != 0:
            raise ExportError(f"ncnn cannot load {param} and its .bin")
        self.inputs, self.outputs = _blobs(param)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        per_sample = []
        for i in range(inputs[0].shape[0]):
            ex = self.net.create_extractor()
            for name, array in zip(self.inputs, inputs, strict=True):
                ex.input(name, self._ncnn.Mat(np.ascontiguousarray(array[i])))
            per_sample.append([np.array(ex.extract(name)[1]) for name in self.outputs])
        return [np.stack(outs) for outs in zip(*per_sample, strict=True)]


class NCNN(Runtime):
    name = "ncnn"
    extra = "ncnn"
    modules = ("onnx", "onnxruntime", "ncnn", "pnnx")
    suffix = ".param"

    def export(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        out_path: str | os.PathLike,
        *,
        opset: int | None = None,
        int8: str | None = None,
        calibration: Sequence[ExampleInputs] | None = None,
    ) -> Artifact:
        self.check_export_args(int8, calibration)
        self.require()
        import pnnx

        path = check_out_path(out_path, self.suffix)
        tensors = tuple(torch.from_numpy(a) for a in arrays(example_inputs))
        module = deployable(model)
        with staged(path) as tmp:
            work = tmp / "work"
            work.mkdir()
            try:
                with eval_mode(module), torch.no_grad():
                    pnnx.export(module, str(work / "model.pt"), tensors)
            except Exception as err:
                raise ExportError(f"pnnx cannot convert the model: {first_line(err)}") from err
            produced = work / "model.ncnn.param"
            if not produced.is_file():
                raise ExportError("pnnx wrote no ncnn param file (see its output above)")
            produced.rename(tmp / path.name)
            (work / "model.ncnn.bin").rename(tmp / path.with_suffix(".bin").name)
        files = [str(path), str(path.with_suffix(".bin"))]
        return Artifact(self.name, str(path), files, None, {"converter": "pnnx"})

    def load(self, artifact: Artifact, threads: int | None = None) -> NCNNSession:
        self.require()
        return NCNNSession(artifact.path, threads)
