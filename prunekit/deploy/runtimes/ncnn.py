"""NCNN: ``model.param`` + ``model.bin`` converted by ``pnnx`` (TorchScript trace -> pnnx -> ncnn), run by
the ``ncnn`` Python binding on the CPU with ``opt.num_threads``, fp16 storage and arithmetic off (so it
compares with fp32 PyTorch).

pnnx names the graph's inputs ``in0, in1, ...`` and outputs ``out0, out1, ...``. An ncnn ``Mat`` has no
batch dimension: a session runs each sample of a batch in turn and stacks the outputs, so batch-N latency is
N batch-1 runs. ncnn's INT8 needs its ``ncnn2table``/``ncnn2int8`` tools, which no pip package ships, so
``int8`` is not offered.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit._inputs import ExampleInputs, eval_mode
from prunekit.deploy.onnx_export import deployable
from prunekit.deploy.runtimes.base import Artifact, Runtime, arrays, first_line
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


def _run_pnnx(traced: Path, tensors: tuple[torch.Tensor, ...], param: Path, weights: Path) -> None:
    """Run the pnnx converter on a TorchScript file, fp32 weights; its first error line if it fails.

    The pnnx binary is called directly: its Python wrapper ignores the exit status and then imports the
    Python file pnnx generates, which is not valid Python for ``nn.Sequential`` children named ``0, 1, ...``.
    """
    import pnnx

    shapes = ",".join("[" + ",".join(str(d) for d in t.shape) + "]f32" for t in tensors)
    work = traced.parent
    command = [
        pnnx.EXEC_PATH,
        str(traced),
        f"inputshape={shapes}",
        "fp16=0",
        f"ncnnparam={param}",
        f"ncnnbin={weights}",
        *(f"{key}={work / name}" for key, name in _PNNX_SCRATCH.items()),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, check=False)
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        text = (done.stderr + "\n" + done.stdout).splitlines()
        errors = [line.strip() for line in text if "error" in line.lower() or "fail" in line.lower()]
        reason = (errors or [line.strip() for line in text if line.strip()] or ["no output"])[0]
        raise ExportError(f"pnnx cannot convert the model (exit {done.returncode}): {reason}")


_PNNX_SCRATCH = {
    "pnnxparam": "model.pnnx.param",
    "pnnxbin": "model.pnnx.bin",
    "pnnxpy": "model_pnnx.py",
    "pnnxonnx": "model.pnnx.onnx",
    "ncnnpy": "model_ncnn.py",
}


class NCNN(Runtime):
    name = "ncnn"
    extra = "ncnn"
    modules = ("onnx", "onnxruntime", "ncnn", "pnnx")
    suffix = ".param"

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
        tensors = tuple(torch.from_numpy(a) for a in arrays(example_inputs))
        module = deployable(model)
        work = tmp / "work"
        work.mkdir()
        try:
            with eval_mode(module), torch.no_grad():
                # a dry run fills what the model caches per input shape (YOLO's anchors), so the trace
                # and its check run see the same graph
                module(*tensors)
                torch.jit.trace(module, tensors).save(str(work / "model.pt"))
        except Exception as err:
            raise ExportError(f"cannot trace the model for pnnx: {first_line(err)}") from err
        _run_pnnx(work / "model.pt", tensors, tmp / path.name, tmp / path.with_suffix(".bin").name)
        files = [str(path), str(path.with_suffix(".bin"))]
        return Artifact(self.name, str(path), files, None, {"converter": "pnnx"})

    def load(self, artifact: Artifact, threads: int | None = None) -> NCNNSession:
        self.require()
        return NCNNSession(artifact.path, threads)
