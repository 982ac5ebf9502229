"""INT8 quantization on the digits data: static (calibrated) and dynamic, dense and pruned (onnxruntime)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from prunekit.demo.data import load_splits, make_loaders
from prunekit.demo.model import DIGITS_CNN_PARAMS, build_model
from prunekit.deploy import export_onnx, onnx_accuracy, onnx_latency, quantize_onnx, run_onnx
from prunekit.errors import ConfigError
from prunekit.recover.train import accuracy, train
from prunekit.structured import prune

torch.set_num_threads(1)
BN_PARAMS = 2 * (32 + 64 + 128)  # DigitsCNN's BatchNorm weights + biases, folded into the convs on export


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A DigitsCNN trained for 3 epochs (~99 % test accuracy), its fp32 ONNX file and the data loaders."""
    splits = load_splits()
    train_loader, test_loader = make_loaders(splits, batch_size=64)
    model = build_model(0)
    train(model, train_loader, epochs=3, lr=3e-3, progress=False, seed=0)
    model.eval()
    out = tmp_path_factory.mktemp("digits")
    export = export_onnx(model, splits.x_test[:2], out / "fp32.onnx")
    return {
        "model": model,
        "export": export,
        "dir": out,
        "train": train_loader,
        "test": test_loader,
        "torch_acc": accuracy(model, test_loader),
    }


def calibration(loader, batches: int = 8):
    return [x for x, _ in itertools.islice(iter(loader), batches)]


def test_trained_cnn_export_folds_batchnorm_and_keeps_accuracy(digits):
    res = digits["export"]
    assert res.model_params == DIGITS_CNN_PARAMS
    assert res.initializer_params == DIGITS_CNN_PARAMS - BN_PARAMS  # 159,626 weights reach the file
    assert res.max_abs_err < 1e-4
    assert digits["torch_acc"] > 0.95
    acc = onnx_accuracy(res.path, digits["test"])
    assert abs(acc - digits["torch_acc"]) <= 1 / 450  # at most one of the 450 test images flips


def test_static_int8_is_3x_smaller_within_2_points(digits):
    src = digits["dir"] / "fp32.onnx"
    res = quantize_onnx(
        src, digits["dir"] / "static.onnx", mode="static", calibration=calibration(digits["train"])
    )
    assert res.format == "QDQ" and res.calibration_batches == 8 and res.per_channel
    assert res.bytes_before == src.stat().st_size
    assert res.ratio >= 3.0
    assert res.op_counts["QuantizeLinear"] >= 5 and res.op_counts["DequantizeLinear"] >= 10
    assert res.reduce_range and res.output_rel_err < 0.03 and res.output_cosine > 0.999
    acc = onnx_accuracy(res.path, digits["test"])
    assert acc >= digits["torch_acc"] - 0.02


def test_dynamic_int8_needs_no_data(digits):
    res = quantize_onnx(digits["dir"] / "fp32.onnx", digits["dir"] / "dynamic.onnx", mode="dynamic")
    assert res.format == "QOperator" and res.calibration_batches == 0
    assert res.output_rel_err is None and res.output_cosine is None  # no data to compare on
    assert res.op_counts["ConvInteger"] == 3 and res.op_counts["MatMulInteger"] == 2
    assert res.ratio >= 3.0
    assert onnx_accuracy(res.path, digits["test"]) >= digits["torch_acc"] - 0.02
    compared = quantize_onnx(
        digits["dir"] / "fp32.onnx",
        digits["dir"] / "dynamic2.onnx",
        mode="dynamic",
        compare_on=calibration(digits["test"], 2),
    )
    assert compared.calibration_batches == 0 and 0 < compared.output_rel_err < 0.2
    assert 0.98 < compared.output_cosine <= 1

    fc_only = quantize_onnx(
        digits["dir"] / "fp32.onnx", digits["dir"] / "fc.onnx", mode="dynamic", op_types=["MatMul", "Gemm"]
    )
    assert "ConvInteger" not in fc_only.op_counts and fc_only.op_counts["MatMulInteger"] == 2
    fc_params = 512 * 128 + 128 * 10  # the int8 weights; convs stay fp32
    assert fc_only.bytes_before - fc_only.bytes_after == pytest.approx(3 * fc_params, rel=0.02)


