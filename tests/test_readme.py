"""README.md's commands run as written: the cheap shell commands (in README order, in one temporary folder,
the CLI in-process), and the 30-second tour's Python block. Every command of every ```bash block is listed
below, either with the files it must write or with the reason it is not run here."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prunekit.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INPUT_SHAPE_24 = (
    "PYTHONPATH=. prunekit sparsify examples.nets:build_net --pattern 2:4 --input-shape 1,3,32,32 "
    "--out net_24.pt"
)

# command -> the files it writes (relative to the folder it runs in)
RUN: dict[str, tuple[str, ...]] = {
    "prunekit analyze torchvision:resnet18 --no-latency --json resnet18.json": ("resnet18.json",),
    "prunekit sparsify torchvision:resnet18 --sparsity 0.9 --scope global --exclude fc "
    "--out r18_sparse.safetensors": ("r18_sparse.safetensors",),
    'python -c "import torch, torchvision; torch.save(torchvision.models.resnet18().state_dict(), '
    "'weights.pt')\"": ("weights.pt",),
    "prunekit sparsify weights.pt --arch torchvision:resnet18 --sparsity 0.5 --out half.pt": ("half.pt",),
    "prunekit check torchvision:mobilenet_v2 --input-shape 1,3,64,64 --ratio 0.5 --json check.json": (
        "check.json",
    ),
    "prunekit prune torchvision:resnet18 --input-shape 1,3,64,64 --ratio 0.5 --round-to 8 --out r18_pruned": (
        "r18_pruned/prunekit.json",
    ),
    # train.npz / val.npz / calib.npy: the user's files; tiny generated ones here (``user_files``)
    "prunekit finetune r18_pruned --data train.npz --val-data val.npz --epochs 3 "
    "--teacher torchvision:resnet18 --out r18_ft": ("r18_ft/prunekit.json",),
    "prunekit export r18_ft --input-shape 1,3,64,64 --onnx r18.onnx --int8 static --calib calib.npy": (
        "r18.onnx",
        "r18.int8.onnx",
    ),
    "prunekit save torchvision:resnet18 --out r18_ckpt": ("r18_ckpt/prunekit.json",),
    "prunekit load r18_ckpt": (),
}
# needs sparsify's --input-shape option: run by its own test, which expects a failure until the option exists
NEEDS_OPTION = {INPUT_SHAPE_24: ("net_24.pt",)}
SKIP: dict[str, str] = {
    "python3 -m venv .venv": "makes a virtual environment",
    ".venv/bin/pip install torch==2.14.1 torchvision==0.29.1": "installs packages",
    '.venv/bin/pip install -e ".[dev]"': "installs packages",
    ".venv/bin/prunekit demo": "trains a CNN for ~40 s; tests/test_demo.py runs the demo",
    ".venv/bin/python -m pytest -q": "the test suite itself",
    "prunekit bench r18_ft --vs torchvision:resnet18 --batch-sizes 1,8 --threads 1,2": (
        "30 timed runs x 4 settings x 2 models at 224 px; tests/test_cli_deploy.py runs bench"
    ),
    "prunekit demo --out out/demo --json out/demo/demo.json": "trains a CNN for ~40 s; tests/test_demo.py",
    "prunekit prune yolov8n.pt --ratio 0.3 --out pruned.pt": "a YOLO at 640 px; tests/test_yolo.py",
    "yolo train model=pruned.pt data=data.yaml epochs=10": "ultralytics training; tests/test_yolo.py",
    "prunekit yolo finetune pruned.pt --data data.yaml --teacher yolov8n.pt": "training; tests/test_yolo.py",
    "prunekit yolo export pruned.pt --format onnx,torchscript,openvino,ncnn --imgsz 320": (
        "four ultralytics exports at 320 px; tests/test_yolo_export.py"
    ),
    "prunekit yolo prune yolov8n.pt --recipe recipe.yaml --out p.pt": "training; tests/test_yolo_recipe.py",
    "prunekit check hf:bert_config.json --ratio 0.5": "a full-size BERT config; tests/test_hf.py checks hf:",
    "prunekit vocab sentence:all-MiniLM-L6-v2 --texts texts.txt --out minilm_vocab": (
        "needs the [minilm] extra; tests/test_vocab.py runs vocab and save --format sentence on it"
    ),
    "prunekit save minilm_vocab --format sentence --out minilm_st": "the cut above; tests/test_vocab.py",
    "prunekit prune timm:convnext_tiny --target-macs 0.5 --out cnx_half": (
        "a MACs-target search over many prunes of a 28 M-parameter model; tests/test_target.py"
    ),
    "prunekit check torchvision:retinanet_resnet50_fpn --input-shape 1,3,320,320 --compare-at head": (
        "a detector at 320 px; tests/test_structured_zoo.py and bench/bench_tv_tasks.py check detectors"
    ),
}


def readme_blocks(lang: str) -> list[str]:
    """The bodies of README's fenced blocks in ``lang``, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def shell_commands() -> list[str]:
    """Every command of README's bash blocks, in order: trailing ``  # comments`` dropped, ``&&`` split."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            commands += [c.strip() for c in line.split(" && ") if c.strip()]
    return commands


def run(command: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    words = shlex.split(command)
    if words[0] == "python":
        proc = subprocess.run([sys.executable, *words[1:]], cwd=folder, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return
    while "=" in words[0]:  # VAR=value prefixes
        name, value = words.pop(0).split("=", 1)
        assert name == "PYTHONPATH", f"unhandled environment prefix {name}"
        monkeypatch.syspath_prepend(str(folder / value))
    assert words[0] == "prunekit", command
    result = CliRunner().invoke(app, words[1:])
    assert result.exit_code == 0, f"{command}\n{result.output}\n{result.exception!r}"


@pytest.fixture
def user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder laid out as README assumes: the repository's examples/, and tiny stand-ins for the user's
    train.npz, val.npz (3x32x32 images, ImageNet labels) and calib.npy (3x64x64, the export input)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    rng = np.random.default_rng(0)
    for name in ("train.npz", "val.npz"):
        x = rng.standard_normal((8, 3, 32, 32), dtype=np.float32)
        np.savez(tmp_path / name, x=x, y=rng.integers(0, 1000, 8))
    np.save(tmp_path / "calib.npy", rng.standard_normal((4, 3, 64, 64), dtype=np.float32))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_readme_command_is_listed_once() -> None:
    commands = shell_commands()
    listed = [*RUN, *NEEDS_OPTION, *SKIP]
    assert len(listed) == len(set(listed))
    assert sorted(set(commands)) == sorted(listed)


@pytest.mark.slow
def test_the_cheap_shell_commands_run_and_write_what_they_name(
    user_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for command in [c for c in shell_commands() if c in RUN]:
        run(command, user_files, monkeypatch)
        for out in RUN[command]:
            assert (user_files / out).exists(), f"{command} did not write {out}"


def test_the_factory_spec_with_an_input_shape_runs(user_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(INPUT_SHAPE_24, user_files, monkeypatch)
    assert (user_files / "net_24.pt").exists()


@pytest.mark.slow
def test_the_30_second_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tour,) = readme_blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(tour, str(README), "exec"), {"__name__": "readme_tour"})
    assert (tmp_path / "r18_half" / "prunekit.json").exists() and (tmp_path / "r18_half.onnx").exists()


def test_the_bench_example_output_reads_as_bench_prints_it() -> None:
    """README's bench table has the columns and title the command prints now, its speedups are the dense
    (first --vs) model's median over each row's, and its warning names exactly the rows with p90 > 1.5x the
    median."""
    (block,) = [b for b in readme_blocks("text") if "prunekit bench" in b]
    command = next(c for c in shell_commands() if c.startswith("prunekit bench "))
    dense = shlex.split(command)[shlex.split(command).index("--vs") + 1]
    lines = block.splitlines()
    assert lines[0].strip() == f"prunekit bench (median of timed runs; speedup = {dense} ms / ms)"
    cnn = "prunekit.demo.model:build_model"
    printed = CliRunner().invoke(
        app, ["bench", cnn, "--vs", cnn, "--input-shape", "1,1,8,8", "--runs", "2", "--batch-sizes", "1"]
    )
    assert printed.exit_code == 0, printed.output

    def columns(text: str) -> list[list[str]]:
        return [
            [c.strip() for c in line.split("┃")[1:-1]] for line in text.splitlines() if "median ms" in line
        ]

    assert columns(block) == columns(printed.output) != []
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert rows and all(len(row) == 7 for row in rows)
    median = {(r[0], r[1], r[2]): float(r[3]) for r in rows}
    for model, batch, threads, ms, _p90, _rate, speedup in rows:
        want = median[(dense, batch, threads)] / float(ms)
        assert float(speedup.rstrip("x")) == pytest.approx(want, abs=0.006), (model, batch, threads)
    assert all(r[6] == "1.00x" for r in rows if r[0] == dense)
    noisy = [f"{r[0]} batch {r[1]} threads {r[2]}" for r in rows if float(r[4]) > 1.5 * float(r[3])]
    warning = " ".join(block[block.index("warning:") :].split()) if "warning:" in block else ""
    assert (
        (f"in {len(noisy)} of {len(rows)} rows: " + "; ".join(noisy) + ";" in warning)
        if noisy
        else not warning
    )
