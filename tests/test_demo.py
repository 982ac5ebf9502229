"""The embedded demo: data split, model, stages, run_demo end to end on a reduced budget, its files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from rich.console import Console
from sklearn.datasets import load_digits
from torch import nn

from prunekit.demo import DemoConfig, DemoResult, Stage, default_stages, run_demo
from prunekit.demo.data import load_splits, make_loaders
from prunekit.demo.model import DIGITS_CNN_PARAMS, DigitsCNN, build_model
from prunekit.demo.stages import train_dense
from prunekit.errors import ConfigError
from prunekit.recover import accuracy

# DigitsCNN by hand: Conv/Linear weights (prunable), all parameters, MACs for one 1x8x8 image.
PRUNABLE = 1 * 32 * 9 + 32 * 64 * 9 + 64 * 128 * 9 + 512 * 128 + 128 * 10  # 159,264
PARAMS = PRUNABLE + (32 + 64 + 128 + 128 + 10) + 2 * (32 + 64 + 128)  # + biases + BN weight/bias = 160,074
MACS = 8 * 8 * 32 * 9 + 8 * 8 * 64 * 32 * 9 + 4 * 4 * 128 * 64 * 9 + 512 * 128 + 128 * 10  # 2,444,544
PRUNED_90 = int(np.floor(0.9 * PRUNABLE + 0.5))  # 143,338 weights masked by a global 90% sparsify
# Half of every channel group removed: conv1 16, conv2 32, conv3 64, fc1 64 outputs (input and logits kept).
PARAMS_50 = (9 * 16 + 16) + (16 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (256 * 64 + 64) + (64 * 10 + 10)
PARAMS_50 += 2 * (16 + 32 + 64)  # BatchNorm weight + bias: 40,618 in all
MACS_50 = 8 * 8 * 16 * 9 + 8 * 8 * 32 * 16 * 9 + 4 * 4 * 64 * 32 * 9 + 256 * 64 + 64 * 10


def test_split_is_stratified_deterministic_and_scaled() -> None:
    a, b = load_splits(), load_splits()
    assert (len(a.y_train), len(a.y_test)) == (1347, 450)
    assert len(a.y_train) + len(a.y_test) == 1797
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_train.dtype == torch.float32
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    per_class = np.bincount(load_digits().target)
    test_counts = a.y_test.bincount(minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.25 * per_class) <= 1)  # stratified: every class ~25% in test
    assert np.array_equal(test_counts + a.y_train.bincount(minlength=10).numpy(), per_class)


def test_loaders_shuffle_the_same_way_for_the_same_seed() -> None:
    splits = load_splits()
    first = [next(iter(make_loaders(splits, seed=3)[0]))[1] for _ in range(2)]
    other = next(iter(make_loaders(splits, seed=4)[0]))[1]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], other)
    test_loader = make_loaders(splits)[1]
    assert torch.equal(torch.cat([y for _, y in test_loader]), splits.y_test)  # in order, unshuffled


def test_digits_cnn_size_and_seeded_init() -> None:
    model = build_model(0)
    assert sum(p.numel() for p in model.parameters()) == PARAMS == DIGITS_CNN_PARAMS
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert torch.equal(build_model(0).conv2.weight, model.conv2.weight)
    assert not torch.equal(build_model(1).conv2.weight, model.conv2.weight)


def identity_stage(model: nn.Module, ctx) -> nn.Module:
    ctx.note(marker=42)
    return model


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, Path, str]:
    """One reduced-budget demo run (4 + 2 epochs), plus an appended identity stage copied from dense."""
    root = tmp_path_factory.mktemp("demo")
    stages = [*default_stages(DemoConfig()), Stage("copy", "identity copy of dense", identity_stage)]
    buffer = io.StringIO()
    result = run_demo(
        out=root / "out" / "nested",
        json_path=root / "demo.json",
        quick=True,
        threads=1,
        console=Console(file=buffer, width=120),
        progress=False,
        stages=stages,
    )
    return result, root, buffer.getvalue()


def test_demo_reaches_accuracy_floors_on_a_reduced_budget(demo) -> None:
    result, _, printed = demo
    dense, sparse = result.row("dense"), result.row("sparse90")
    assert dense.accuracy >= 0.95  # 4 epochs reach ~99% on this split
    assert sparse.accuracy >= 0.93 and sparse.accuracy >= dense.accuracy - 0.04  # 90% sparse, 2 FT epochs
    assert "non-zero parameters" in printed and "sparse90" in printed


def test_demo_measures_exact_counts(demo) -> None:
    result, _, _ = demo
    dense, sparse = result.row("dense"), result.row("sparse90")
    assert (dense.params.total, dense.params.nonzero) == (PARAMS, PARAMS)
    assert (sparse.params.total, sparse.params.nonzero) == (PARAMS, PARAMS - PRUNED_90)
    assert dense.macs == sparse.macs == MACS  # unstructured zeros do not change dense MACs
    assert sparse.extra["pruned_weights"] == PRUNED_90 and sparse.extra["prunable_weights"] == PRUNABLE
    assert sparse.size.dense_bytes == dense.size.dense_bytes
    assert sparse.size.compressed_bytes < 0.4 * dense.size.compressed_bytes
    assert [s.batch_size for s in dense.latency] == [1, 64] and dense.latency[0].threads == 1


def test_structured_stage_removes_half_the_channels_and_keeps_accuracy(demo) -> None:
    result, _, _ = demo
    dense, channels = result.row("dense"), result.row("channels50")
    assert (channels.params.total, channels.macs) == (PARAMS_50, MACS_50)
    assert channels.extra["macs_ratio"] == MACS_50 / MACS
    assert channels.accuracy >= dense.accuracy - 0.03  # 2 fine-tune epochs in the quick budget
    assert channels.latency[1].median_ms < dense.latency[1].median_ms  # a quarter of the MACs at batch 64


def test_onnx_rows_are_verified_and_int8_is_smaller(demo) -> None:
    result, _, _ = demo
    channels, fp32, int8 = result.row("channels50"), result.row("onnx"), result.row("onnx-int8")
    assert fp32.accuracy == pytest.approx(channels.accuracy, abs=1 / 450)  # same model, another runtime
    assert fp32.extra["initializer_params"] <= PARAMS_50 and fp32.extra["max_abs_err"] < 1e-4
    assert int8.size.dense_bytes * 2.5 < fp32.size.dense_bytes
    assert int8.accuracy >= channels.accuracy - 0.02
    assert int8.extra["quantized_ops"]


def test_appended_stage_starts_from_a_copy_of_its_source(demo) -> None:
    result, _, _ = demo
    assert [row.name for row in result.rows] == [
        "dense",
        "sparse90",
        "channels50",
        "copy",
        "onnx",
        "onnx-int8",
    ]
    copy, dense = result.row("copy"), result.row("dense")
    assert copy.accuracy == dense.accuracy and copy.params == dense.params and copy.extra == {"marker": 42}


def test_json_has_every_stage_and_figure(demo) -> None:
    result, root, _ = demo
    data = json.loads((root / "demo.json").read_text())
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["data"] == {"train": 1347, "test": 450}
    assert data["config"]["epochs"] == 4 and data["config"]["finetune_epochs"] == 2
    names = ["dense", "sparse90", "channels50", "copy", "onnx", "onnx-int8"]
    assert [s["name"] for s in data["stages"]] == names
    for stage in data["stages"]:
        assert set(stage) >= {"accuracy", "params", "macs", "size", "latency", "seconds", "extra"}
        small = stage["name"] in ("channels50", "onnx", "onnx-int8")
        assert stage["params"]["total"] == (PARAMS_50 if small else PARAMS)
        assert stage["macs"] == (MACS_50 if small else MACS)
        assert set(stage["size"]) >= {"dense_bytes", "compressed_bytes", "codec"}
        assert all(lat["median_ms"] > 0 and lat["runs"] == 5 for lat in stage["latency"])
    sparse = data["stages"][1]["extra"]
    assert abs(sparse["sparsity_achieved"] - 0.9) < 1 / PRUNABLE
    assert 0 <= sparse["accuracy_before_finetune"] <= 1 and len(sparse["finetune_loss"]) == 2
    vs = data["vs_dense"]["sparse90"]
    assert vs["nonzero_fraction"] == (PARAMS - PRUNED_90) / PARAMS and vs["macs_fraction"] == 1.0
    assert set(data["environment"]) >= {"cpu", "cores", "threads", "torch"}


def test_out_dir_has_models_and_tables(demo) -> None:
    result, root, _ = demo
    out = root / "out" / "nested"  # created, parents included
    names = {"dense.safetensors", "sparse90.safetensors", "channels50.safetensors", "copy.safetensors"}
    names |= {"channels50.onnx", "channels50.int8.onnx", "results.md", "results.txt"}
    names |= {"report.html", "report.md", "stages.png"}  # the figures --help promises
    assert names | {"results.json"} == {p.name for p in out.iterdir()}  # no temporary files left
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Accuracy vs latency" in page and "prunekit demo" in page
    assert json.loads((out / "results.json").read_text()) == json.loads((root / "demo.json").read_text())
    assert "| non-zero parameters |" in (out / "results.md").read_text()
    assert "compressed" in (out / "results.txt").read_text()

    state = safetensors.torch.load_file(out / "sparse90.safetensors")
    assert not any("parametrizations" in key or "mask" in key for key in state)  # masks removed
    model = DigitsCNN()
    model.load_state_dict(state)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(int((w == 0).sum()) for w in weights) == PRUNED_90
    splits = load_splits()
    assert accuracy(model, make_loaders(splits)[1]) == result.row("sparse90").accuracy  # the model measured


def test_bad_arguments_fail_before_training_or_writing(tmp_path: Path) -> None:
    console = Console(file=io.StringIO())
    with pytest.raises(ConfigError, match="sparsity"):
        run_demo(sparsity=1.5, out=tmp_path / "a", console=console)
    with pytest.raises(ConfigError, match="epochs"):
        run_demo(epochs=0, out=tmp_path / "a", console=console)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_demo(out=blocker, console=console)
    bad = [Stage("a", "a", identity_stage, source="missing")]
    with pytest.raises(ConfigError, match="not an earlier stage"):
        run_demo(stages=bad, console=console)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_demo_bars_follow_the_command_lines_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit import progress as bars

    monkeypatch.delenv(bars.ENV, raising=False)
    monkeypatch.setattr(bars, "_cli", {"on": False})  # `prunekit --quiet demo`
    buffer = io.StringIO()
    stages = [Stage("dense", "dense (trained)", train_dense, source=None)]
    console = Console(file=buffer, force_terminal=True, color_system=None, width=120)
    run_demo(quick=True, epochs=1, console=console, stages=stages, onnx_source=None)
    printed = buffer.getvalue()
    assert "[1/1] dense" in printed and "train epoch" not in printed  # the training bar's text