def test_pruned_plus_int8_is_smaller_than_dense_int8(digits):
    """Pruning and quantization compose: half the channels, then INT8, and the INT8 model follows its source.

    Pruned without fine-tuning, the model's fp32 accuracy is ~0.57 and its logits are close to each other,
    so kernel error shows up as accuracy. Measured on an AVX2 CPU without VNNI (onnxruntime 1.32, output
    error relative to fp32 on the 450 test images): 8-bit per-channel weights 0.121 (top-1 agreement 0.88,
    INT8 accuracy 0.489 vs 0.573; onnxruntime's unfused QDQ reference on the same file: 0.009), 7-bit
    weights (the default ``reduce_range=True``) 0.011 (agreement 0.99). The bounds below leave ~2x margin.
    """
    pruned = build_model(0)
    pruned.load_state_dict(digits["model"].state_dict())
    x = load_splits().x_test[:2]
    prune(pruned.eval(), x, ratio=0.5)
    export = export_onnx(pruned, x, digits["dir"] / "pruned.onnx")
    assert export.initializer_params < 0.3 * digits["export"].initializer_params  # conv params shrink ~4x
    fp32_acc = onnx_accuracy(export.path, digits["test"])
    res = quantize_onnx(
        export.path,
        digits["dir"] / "pruned.int8.onnx",
        mode="static",
        calibration=calibration(digits["train"]),
    )
    dense_int8 = (digits["dir"] / "static.onnx").stat().st_size
    assert res.bytes_after < 0.4 * dense_int8
    assert res.ratio >= 2.5  # less than 4x: the graph and the quantization scales are a fixed ~15 KB
    assert res.output_rel_err < 0.03 and res.output_cosine > 0.999  # measured on the calibration batches
    int8_out, fp32_out = (
        np.concatenate([run_onnx(path, x)[0] for x, _ in digits["test"]]) for path in (res.path, export.path)
    )
    assert np.linalg.norm(int8_out - fp32_out) / np.linalg.norm(fp32_out) < 0.03
    assert (int8_out.argmax(1) == fp32_out.argmax(1)).mean() >= 0.97
    assert onnx_accuracy(res.path, digits["test"]) >= fp32_acc - 0.02


def test_histogram_calibration_needs_batches_of_one_shape(digits):
    out = digits["dir"] / "hist.onnx"
    ragged = [torch.zeros(8, 1, 8, 8), torch.zeros(3, 1, 8, 8)]
    for method in ("entropy", "percentile"):
        with pytest.raises(ConfigError, match=r"batch 1 has .*\(3, 1, 8, 8\).*drop_last=True"):
            quantize_onnx(
                digits["dir"] / "fp32.onnx", out, mode="static", calibration=ragged, calibrate_method=method
            )
        assert not out.exists()
    res = quantize_onnx(digits["dir"] / "fp32.onnx", out, mode="static", calibration=ragged)  # minmax
    assert res.calibration_batches == 2
    res = quantize_onnx(
        digits["dir"] / "fp32.onnx",
        out,
        mode="static",
        calibration=calibration(digits["train"], 4),
        calibrate_method="entropy",
        reduce_range=False,
    )
    assert not res.reduce_range and res.to_dict()["output_rel_err"] == res.output_rel_err > 0


def test_onnx_latency_reports_its_settings(digits):
    stats = onnx_latency(digits["export"].path, torch.zeros(8, 1, 8, 8), runs=5, warmup=1, threads=1)
    assert (stats.runs, stats.warmup, stats.batch_size, stats.threads) == (5, 1, 8, 1)
    assert 0 < stats.median_ms <= stats.p90_ms


