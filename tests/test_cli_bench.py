"""`prunekit bench`: each side its own architecture, speedups against the dense --vs, noisy rows named."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from prunekit.cli import app

CNN = "prunekit.demo.model:build_model"
SHAPE = "4,1,8,8"
QUICK = ("--input-shape", SHAPE, "--runs", "3", "--warmup", "1", "--batch-sizes", "1,2")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A state_dict of the demo CNN and a channel-pruned checkpoint of it."""
    from prunekit.demo.model import build_model

    folder = tmp_path_factory.mktemp("bench")
    torch.save(build_model().state_dict(), folder / "cnn.pt")
    result = invoke("prune", CNN, "--ratio", "0.5", "--input-shape", SHAPE, "--out", folder / "pruned")
    assert result.exit_code == 0, result.output
    return folder


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def check_speedups(data: dict, dense: str) -> None:
    """The dense (reference) row reads 1.00x in each setting; every other row is dense ms / its ms."""
    assert data["reference"] == dense
    for row in data["rows"]:
        base = next(
            r
            for r in data["rows"]
            if r["model"] == dense and (r["batch_size"], r["threads"]) == (row["batch_size"], row["threads"])
        )
        assert row["speedup"] == pytest.approx(base["median_ms"] / row["median_ms"])
        assert (row["speedup"] > 1) == (row["median_ms"] < base["median_ms"])
    assert all(r["speedup"] == 1.0 for r in data["rows"] if r["model"] == dense)


@pytest.mark.parametrize("arch_flag", ["--arch", "--vs-arch"])
def test_a_spec_against_a_state_dict_file(tmp_path, files, arch_flag):
    js = tmp_path / "b.json"
    result = invoke("bench", CNN, "--vs", files / "cnn.pt", arch_flag, CNN, *QUICK, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert [r["model"] for r in data["rows"]] == [CNN, str(files / "cnn.pt")] * 2
    check_speedups(data, str(files / "cnn.pt"))
    assert f"speedup = {files / 'cnn.pt'} ms / ms" in " ".join(result.output.split())


def test_a_state_dict_model_against_a_spec_and_the_pruned_against_the_dense(tmp_path, files):
    js = tmp_path / "b.json"
    result = invoke("bench", files / "cnn.pt", "--arch", CNN, "--vs", CNN, *QUICK, "--json", js)
    assert result.exit_code == 0, result.output
    check_speedups(json.loads(js.read_text()), CNN)
    result = invoke("bench", files / "pruned", "--vs", CNN, "--trust-code", *QUICK, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    check_speedups(data, CNN)
    assert {r["model"] for r in data["rows"]} == {str(files / "pruned"), CNN}


def test_each_side_builds_its_own_architecture(tmp_path, files):
    """--arch builds MODEL's file, --vs-arch the --vs file's: a wrong --vs-arch fails on the --vs side."""
    args = ("bench", files / "cnn.pt", "--arch", CNN, "--vs", files / "cnn.pt", *QUICK)
    assert invoke(*args, "--vs-arch", CNN).exit_code == 0
    line = error_line(invoke(*args, "--vs-arch", "torchvision:resnet18"))
    assert f"--vs {files / 'cnn.pt'}" in line and "does not fit --vs-arch" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (("{sd}", "--vs", CNN), "MODEL {sd} is a state_dict file: give --arch"),
        ((CNN, "--vs", "{sd}"), "--vs {sd} is a state_dict file: give --vs-arch"),
        ((CNN, "--vs", "{sd}", "--vs-arch", CNN, "--arch", CNN), "--arch is for a state_dict file"),
        ((CNN, "--vs", CNN, "--arch", CNN), "--arch is for a state_dict file"),
        ((CNN, "--vs", CNN, "--vs-arch", CNN), "--vs-arch is for a --vs state_dict file"),
    ],
)
def test_an_architecture_missing_or_unused_is_one_error_line(files, args, message):
    sd = str(files / "cnn.pt")
    line = error_line(invoke("bench", *(a.format(sd=sd) for a in args), *QUICK))
    assert message.format(sd=sd) in line


def test_noisy_rows_are_named_in_one_warning_and_marked_in_json(tmp_path, monkeypatch):
    """A row whose p90 is over 1.5x its median (here: every timing of the model with 10 outputs at batch 2)
    is named in the warning and marked noisy; the others are not."""
    import prunekit.measure as measure

    real = measure.measure_latency

    def spread(model, x, **kwargs):
        stats = real(model, x, **kwargs)
        if x.shape[0] == 2:
            return dataclasses.replace(stats, p90_ms=stats.median_ms * 1.6)
        return dataclasses.replace(stats, p90_ms=stats.median_ms * 1.4)

    monkeypatch.setattr(measure, "measure_latency", spread)
    js = tmp_path / "b.json"
    result = invoke("bench", CNN, "--vs", CNN, *QUICK, "--json", js)
    assert result.exit_code == 0, result.output
    rows = json.loads(js.read_text())["rows"]
    assert [r["noisy"] for r in rows] == [False, False, True, True]
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.output
    text = " ".join(result.output[result.output.index("warning:") :].split())
    assert "in 2 of 4 rows" in text and f"{CNN} batch 2 threads 1; {CNN} [1] batch 2 threads 1" in text
    assert "--runs" in text and "idle machine" in text


