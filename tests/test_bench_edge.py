"""bench/bench_edge.py's row logic on a tiny CNN: model keys, alternated timing, records with the issue's
fields, a failing converter's first error line as the row's result, resuming, and the generated section."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="the bench's rows run on onnxruntime: pip install 'prunekit[onnx]'")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_edge as be

from prunekit.deploy.runtimes import RUNTIMES
from prunekit.deploy.runtimes.onnxruntime import OnnxRuntime
from prunekit.errors import ConfigError, ExportError

FAST = be.Settings(runs=2, warmup=1, rounds=3)


class Converter(OnnxRuntime):
    """onnxruntime whose converter fails with a multi-line message, as onnx2tf / litert-torch do."""

    name = "failing"
    calls = 0

    def _write(self, *args, **kwargs):
        Converter.calls += 1
        raise ExportError("tiny converter cannot convert the model: op Foo unsupported\n  at node 3\n  trace")


def tiny(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    return model.eval(), torch.randn(1, 3, size, size)


@pytest.fixture
def zoo(monkeypatch):
    monkeypatch.setitem(be.SIZES, "tiny", 16)
    monkeypatch.setattr(be, "dense_model", tiny)
    monkeypatch.setitem(RUNTIMES, "failing", Converter)


def test_model_keys_carry_the_size_and_bad_ones_are_refused():
    assert be.parse_model("yolo26n@320") == ("yolo26n", 320)
    assert be.parse_model("yolo11n") == ("yolo11n", 640)
    assert {be.parse_model(k) for k in be.ZOO} >= {("yolov8n", 640), ("yolov8n", 320), ("resnet50", 224)}
    for bad, message in [("yolo5n@640", "unknown model"), ("yolo11n@300", "multiple of 32"),
                         ("resnet50@x", "bad size")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            be.parse_model(bad)


def test_alternated_rounds_flip_the_order():
    calls = []

    class Log:
        def __init__(self, label):
            self.label = label

        def run(self, inputs):
            calls.append(self.label)
            return list(inputs)

    rounds = be.time_alternated({"d": Log("d"), "p": Log("p")}, [np.zeros(2)], 1, FAST)
    assert [len(v) for v in rounds.values()] == [3, 3]
    timed = calls[2:]  # one warm-up call each, then per round one untimed call + 2 timed ones per model
    assert timed == ["d"] * 3 + ["p"] * 3 + ["p"] * 3 + ["d"] * 3 + ["d"] * 3 + ["p"] * 3


def test_rows_record_the_issue_fields_failures_and_resume(zoo, tmp_path):
    row = be.Row("tiny@16", FAST)
    try:
        records, seconds = row.measure(0.5, "onnxruntime")
        failed, _ = row.measure(0.5, "failing")
        again, _ = row.measure(0.3, "failing")
    finally:
        row.close()
    assert seconds > 0 and [r["threads"] for r in records] == list(be.THREADS)
    for r in records + failed:
        assert set(be.RECORD_FIELDS) <= set(r) and r["model"] == "tiny@16" and r["size"] == 16
    for r in records:
        assert r["agree"] is True and r["macs_reduction"] > 1.5
        assert r["dense_ms"] == min(r["rounds_ms"]["dense"]) and len(r["rounds_ms"]["pruned"]) == 3
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["pruned_ms"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["macs_reduction"])
    assert {r["error"] for r in failed} == {"tiny converter cannot convert the model: op Foo unsupported"}
    assert {r["dense_ms"] for r in failed} == {None} and again[0]["error"] == failed[0]["error"]
    assert Converter.calls == 1  # the dense model's failed conversion is not tried again for ratio 0.3

    path = tmp_path / "edge.json"
    be.save_cache(records + failed, FAST, "Machine: test.", path)
    cached = be.load_cache(FAST, path)
    assert be.done(cached, "tiny@16", 0.5, "onnxruntime") and not be.done(
        cached, "tiny@16", 0.3, "onnxruntime"
    )
    assert be.load_cache(be.Settings(runs=3, warmup=1, rounds=3), path) == []  # other settings: afresh

    text = be.markdown(cached, "Machine: test.", FAST, ["litert"])
    r1 = records[0]
    assert f"| tiny@16 | 0.5 | onnxruntime | 1 | {r1['dense_ms']:.2f} | {r1['pruned_ms']:.2f} |" in text
    assert "| error: tiny converter cannot convert the model: op Foo unsupported |" in text
    assert "2 of 2 measured records agree" in text and "Failed rows" in text and "tiny@16 0.5 failing" in text
    assert 'Not in this run (not installed): litert (pip install "prunekit[litert]").' in text


def test_estimate_scales_the_timed_calls_only():
    rec = {"dense_ms": 100.0, "pruned_ms": 50.0, **be.Settings(runs=10, warmup=3, rounds=3).__dict__}
    quick_calls, full_calls = be.Settings(runs=10, warmup=3).calls(), be.FULL.calls()
    assert be.estimate(5.0, [rec], be.FULL) == pytest.approx(5.0 + 0.15 * (full_calls - quick_calls))
    assert be.estimate(5.0, [{"error": "x"}], be.FULL) == 5.0


def test_no_write_keeps_the_records_and_leaves_the_results_file(zoo, tmp_path, monkeypatch):
    records, results = tmp_path / "edge.json", tmp_path / "RESULTS.md"
    results.write_text("untouched\n")
    argv = ["bench_edge.py", "--models", "tiny@16", "--ratios", "0.5", "--runtimes", "onnxruntime"]
    argv += ["--runs", "2", "--rounds", "1", "--json", str(records), "--out", str(results), "--no-write"]
    monkeypatch.setattr("sys.argv", argv)
    be.main()
    assert results.read_text() == "untouched\n"
    cached = be.load_cache(be.Settings(runs=2, warmup=be.FULL.warmup, rounds=1), records)
    assert be.done(cached, "tiny@16", 0.5, "onnxruntime")
