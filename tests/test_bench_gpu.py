"""bench/bench_gpu.py skips cleanly on a machine without a CUDA GPU: one line, exit 0, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the bench would run for real")
def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(results)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "skipped: no CUDA GPU here (torch.cuda.is_available() is False); nothing written"
    ]
    assert not results.exists() and list(tmp_path.iterdir()) == []
