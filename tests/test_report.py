"""Report tables render the measured numbers; formatting helpers give the expected strings."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError
from prunekit.measure import analyze
from prunekit.report import (
    comparison_table,
    format_bytes,
    format_count,
    format_ms,
    format_percent,
    profile_table,
    stages_table,
    summary_table,
)


def render(table) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(table)
    return console.export_text()


class ZeroMask(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(w)


def test_format_helpers():
    assert [format_count(n) for n in (55, 999, 1_000, 45_600, 1_234_567, 2_500_000_000)] == [
        "55",
        "999",
        "1.00K",
        "45.6K",
        "1.23M",
        "2.50G",
    ]
    assert [format_bytes(n) for n in (0, 1023, 1024, 46_694, 3 * 1024**2)] == [
        "0 B",
        "1023 B",
        "1.00 KiB",
        "45.6 KiB",
        "3.00 MiB",
    ]
    assert [format_ms(t) for t in (0.5, 1.234, 12.34, 123.4)] == ["0.500 ms", "1.23 ms", "12.3 ms", "123 ms"]
    assert format_percent(0.125) == "12.5%"


def test_profile_and_summary_tables_show_the_numbers():
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    profile = analyze(model, torch.zeros(3, 10), runs=2, warmup=0, eval_fn=lambda m: 0.875)
    layers = render(profile_table(profile))
    lines = [line for line in layers.splitlines() if "Linear" in line or "total" in line]
    assert len(lines) == 3
    assert "55" in lines[0] and "150" in lines[0]  # own params / MACs of Linear(10, 5) on batch 3
    assert "12" in lines[1] and "30" in lines[1]
    assert "67" in lines[2] and "180" in lines[2]

    summary = render(summary_table(profile))
    assert "67" in summary and "180 (batch 3)" in summary
    assert "zstd-9" in summary
    assert "0.875" in summary
    threads = profile.latency.threads
    assert f"batch 3, {threads} thread{'s' if threads != 1 else ''}, 2 runs" in summary


def test_stages_table_before_after():
    x = torch.zeros(3, 10)
    dense = nn.Linear(10, 5)
    before = analyze(dense, x, latency=False)
    parametrize.register_parametrization(dense, "weight", ZeroMask())
    after = analyze(dense, x, latency=False)
    text = render(stages_table({"dense": before, "masked": after}, title="Demo"))
    rows = {line.split()[1]: line for line in text.splitlines() if "dense" in line or "masked" in line}
    assert "55" in rows["dense"] and "150" in rows["dense"]
    assert "5" in rows["masked"].split() and "150" in rows["masked"]  # only the 5 biases remain non-zero


def test_comparison_table_renders_and_checks_row_width():
    text = render(comparison_table("Stages", ["Stage", "MACs"], [["dense", "1.23M"], ["pruned", "617K"]]))
    assert "Stages" in text and "1.23M" in text and "pruned" in text and "617K" in text
    with pytest.raises(ConfigError, match="2 cells"):
        comparison_table("Bad", ["Stage", "MACs"], [["dense"]])
