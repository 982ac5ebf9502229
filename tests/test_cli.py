"""The prunekit command line: results on disk are right, and every bad input is one line, exit 2, no file."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_models import TINY_PARAMS, TINY_WEIGHTS, TinyNet, tiny_model
from safetensors.torch import load_file
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.models.spec import load_model

TINY = f"{tiny_model.__module__}:tiny_model"
runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def canonical(weight: torch.Tensor) -> torch.Tensor:
    """(out, *kernel, in): the layout in which N:M groups run along the last dim."""
    return weight.permute(0, *range(2, weight.dim()), 1) if weight.dim() > 2 else weight


@pytest.fixture
def files(tmp_path):
    """TinyNet saved as a state_dict and as a pickled module; output paths in a folder not yet made."""
    source = tiny_model()
    with torch.no_grad():
        source.fc.weight.mul_(3)  # not what the factory builds: shows which weights were loaded
    torch.save(source.state_dict(), tmp_path / "tiny.pt")
    torch.save(source, tmp_path / "whole.pt")
    return {
        "source": source,
        "sd": tmp_path / "tiny.pt",
        "pickle": tmp_path / "whole.pt",
        "out": tmp_path / "results" / "sparse.pt",
        "json": tmp_path / "results" / "result.json",
    }


# --- error paths: one line on stderr, exit 2, nothing written, inputs unchanged -----------------------------

ERROR_CASES = {
    "sparsity above 1": (
        ["sparsify", "{sd}", "--arch", TINY, "--sparsity", "1.5"],
        "sparsity must be in [0, 1)",
    ),
    "negative sparsity": (
        ["sparsify", "{sd}", "--arch", TINY, "--sparsity", "-0.1"],
        "sparsity must be in [0, 1)",
    ),
    "unknown pattern": (["sparsify", "{sd}", "--arch", TINY, "--pattern", "foo"], "unknown pattern 'foo'"),
    "N:M not dividing a layer": (
        ["sparsify", "{sd}", "--arch", TINY, "--pattern", "3:7"],
        "pattern 3:7 fits none of the selected layers (e.g. 'conv1': 4 input channels, not a multiple of 7)",
    ),
    "include matching nothing": (
        ["sparsify", "{sd}", "--arch", TINY, "--sparsity", "0.5", "--include", "nomatch"],
        "include 'nomatch' matches no module",
    ),
    "missing file": (["sparsify", "{missing}", "--arch", TINY, "--sparsity", "0.5"], "no such file: "),
    "pickle without --trust-pickle": (
        ["sparsify", "{pickle}", "--sparsity", "0.5"],
        "is a pickled module (it imports",
    ),
    "unknown torchvision name": (
        ["sparsify", "torchvision:resnet181", "--sparsity", "0.5"],
        "unknown torchvision model 'resnet181'; close names: resnet18",
    ),
    "state_dict without --arch": (["sparsify", "{sd}", "--sparsity", "0.5"], "is a state_dict; pass --arch"),
    "sparsity not a number": (
        ["sparsify", "{sd}", "--arch", TINY, "--sparsity", "lots"],
        "Invalid value for '--sparsity'",
    ),
    "analyze: unknown torchvision name": (
        ["analyze", "torchvision:vgg99"],
        "unknown torchvision model 'vgg99'",
    ),
    "analyze: missing file": (["analyze", "{missing}", "--arch", TINY], "no such file: "),
    "analyze: pickle without --trust-pickle": (
        ["analyze", "{pickle}"],
        "pass --trust-pickle only if you trust",
    ),
    "analyze: no input shape for a factory": (["analyze", TINY], "no default input shape"),
    "analyze: malformed input shape": (
        ["analyze", TINY, "--input-shape", "1,4,x"],
        "input shape must be positive integers",
    ),
    "analyze: zstd level out of range": (
        ["analyze", TINY, "--input-shape", "1,4,8,8", "--zstd-level", "30"],
        "zstd_level must be in [1, 22], got 30",
    ),
    "analyze: runs below 1": (["analyze", TINY, "--input-shape", "1,4,8,8", "--runs", "0"], "runs"),
    "analyze: input shape the model rejects": (
        ["analyze", TINY, "--input-shape", "1,3,8,8", "--no-latency"],
        "the model fails on an input of shape 1,3,8,8",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_paths_exit_2_with_one_line_and_write_nothing(case, files, tmp_path):
    args, message = ERROR_CASES[case]
    paths = {"sd": files["sd"], "pickle": files["pickle"], "missing": tmp_path / "nope" / "missing.pt"}
    args = [a.format(**paths) for a in args]
    args += ["--json", str(files["json"])] + (["--out", str(files["out"])] if args[0] == "sparsify" else [])
    before = snapshot(tmp_path)

    result = invoke(*args)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1  # exactly one line
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert snapshot(tmp_path) == before  # no --out, no --json, no folder, input files unchanged
    assert not files["out"].parent.exists()


def test_demo_leaves_defaults_to_run_demo(monkeypatch):
    calls = []
    monkeypatch.setattr("prunekit.demo.run_demo", lambda **kwargs: calls.append(kwargs))
    assert invoke("demo").exit_code == 0
    assert {k: v for k, v in calls[0].items() if k != "console"} == {
        "out": None,
        "json_path": None,
        "quick": False,
    }


def test_demo_bad_option_writes_nothing(tmp_path):
    result = invoke("demo", "--sparsity", "1.5", "--out", tmp_path / "demo", "--json", tmp_path / "d.json")
    assert result.exit_code == 2
    assert result.stderr == "error: sparsity must be in (0, 1), got 1.5\n"
    assert snapshot(tmp_path) == {}
    assert not (tmp_path / "demo").exists()


def test_failed_sparsify_onto_its_own_input_leaves_it_intact(files):
    before = files["sd"].read_bytes()
    result = invoke("sparsify", files["sd"], "--arch", TINY, "--sparsity", "1.5", "--out", files["sd"])
    assert result.exit_code == 2
    assert files["sd"].read_bytes() == before


def test_missing_out_is_a_usage_error(files):
    result = invoke("sparsify", TINY, "--sparsity", "0.5")
    assert result.exit_code == 2
    assert result.stderr == "error: Missing option '--out'.\n"


def test_out_must_not_be_a_directory(tmp_path):
    result = invoke("sparsify", TINY, "--sparsity", "0.5", "--out", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--out'")
    assert snapshot(tmp_path) == {}


# --- sparsify -----------------------------------------------------------------------------------------------


def test_sparsify_half_writes_a_plain_state_dict_with_exactly_half_zeros(files):
    result = invoke("sparsify", TINY, "--sparsity", "0.5", "--out", files["out"], "--json", files["json"])
    assert result.exit_code == 0, result.output

    state = torch.load(files["out"], weights_only=True)
    fresh = tiny_model()
    assert list(state) == list(fresh.state_dict())  # no parametrization or mask keys
    loaded = TinyNet()
    loaded.load_state_dict(state, strict=True)
    original = fresh.state_dict()
    for key, numel in TINY_WEIGHTS.items():
        weight, dense = state[key], original[key]
        assert weight.numel() == numel
        assert int((weight == 0).sum()) == numel // 2
        kept = weight != 0
        assert torch.equal(weight[kept], dense[kept])  # survivors keep their values
        assert dense[kept].abs().min() >= dense[~kept].abs().max()  # magnitude: the smallest went
    for key in ("conv1.bias", "bn.weight", "bn.running_var", "fc.bias"):
        assert torch.equal(state[key], original[key])

    report = json.loads(files["json"].read_text())
    assert report["pruned"] == sum(TINY_WEIGHTS.values()) // 2 == 800
    assert report["numel"] == 1600
    assert {name: layer["pruned"] for name, layer in report["layers"].items()} == {
        "conv1": 144,
        "conv2": 576,
        "fc": 80,
    }
    assert "Global sparsity" not in result.stdout  # the rich table, not the plain lines
    assert "50.00%" in result.stdout


def test_sparsify_2_4_to_safetensors_keeps_two_of_every_four(files, tmp_path):
    out = tmp_path / "sparse.safetensors"
    result = invoke("sparsify", TINY, "--pattern", "2:4", "--out", out)
    assert result.exit_code == 0, result.output

    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user writes, not 0o600
    state = load_file(out)
    for key in TINY_WEIGHTS:
        groups = canonical(state[key]).reshape(-1, 4)
        assert ((groups == 0).sum(dim=1) == 2).all(), key
    TinyNet().load_state_dict(state, strict=True)


def test_sparsify_to_pksparse_is_compressed_and_loads_back(tmp_path):
    dense, packed = tmp_path / "sparse.safetensors", tmp_path / "sparse.pksparse"
    result = invoke("sparsify", TINY, "--sparsity", "0.9", "--out", dense)
    assert result.exit_code == 0, result.output
    assert "name it .pksparse for the compressed sparse format" in " ".join(result.stdout.split())
    result = invoke("sparsify", TINY, "--sparsity", "0.9", "--out", packed)
    assert result.exit_code == 0, result.output
    assert "compressed sparse state_dict" in " ".join(result.stdout.split())
    assert packed.stat().st_size < 0.5 * dense.stat().st_size
    state, expected = load_model(str(packed), arch=TINY).state_dict(), load_file(dense)
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[key], expected[key]) for key in expected)


def test_sparsify_lists_layers_the_pattern_cannot_fit_and_labels_its_figures(tmp_path):
    out, report = tmp_path / "sparse.pt", tmp_path / "sparse.json"
    result = invoke("sparsify", TINY, "--pattern", "2:8", "--out", out, "--json", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["skipped"] == {"conv1": "4 input channels, not a multiple of 8"}
    text = " ".join(result.stdout.split())
    assert "skipped: 4 input channels, not a multiple of 8" in text
    # over the sparsified layers: 75 %; over all prunable weights (conv1's 288 dense): 1239 / 1600
    assert "sparsity 75.00% of the sparsified layers' weights" in text
    assert "61.50% of all prunable weights" in text
    assert "all prunable weights" in text.split("2:8 local")[0]  # the table's footer says it too
    strict = invoke("sparsify", TINY, "--pattern", "2:8", "--strict", "--out", tmp_path / "strict.pt")
    assert strict.exit_code == 2 and "does not fit layer 'conv1'" in strict.output


def test_sparsify_state_dict_with_arch_uses_the_file_weights(files):
    result = invoke("sparsify", files["sd"], "--arch", TINY, "--sparsity", "0.25", "--out", files["out"])
    assert result.exit_code == 0, result.output
    state = torch.load(files["out"], weights_only=True)
    source = files["source"].state_dict()
    kept = state["fc.weight"] != 0
    assert int((~kept).sum()) == 40  # 25% of 160
    assert torch.equal(state["fc.weight"][kept], source["fc.weight"][kept])  # the tripled weights


def test_sparsify_trusted_pickle(files):
    result = invoke("sparsify", files["pickle"], "--trust-pickle", "--sparsity", "0.5", "--out", files["out"])
    assert result.exit_code == 0, result.output
    state = torch.load(files["out"], weights_only=True)
    TinyNet().load_state_dict(state, strict=True)
    assert int((state["fc.weight"] == 0).sum()) == 80


def test_sparsify_include_and_exclude(tmp_path):
    out_include, out_exclude = tmp_path / "inc.pt", tmp_path / "exc.pt"
    assert (
        invoke("sparsify", TINY, "--sparsity", "0.5", "--include", "fc", "--out", out_include).exit_code == 0
    )
    excluded = invoke("sparsify", TINY, "--sparsity", "0.5", "--exclude", "conv*", "--out", out_exclude)
    assert excluded.exit_code == 0
    original = tiny_model().state_dict()
    for out in (out_include, out_exclude):
        state = torch.load(out, weights_only=True)
        assert int((state["fc.weight"] == 0).sum()) == 80
        assert torch.equal(state["conv1.weight"], original["conv1.weight"])
        assert torch.equal(state["conv2.weight"], original["conv2.weight"])


def test_factory_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cli_local_models.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(8, 4)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        result = invoke("sparsify", "cli_local_models:build", "--sparsity", "0.5", "--out", "lin.pt")
    finally:
        sys.modules.pop("cli_local_models", None)
    assert result.exit_code == 0, result.output
    assert int((torch.load(tmp_path / "lin.pt", weights_only=True)["weight"] == 0).sum()) == 16


# --- analyze ------------------------------------------------------------------------------------------------


def test_analyze_factory_json_has_exact_counts(tmp_path):
    out = tmp_path / "profile.json"
    result = invoke("analyze", TINY, "--input-shape", "1,4,8,8", "--no-latency", "--json", out)
    assert result.exit_code == 0, result.output
    profile = json.loads(out.read_text())
    assert profile["params"]["total"] == sum(TINY_PARAMS.values()) == 1650
    rows = {row["name"]: row for row in profile["layers"]}
    assert {name: rows[name]["params"] for name in TINY_PARAMS} == TINY_PARAMS
    # MACs per sample: conv1 8x8 positions * 8 out * 4*9, conv2 8x8 * 16 * 8*9, fc 16*10
    assert rows["conv1"]["macs"] == 64 * 8 * 36
    assert rows["conv2"]["macs"] == 64 * 16 * 72
    assert rows["fc"]["macs"] == 160
    assert "conv2" in result.stdout


def test_analyze_sees_sparsity_of_a_sparsified_file(tmp_path):
    sparse = tmp_path / "sparse.pt"
    assert invoke("sparsify", TINY, "--sparsity", "0.5", "--out", sparse).exit_code == 0
    out = tmp_path / "profile.json"
    result = invoke(
        "analyze", sparse, "--arch", TINY, "--input-shape", "1,4,8,8", "--no-latency", "--json", out
    )
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(out.read_text())["layers"]}
    assert rows["fc"]["params"] - rows["fc"]["nonzero"] == 80
    assert rows["conv2"]["params"] - rows["conv2"]["nonzero"] == 576


def test_analyze_torchvision_resnet18_without_latency(tmp_path):
    out = tmp_path / "resnet18.json"
    # keep the compression cheap: level 1 on resnet18's 47 MB takes well under a second.
    result = invoke("analyze", "torchvision:resnet18", "--no-latency", "--zstd-level", "1", "--json", out)
    assert result.exit_code == 0, result.output
    profile = json.loads(out.read_text())
    assert profile["params"]["total"] == 11_689_512
    assert 1.80e9 < profile["macs"] < 1.83e9  # torchvision lists 1.81 GFLOPS (multiply-adds) at 224x224
    assert profile["size"]["dense_bytes"] > 4 * 11_689_512  # float32 weights and BN buffers
    assert profile["size"]["codec"] == "zstd-1"


# --- demo (the run itself is tested in test_demo; here: the options reach run_demo) -------------------------


def test_demo_passes_its_options_to_run_demo(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("prunekit.demo.run_demo", lambda **kwargs: calls.append(kwargs))
    args = ["--out", tmp_path / "d", "--json", tmp_path / "d.json", "--quick", "--epochs", "3"]
    args += ["--finetune-epochs", "1", "--sparsity", "0.8", "--seed", "5", "--threads", "1"]
    result = invoke("demo", *args)
    assert result.exit_code == 0, result.output
    [kwargs] = calls
    console = kwargs.pop("console")
    assert console.width == 160  # not a terminal: wide enough for the demo table
    assert kwargs == {
        "out": tmp_path / "d",
        "json_path": tmp_path / "d.json",
        "epochs": 3,
        "finetune_epochs": 1,
        "sparsity": 0.8,
        "quick": True,
        "seed": 5,
        "threads": 1,
    }


# --- the program itself -------------------------------------------------------------------------------------


def test_version_in_a_real_process():
    done = subprocess.run(
        [sys.executable, "-m", "prunekit", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"prunekit {importlib.metadata.version('prunekit')}\n"


def test_cli_import_leaves_heavy_extras_alone():
    code = "import sys, prunekit.cli; print(sorted({'ultralytics', 'transformers'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_command_prints_help():
    result = invoke()
    assert result.exit_code == 0
    for command in ("demo", "analyze", "sparsify"):
        assert command in result.stdout


# --- sparsify loads models like every command; outputs and input sizes checked before any work --------------


def test_sparsify_takes_the_shared_loading_options(tmp_path):
    out = tmp_path / "net_24.pt"
    result = invoke("sparsify", TINY, "--pattern", "2:4", "--input-shape", "1,4,8,8", "--out", out)
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    groups = canonical(state["fc.weight"]).reshape(-1, 4)
    assert bool(((groups != 0).sum(dim=1) <= 2).all())
    bad = invoke("sparsify", TINY, "--pattern", "2:4", "--input-shape", "1,3,8,8", "--out", tmp_path / "b.pt")
    assert bad.exit_code == 2 and "the model fails on an input of shape 1,3,8,8" in bad.stderr
    assert not (tmp_path / "b.pt").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", TINY, "--input-shape", "1,4,8,8", "--no-latency"],
        ["sparsify", TINY, "--sparsity", "0.5", "--out", "{ok}"],
        ["check", TINY, "--input-shape", "1,4,8,8"],
        ["save", TINY, "--input-shape", "1,4,8,8", "--out", "{ok}"],
        ["bench", TINY, "--input-shape", "1,4,8,8"],
    ],
)
def test_json_under_a_regular_file_is_one_line_exit_2(tmp_path, args):
    blocker = tmp_path / "somefile"
    blocker.write_text("keep me")
    target = blocker / "x.json"
    result = invoke(*[a.format(ok=tmp_path / "ok") for a in args], "--json", target)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: cannot write --json {target}: {blocker} is a file, not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile"]  # nothing else written


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs a read-only /sys")
@pytest.mark.parametrize(
    "args",
    [
        ["sparsify", TINY, "--sparsity", "0.5", "--out", "/sys/prunekit-x.pt"],
        ["prune", TINY, "--input-shape", "1,4,8,8", "--out", "/sys/prunekit-ckpt"],
        ["export", TINY, "--input-shape", "1,4,8,8", "--onnx", "/sys/prunekit.onnx"],
        ["analyze", TINY, "--input-shape", "1,4,8,8", "--json", "/sys/prunekit.json"],
    ],
)
def test_an_unwritable_output_directory_is_one_line_exit_2(args):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: cannot write --") and result.stderr.count("\n") == 1
    assert "/sys is not writable" in result.stderr


def test_an_absurd_input_shape_is_refused_before_loading(monkeypatch):
    import prunekit.models.spec as spec

    monkeypatch.setattr(spec, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    result = invoke("analyze", TINY, "--input-shape", "1,3,100000,100000")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: --input-shape 1,3,100000,100000 is 3e+10 values (112 GiB as float32), over the 2.15e+09 "
        "allowed: give a smaller shape\n"
    )


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 40000000000000 bytes.\nmore"
        ),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    ],
)
def test_running_out_of_memory_is_one_line_exit_2(monkeypatch, error):
    import prunekit.models.spec as spec

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(spec, "check_forward", fail)
    result = invoke("analyze", TINY, "--input-shape", "1,4,8,8", "--no-latency")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: out of memory (") and result.stderr.count("\n") == 1
    assert result.stderr.endswith("use a smaller --input-shape\n")


def test_other_runtime_errors_are_not_dressed_as_memory_errors(monkeypatch):
    import prunekit.models.spec as spec

    def fail(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(spec, "check_forward", fail)
    result = invoke("analyze", TINY, "--input-shape", "1,4,8,8", "--no-latency")
    assert isinstance(result.exception, RuntimeError) and "out of memory" not in result.output


def test_accelerate_tunes_over_batch_sizes_and_writes_a_checkpoint_that_loads_accelerated(
    tmp_path, monkeypatch
):
    import prunekit as pk
    import prunekit.sparse.accelerate as acc
    from prunekit.sparse.kernels import SparseLinear

    monkeypatch.setattr(
        acc, "_time_once", lambda fn, x: 1.0 if getattr(fn, "kernel", "") == "csr-mm" else 9.0
    )
    out, report = tmp_path / "fast", tmp_path / "fast.json"
    args = ["accelerate", TINY, "--input-shape", "1,4,8,8", "--out", out, "--json", report]
    result = invoke(*args, "--batch-sizes", "1,8,32", "--min-sparsity", "0", "--runs", "2")
    assert result.exit_code == 0, result.output
    assert "batch 32" in result.stdout and "1 layer of 1 on sparse kernels" in result.stdout
    data = json.loads(report.read_text())
    assert data["swapped"] == ["fc"] and data["batch_sizes"] == [1, 8, 32]
    assert set(data["layers"][0]["timings"]) == {"1", "8", "32"}
    assert json.loads((out / "prunekit.json").read_text())["accelerated"] == {"fc": "csr-mm"}
    loaded = pk.load(out)
    assert isinstance(loaded.fc, SparseLinear)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(loaded(x), tiny_model().eval()(x), atol=1e-5)
    bad = invoke("accelerate", TINY, "--out", tmp_path / "bad", "--batch-sizes", "1,x")
    assert bad.exit_code == 2 and "--batch-sizes takes comma-separated positive integers" in bad.output
    assert not (tmp_path / "bad").exists()
