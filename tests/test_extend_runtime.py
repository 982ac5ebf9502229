"""Extension point (d): a runtime registered from outside the package (one file, one registration line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.deploy.runtimes import (
    FORMATS,
    RUNTIMES,
    Artifact,
    Runtime,
    register_runtime,
    runtime_for_format,
)
from prunekit.deploy.runtimes.bench import bench_runtime
from prunekit.errors import ConfigError


class TorchScriptRuntime(Runtime):
    """A toy runtime: TorchScript files run by torch.jit."""

    name, extra, suffix = "toyscript", "none", ".ts"

    def _write(self, model, example_inputs, tmp, path, *, opset, int8, calibration) -> Artifact:
        torch.jit.trace(model.eval(), example_inputs).save(str(tmp / path.name))
        return Artifact(self.name, str(path), [str(path)])

    def load(self, artifact: Artifact, threads: int | None = None):
        module = torch.jit.load(artifact.path)

        class Session:
            def run(self, inputs):
                with torch.no_grad():
                    return [module(*[torch.from_numpy(a) for a in inputs]).numpy()]

        return Session()


@pytest.fixture
def toy_runtime():
    register_runtime(TorchScriptRuntime, file_format="torchscript")  # the one registration line
    yield
    RUNTIMES.pop("toyscript")
    FORMATS.pop("torchscript")


def test_a_registered_runtime_exports_runs_and_benches(toy_runtime, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    pruned = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    pruned.load_state_dict(dense.state_dict())
    x = torch.randn(2, 16)
    pk.prune(pruned, x, ratio=0.5)
    rt = runtime_for_format("torchscript")
    artifact = rt.export(pruned, x, tmp_path / "pruned.ts")
    out = rt.load(artifact).run([x.numpy()])[0]
    assert np.allclose(out, pruned(x).detach().numpy(), atol=1e-6)
    models = {"dense": dense, "pruned": pruned}
    rows = bench_runtime("toyscript", models, x, tmp_path, reference="dense", runs=3)
    assert len(rows) == 2 and all(r["runtime"] == "toyscript" for r in rows)


def test_a_taken_runtime_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_runtime(type("Again", (TorchScriptRuntime,), {"name": "onnxruntime"}))
