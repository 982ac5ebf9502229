"""Edge runtimes behind one interface: export, load, run, agreement with PyTorch, timing, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from prunekit._atomic import atomic_files
from prunekit.cli import app
from prunekit.deploy.runtimes import Tolerance, arrays, compare, get_runtime, runtime_for_format
from prunekit.errors import ConfigError, ExportError

pytest.importorskip("onnxruntime", reason="the runtimes convert through ONNX: pip install 'prunekit[onnx]'")

runner = CliRunner()
CNN = "prunekit.demo.model:build_model"


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_unknown_runtime_and_format_name_the_choices():
    with pytest.raises(ConfigError, match="unknown runtime 'tvm'; choose from litert, ncnn"):
        get_runtime("tvm")
    with pytest.raises(ConfigError, match="unknown format 'coreml'; choose from onnx, openvino, tflite"):
        runtime_for_format("coreml")


def test_missing_package_is_one_line_naming_the_extra(monkeypatch):
    rt = get_runtime("openvino")
    monkeypatch.setattr(type(rt), "modules", ("prunekit_no_such_module",))
    assert not rt.available()
    with pytest.raises(ExportError, match=r'pip install "prunekit\[openvino\]"') as info:
        rt.export(small_cnn(), torch.randn(1, 3, 8, 8), "/tmp/never.xml")
    assert "\n" not in str(info.value)


def test_compare_judges_fp32_by_scaled_error_and_int8_by_cosine_and_top1():
    ref = [np.array([[10.0, 30.0, 20.0]])]
    assert compare(ref, [np.array([[10.0, 30.01, 20.0]])]).ok  # 0.01 / 30 < 1e-3
    assert not compare(ref, [np.array([[10.0, 30.1, 20.0]])]).ok
    close = compare(ref, [np.array([[11.0, 29.0, 20.5]])], int8=True)
    assert close.ok and close.top1 == 1.0 and close.cosine > 0.99
    swapped = compare(ref, [np.array([[10.0, 20.0, 30.0]])], int8=True)
    assert not swapped.ok and swapped.top1 == 0.0
    strict = Tolerance(int8_cosine=1.0)
    assert not compare(ref, [np.array([[11.0, 29.0, 20.5]])], int8=True, tolerance=strict).ok
    assert compare(ref, ref + ref).note == "2 outputs, PyTorch 1"


def test_staged_files_leave_nothing_when_the_writer_fails(tmp_path):
    def half(tmp):
        (tmp / "m.xml").write_text("half")
        raise RuntimeError("converter died")

    with pytest.raises(RuntimeError):
        atomic_files(tmp_path / "m.xml", half)
    assert leftovers(tmp_path) == []


def test_a_failing_converter_leaves_nothing_next_to_the_target(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace this")

    with pytest.raises(ExportError):
        get_runtime("onnxruntime").export(Broken(), torch.randn(1, 3), tmp_path / "m.onnx")
    assert leftovers(tmp_path) == []


def test_static_int8_needs_calibration_and_unknown_modes_are_refused(tmp_path):
    rt = get_runtime("onnxruntime")
    with pytest.raises(ConfigError, match="needs calibration data"):
        rt.export(small_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", int8="static")
    with pytest.raises(ConfigError, match="int8 must be None"):
        rt.export(small_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", int8="int4")
    with pytest.raises(ConfigError, match=r"must end in \.onnx"):
        rt.export(small_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "m.xml")
    with pytest.raises(ConfigError, match="ncnn has no dynamic INT8"):
        get_runtime("ncnn").export(small_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "m.param", int8="dynamic")
    assert leftovers(tmp_path) == []


def _roundtrip(name: str, tmp_path, **kwargs):
    rt = get_runtime(name)
    net, x = small_cnn(), torch.randn(1, 3, 16, 16)
    art = rt.export(net, x, tmp_path / f"m{rt.suffix}", **kwargs)
    assert sorted(leftovers(tmp_path)) == sorted(p.rsplit("/", 1)[1] for p in art.files)
    with torch.no_grad():
        want = [net(x)]
    for threads in (1, 2):
        got = rt.load(art, threads=threads).run(arrays(x))
        yield compare(want, got, int8=art.int8 is not None, tolerance=rt.tolerance)


def test_onnxruntime_roundtrip_with_an_old_opset_and_int8(tmp_path):
    assert all(a.ok for a in _roundtrip("onnxruntime", tmp_path, opset=13))
    calib = [torch.randn(1, 3, 16, 16) for _ in range(8)]
    (tmp_path / "q").mkdir()
    agreements = list(_roundtrip("onnxruntime", tmp_path / "q", int8="static", calibration=calib))
    assert all(a.criterion == "int8" and a.cosine > 0.9 for a in agreements)


@pytest.mark.parametrize(
    ("name", "module"), [("openvino", "openvino"), ("litert", "litert_torch"), ("ncnn", "pnnx")]
)
def test_edge_runtime_roundtrip_matches_pytorch(tmp_path, name, module):
    pytest.importorskip(module, reason=f'pip install "prunekit[{get_runtime(name).extra}]"')
    folder = tmp_path / "a,b c"  # a comma and a space in the path: converters that split strings on them
    folder.mkdir()
    agreements = list(_roundtrip(name, folder))
    assert all(a.ok for a in agreements), [a.to_dict() for a in agreements]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in (*args, "--input-shape", "1,1,8,8")])


def test_cli_export_format_onnx_with_an_old_opset(tmp_path):
    out, js = tmp_path / "m.onnx", tmp_path / "e.json"
    result = invoke("export", CNN, "--format", "onnx", "--opset", "12", "--out", out, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["export"]["details"]["opset"] == 12 and data["agreement"]["ok"]
    assert data["export"]["details"]["exporter"] == "torch.onnx.export(dynamo=False)"
    assert leftovers(tmp_path) == ["e.json", "m.onnx"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--format", "coreml", "--out", "m.mlpackage"), "unknown format 'coreml'"),
        (("--format", "onnx", "--out", "m.onnx", "--opset", "9"), "opset must be in 11.."),
        (("--format", "onnx", "--out", "m.onnx", "--int8", "static"), "--calib"),
        (("--format", "onnx"), "--format and --out go together"),
        (("--format", "onnx", "--out", "m.onnx", "--onnx", "n.onnx"), "give --onnx FILE, or --format"),
        (("--format", "onnx", "--out", "m.xml"), r"must end in .onnx"),
    ],
)
def test_cli_export_bad_input_is_one_error_line_and_no_files(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("export", CNN, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert leftovers(tmp_path) == []


def test_cli_runtime_not_installed_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(type(get_runtime("ncnn")), "modules", ("prunekit_no_such_module",))
    result = invoke("bench", CNN, "--runtime", "onnxruntime,ncnn", "--vs", CNN)
    assert result.exit_code == 2 and 'pip install "prunekit[ncnn]"' in result.output, result.output


def test_cli_bench_runtime_table_and_json(tmp_path):
    js = tmp_path / "b.json"
    args = ("bench", CNN, "--vs", CNN, "--runtime", "onnxruntime", "--runs", "3", "--warmup", "1")
    result = invoke(*args, "--batch-sizes", "1", "--threads", "1,2", "--json", js)
    assert result.exit_code == 0, result.output
    rows = json.loads(js.read_text())["rows"]
    assert [(r["threads"], r["runtime"]) for r in rows] == [(1, "onnxruntime"), (2, "onnxruntime")] * 2
    assert all(r["agree"] for r in rows) and "onnxruntime" in result.output
    dense = [r for r in rows if r is rows[2] or r is rows[3]]
    assert all(r["speedup"] == 1.0 for r in dense)


def test_runtime_latency_times_each_candidate_on_the_runtime(monkeypatch):
    from prunekit.deploy.runtimes.measure import runtime_latency

    measure = runtime_latency("onnxruntime", threads=1)
    small, large = nn.Linear(64, 8), nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
    assert measure(small, torch.randn(1, 64), 20) < measure(large, torch.randn(1, 512), 20)
    monkeypatch.setattr(type(get_runtime("openvino")), "modules", ("prunekit_no_such_module",))
    with pytest.raises(ExportError, match=r"prunekit\[openvino\]"):
        runtime_latency("openvino")


@pytest.mark.parametrize(
    ("name", "mode", "module"),
    [("litert", "dynamic", "ai_edge_quantizer"), ("litert", "static", "ai_edge_quantizer"),
     ("openvino", "static", "nncf")],
)  # fmt: skip
def test_edge_int8_follows_pytorch_by_cosine_and_top1(tmp_path, name, mode, module):
    pytest.importorskip(module, reason=f"INT8 on {name} needs {module}")
    calib = [torch.randn(1, 3, 16, 16) for _ in range(8)]
    agreements = list(_roundtrip(name, tmp_path, int8=mode, calibration=calib))
    assert all(a.ok and a.criterion == "int8" for a in agreements), [a.to_dict() for a in agreements]


class ShapeCache(nn.Module):
    """A forward that recomputes a tensor whenever the input shape changes (as YOLO's head makes its
    anchors), so its first call on a new shape runs more ops than the next one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shape: torch.Size | None = None
        self.offset = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape != x.shape:
            self.offset = torch.arange(x.shape[-1], dtype=x.dtype) * 0.5
            self.shape = x.shape
        return self.conv(x) + self.offset


def test_ncnn_traces_a_model_that_caches_per_input_shape(tmp_path):
    pytest.importorskip("pnnx", reason='pip install "prunekit[ncnn]"')
    model, x = ShapeCache().eval(), torch.randn(1, 3, 8, 8)
    model(torch.randn(2, 3, 8, 8))  # the cache holds another shape, as after an export at another batch
    rt = get_runtime("ncnn")
    out = rt.load(rt.export(model, x, tmp_path / "m.param"), threads=1).run(arrays(x))
    agreement = compare([model(x).detach()], out, tolerance=rt.tolerance)
    assert agreement.ok, agreement.to_dict()