def test_calibration_with_targets_is_refused(digits):
    out = digits["dir"] / "bad.onnx"
    pairs = list(itertools.islice(iter(digits["train"]), 2))  # (inputs, targets): targets are not inputs
    with pytest.raises(ConfigError, match=r"calibration batch 0: .* give model inputs only"):
        quantize_onnx(digits["dir"] / "fp32.onnx", out, mode="static", calibration=pairs)
    assert not out.exists()
    assert not [p for p in digits["dir"].iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "static"}, "needs calibration"),
        ({"mode": "dynamic", "calibration": [torch.zeros(1, 1, 8, 8)]}, "only used with"),
        ({"mode": "int4"}, "mode must be one of"),
        ({"mode": "static", "calibration": [], "calibrate_method": "max"}, "calibrate_method must be"),
        ({"mode": "static", "calibration": []}, "calibration is empty"),
        ({"mode": "dynamic", "compare_on": []}, "compare_on is empty"),
        ({"mode": "dynamic", "compare_on": [(torch.zeros(1, 1, 8, 8), torch.ones(1))]}, "compare_on batch"),
        ({"onnx_path": "missing.onnx"}, "no such ONNX file"),
        ({"op_types": "Conv"}, "op_types must be a non-empty list"),
        ({"out_path": "fp32.onnx"}, "must differ"),
    ],
)
def test_bad_arguments(digits, kwargs, match):
    d = digits["dir"]
    onnx_path = d / kwargs.pop("onnx_path", "fp32.onnx")
    out_path = d / kwargs.pop("out_path", "never.onnx")
    with pytest.raises(ConfigError, match=match):
        quantize_onnx(onnx_path, out_path, **kwargs)
    assert not (d / "never.onnx").exists()


def test_failed_symbolic_shape_inference_is_retried_without_it_and_reported(digits, monkeypatch):
    import prunekit.deploy.quantize as quantize_module

    real = quantize_module.quant_pre_process
    calls = []

    def symbolic_fails(src, dst, **kwargs):
        calls.append(kwargs)
        assert kwargs or src.endswith("fp32.onnx")  # the retry reads a copy without the exporter's value_info
        if not kwargs.get("skip_symbolic_shape"):
            raise Exception("Incomplete symbolic shape inference")
        return real(src, dst, **kwargs)

    monkeypatch.setattr(quantize_module, "quant_pre_process", symbolic_fails)
    res = quantize_onnx(digits["dir"] / "fp32.onnx", digits["dir"] / "nosym.onnx", mode="dynamic")
    assert calls == [{}, {"skip_symbolic_shape": True}]
    assert "symbolic shape inference failed: Incomplete symbolic shape inference" in res.preprocess
    assert onnx_accuracy(res.path, digits["test"]) >= digits["torch_acc"] - 0.02

    monkeypatch.undo()
    ok = quantize_onnx(digits["dir"] / "fp32.onnx", digits["dir"] / "sym.onnx", mode="dynamic")
    assert ok.preprocess == "symbolic shape inference + optimisation"


def test_quantizing_a_yolo_head_leaves_no_files_in_the_current_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference fails on YOLOv8's head and dumps files into the cwd."""
    ultralytics = pytest.importorskip("ultralytics")
    model = ultralytics.YOLO("yolov8n.yaml").model.eval()
    for m in model.modules():
        if type(m).__name__ == "Detect":
            m.export, m.format = True, "onnx"

    class First(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x)[0] if isinstance(self.m(x), (tuple, list)) else self.m(x)

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    export_onnx(First().eval(), torch.rand(1, 3, 64, 64), tmp_path / "y.onnx", verify=False)
    res = quantize_onnx(tmp_path / "y.onnx", tmp_path / "y.int8.onnx", mode="dynamic")
    assert "symbolic shape inference failed" in res.preprocess
    assert list(cwd.iterdir()) == []
    assert os.getcwd() == str(cwd)