def test_quiet_rows_print_no_warning(tmp_path, monkeypatch):
    import prunekit.measure as measure

    real = measure.measure_latency
    monkeypatch.setattr(
        measure,
        "measure_latency",
        lambda model, x, **kw: dataclasses.replace(s := real(model, x, **kw), p90_ms=s.median_ms),
    )
    js = tmp_path / "b.json"
    result = invoke("bench", CNN, *QUICK, "--json", js)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert not any(r["noisy"] for r in json.loads(js.read_text())["rows"])


def test_noisy_runtime_rows_are_named_too(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="bench --runtime onnxruntime needs onnxruntime")
    import prunekit.deploy.runtimes.bench as runtime_bench

    real = runtime_bench.time_session

    def spread(session, inputs, **kwargs):
        stats = real(session, inputs, **kwargs)
        return dataclasses.replace(stats, p90_ms=stats.median_ms * (1.6 if kwargs["threads"] == 2 else 1.0))

    monkeypatch.setattr(runtime_bench, "time_session", spread)
    js = tmp_path / "b.json"
    args = ("bench", CNN, "--vs", CNN, "--runtime", "onnxruntime", "--runs", "3", "--warmup", "1")
    result = invoke(*args, "--batch-sizes", "1", "--threads", "1,2", "--input-shape", SHAPE, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert [r["noisy"] for r in data["rows"]] == [False, True, False, True]
    check_speedups(data, f"{CNN} [1]")
    text = " ".join(result.output[result.output.index("warning:") :].split())
    assert f"onnxruntime {CNN} batch 1 threads 2; onnxruntime {CNN} [1] batch 1 threads 2" in text


def test_bench_report_has_the_timed_rows_and_a_speedup_chart(files, tmp_path):
    pytest.importorskip("matplotlib")
    report, js = tmp_path / "report", tmp_path / "b.json"
    args = ("--vs", CNN, *QUICK, "--trust-code", "--json", js, "--report", report)
    result = invoke("bench", files / "pruned", *args)
    assert result.exit_code == 0, result.output
    rows = json.loads(js.read_text())["rows"]
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    assert "<h2>Latency (bench)</h2>" in html and "## Latency (bench)" in md
    assert "<h2>Measured speedup</h2>" in html and 'src="data:image/png;base64,' in html
    assert (report / "latency.png").read_bytes().startswith(b"\x89PNG")
    table = md.split("## Latency (bench)")[1].split("## ")[0]
    assert sum(line.startswith("| torch |") for line in table.splitlines()) == len(rows) == 4
    assert f"{rows[0]['median_ms']:.3f}" in table and f"{rows[0]['speedup']:.2f}x" in table


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_rows_sit_beside_each_models_fp32_rows_against_the_fp32_reference(tmp_path, files, mode):
    pytest.importorskip("onnxruntime", reason="bench --runtime onnxruntime needs onnxruntime")
    import numpy as np

    js, calib = tmp_path / "b.json", tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32))
    extra = ("--calib", calib) if mode == "static" else ()
    args = ("bench", files / "pruned", "--vs", CNN, "--runtime", "onnxruntime", "--int8", mode, *extra)
    result = invoke(*args, *QUICK, "--trust-code", "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    check_speedups(data, CNN)
    pruned = str(files / "pruned")
    by_model = {(r["model"], r["int8"]) for r in data["rows"]}
    assert by_model == {(CNN, None), (f"{CNN} int8", mode), (pruned, None), (f"{pruned} int8", mode)}
    assert all(r["agreement"]["criterion"] == ("int8" if r["int8"] else "fp32") for r in data["rows"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--int8", "dynamic"), "--int8 times runtime INT8 models: give --runtime too"),
        (("--runtime", "onnxruntime", "--int8", "fp4"), "--int8 must be dynamic or static"),
        (("--runtime", "onnxruntime", "--int8", "static"), "--int8 static needs --calib FILE"),
        (("--runtime", "onnxruntime", "--calib", "c.npy"), "--calib is for --int8 static"),
    ],
)
def test_bad_int8_options_are_one_line(extra, message):
    assert message in error_line(invoke("bench", CNN, "--input-shape", SHAPE, *extra))


def test_int8_a_runtime_does_not_offer_is_one_line():
    from prunekit.deploy.runtimes import get_runtime

    if not get_runtime("ncnn").available():
        pytest.skip('bench --runtime ncnn needs pip install "prunekit[ncnn]"')
    args = ("bench", CNN, "--input-shape", SHAPE, "--runtime", "ncnn", "--int8", "dynamic")
    assert "runtime ncnn has no dynamic INT8 here (offered: none)" in error_line(invoke(*args))
