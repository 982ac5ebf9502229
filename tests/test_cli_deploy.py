"""`prunekit export | save | load | bench | finetune`: right files on disk; bad input: one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.demo.data import load_splits
from prunekit.deploy import load, read_info

pytest.importorskip("onnxruntime")

CNN = "prunekit.demo.model:build_model"
SHAPE = "4,1,8,8"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    s = load_splits()
    np.savez(folder / "train.npz", x=s.x_train.numpy(), y=s.y_train.numpy())
    torch.save({"x": s.x_test, "y": s.y_test}, folder / "test.pt")
    np.save(folder / "calib.npy", s.x_train[:64].numpy())
    return folder


def test_export_writes_verified_onnx_and_int8(tmp_path, digits):
    onnx_path, js = tmp_path / "cnn.onnx", tmp_path / "e.json"
    args = ("export", CNN, "--onnx", onnx_path, "--input-shape", SHAPE, "--json", js)
    result = invoke(*args, "--int8", "static", "--calib", digits / "calib.npy")
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    params = sum(p.numel() for p in load_cli_cnn().parameters())
    assert data["export"]["verified"] and data["export"]["model_params"] == params
    assert data["int8"]["calibration_batches"] == 16  # 64 samples in batches of 4
    assert data["int8"]["reduce_range"] and 0 <= data["int8"]["output_rel_err"] < 1
    assert f"relative error {data['int8']['output_rel_err']:.3f}" in " ".join(result.output.split())
    assert (tmp_path / "cnn.int8.onnx").stat().st_size * 3 < onnx_path.stat().st_size


@pytest.mark.parametrize("calib", [False, True])
def test_dynamic_int8_reports_its_error_on_the_example_or_on_calib(tmp_path, digits, calib):
    onnx_path, js = tmp_path / "cnn.onnx", tmp_path / "e.json"
    extra = ("--calib", digits / "calib.npy") if calib else ()
    result = invoke(
        "export", CNN, "--onnx", onnx_path, "--input-shape", SHAPE, "--json", js, "--int8", "dynamic", *extra
    )
    assert result.exit_code == 0, result.output
    int8 = json.loads(js.read_text())["int8"]
    assert int8["mode"] == "dynamic" and int8["calibration_batches"] == 0
    assert 0 < int8["output_rel_err"] < 1 and 0 < int8["output_cosine"] <= 1
    assert int8["compared_on"] == (
        "--calib" if calib else "the example input (seeded random, the export's shape)"
    )
    assert f"on {int8['compared_on']}: relative error" in " ".join(result.output.split())


def load_cli_cnn():
    from prunekit.demo.model import build_model

    return build_model()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--int8", "static"), "--calib"),
        (("--int8", "fp4"), "dynamic or static"),
        (("--int8", "static", "--calib", "missing.npy"), "no calibration file"),
        (("--calib", "calib.npy"), "--calib is only used with --int8"),
    ],
)
def test_export_bad_options_are_one_line_and_write_nothing(tmp_path, extra, message):
    onnx_path = tmp_path / "never.onnx"
    result = invoke("export", CNN, "--onnx", onnx_path, "--input-shape", SHAPE, *extra)
    assert result.exit_code == 2 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_save_load_round_trip_and_sparse_encoding(tmp_path):
    sparse_sd = tmp_path / "sparse.pt"
    assert (
        invoke("sparsify", CNN, "--sparsity", "0.9", "--scope", "global", "--out", sparse_sd).exit_code == 0
    )
    dense_dir, sparse_dir, js = tmp_path / "dense", tmp_path / "sp", tmp_path / "l.json"
    for out, flags in ((dense_dir, ()), (sparse_dir, ("--sparse",))):
        result = invoke("save", sparse_sd, "--arch", CNN, "--input-shape", SHAPE, "--out", out, *flags)
        assert result.exit_code == 0, result.output
    assert read_info(sparse_dir)["weights"]["encoding"] == "sparse-fp32"
    assert (sparse_dir / "weights.pksparse").stat().st_size * 4 < (
        dense_dir / "weights.safetensors"
    ).stat().st_size
    result = invoke("load", sparse_dir, "--json", js, "--trust-code")
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["output_shapes"] == [[4, 10]] and data["spec"] == CNN
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(load(sparse_dir, trust_code=True)(x), load(dense_dir, trust_code=True)(x))


def test_load_of_a_non_checkpoint_is_one_line(tmp_path):
    result = invoke("load", tmp_path)
    assert result.exit_code == 2 and "not a prunekit checkpoint" in result.output


def test_bench_table_has_a_row_per_model_batch_and_thread_count(tmp_path):
    js = tmp_path / "b.json"
    args = ("bench", CNN, "--vs", CNN, "--batch-sizes", "1,2", "--input-shape", SHAPE, "--runs", "3")
    result = invoke(*args, "--warmup", "1", "--json", js)
    assert result.exit_code == 0, result.output
    rows = json.loads(js.read_text())["rows"]
    assert [(r["batch_size"], r["threads"]) for r in rows] == [(1, 1), (1, 1), (2, 1), (2, 1)]
    assert all(r["median_ms"] > 0 and r["throughput_per_s"] > 0 for r in rows)
    assert (
        rows[1]["speedup"] == 1.0 and rows[0]["model"] != rows[1]["model"]
    )  # the --vs model is the reference


def test_finetune_trains_on_file_data_and_saves_a_checkpoint(tmp_path, digits):
    out, js = tmp_path / "ft", tmp_path / "f.json"
    args = ("finetune", CNN, "--data", digits / "train.npz", "--val-data", digits / "test.pt")
    result = invoke(
        *args, "--epochs", "3", "--lr", "3e-3", "--input-shape", SHAPE, "--out", out, "--json", js
    )
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["history"][0]["metric"] < 0.3  # an untrained CNN guesses
    assert data["final_metric"] > 0.85
    restored_earlier = data["restored_best"] and data["best_step"] != data["steps"]
    assert (f"(the best evaluation, step {data['best_step']}" in result.output) is restored_earlier
    assert "epoch 3: loss" in result.output and f"at step {data['best_step']})" in result.output
    s = load_splits()
    with torch.no_grad():
        acc = (load(out, trust_code=True)(s.x_test).argmax(1) == s.y_test).float().mean().item()
    assert acc == pytest.approx(data["final_metric"], abs=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "exactly one of --epochs and --steps"),
        (("--epochs", "1", "--steps", "3"), "exactly one of --epochs and --steps"),
        (("--epochs", "1", "--data", "nothing.npz"), "no such file"),
        (("--epochs", "1", "--lr", "-1"), "lr must be a finite number > 0"),
        (("--epochs", "1", "--kd-alpha", "0.5"), "--kd-alpha and --kd-temperature need --teacher"),
        (("--epochs", "1", "--teacher", CNN, "--kd-alpha", "2"), "kd_alpha must be a number in [0, 1]"),
    ],
)
def test_finetune_bad_input_is_one_line_and_writes_nothing(tmp_path, digits, extra, message):
    out = tmp_path / "never"
    data = () if "--data" in extra else ("--data", digits / "train.npz")
    result = invoke("finetune", CNN, *data, "--input-shape", SHAPE, "--out", out, *extra)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
