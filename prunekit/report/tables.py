"""Rich tables for measurement results, and the number formatting they use. No measuring happens here.

>>> import io
>>> from rich.console import Console
>>> console = Console(record=True, width=60, file=io.StringIO())
>>> console.print(comparison_table("Demo", ["Stage", "Params"], [["dense", format_count(1_234_567)]]))
>>> "1.23M" in console.export_text()
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table

from prunekit.errors import ConfigError
from prunekit.measure.profile import ModelProfile

_NONE = "-"


def _three_digits(value: float) -> str:
    """``value`` with three significant digits (no exponent): 1.23, 12.3, 123."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_count(n: float) -> str:
    """Human count with a decimal suffix: ``format_count(1_234_567) == "1.23M"``; below 1000 as is.

    >>> [format_count(n) for n in (55, 1_000, 45_600, 1_234_567, 17_563_828_224)]
    ['55', '1.00K', '45.6K', '1.23M', '17.6G']
    """
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return _three_digits(n / scale) + suffix
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


def format_bytes(n: float) -> str:
    """Human size with binary units: ``format_bytes(46_694) == "45.6 KiB"``.

    >>> [format_bytes(n) for n in (512, 46_694, 46_807_448)]
    ['512 B', '45.6 KiB', '44.6 MiB']
    """
    for suffix, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{_three_digits(n / scale)} {suffix}"
    return f"{n:.0f} B"


def format_ms(ms: float) -> str:
    """Milliseconds with three significant digits (at least two decimals below 1 ms).

    >>> [format_ms(t) for t in (0.01234, 1.234, 84.7, 522.0)]
    ['0.012 ms', '1.23 ms', '84.7 ms', '522 ms']
    """
    return f"{ms:.3f} ms" if ms < 1 else f"{_three_digits(ms)} ms"


def format_percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal: ``format_percent(0.9) == "90.0%"``.

    >>> format_percent(0.9)
    '90.0%'
    """
    return f"{100 * fraction:.1f}%"


def format_accuracy(accuracy: float | None) -> str:
    """An ``eval_fn`` result with four significant digits, ``-`` when not measured.

    >>> format_accuracy(0.97333), format_accuracy(None)
    ('0.9733', '-')
    """
    return _NONE if accuracy is None else f"{accuracy:.4g}"


def comparison_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A table with a left-aligned first column and right-aligned others; cells are already formatted text.

    >>> comparison_table("Stages", ["Stage", "MACs"], [["dense", "1.23M"], ["pruned", "617K"]]).row_count
    2
    """
    for row in rows:
        if len(row) != len(columns):
            raise ConfigError(
                f"every row needs {len(columns)} cells (one per column), got {len(row)}: {row!r}"
            )
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def profile_table(profile: ModelProfile, *, title: str = "Layers") -> Table:
    """Per-layer table of a :class:`~prunekit.measure.ModelProfile`: own params, non-zero, weight sparsity,
    MACs, and a total row (params, non-zero and MACs of the layer rows add up to it).

    "Weight sparsity" is the zeros of a prunable layer's weight (Linear / Conv: what the sparsifier masks;
    ``-`` for other modules, whose zero biases are no sparsity); the total row gives it over all prunable
    weights.

    >>> import torch
    >>> from torch import nn
    >>> from prunekit.measure import analyze
    >>> profile_table(analyze(nn.Linear(10, 5), torch.zeros(3, 10), latency=False)).row_count
    2
    """
    table = Table(title=title)
    table.add_column("Layer")
    table.add_column("Kind")
    for column in ("Params", "Non-zero", "Weight sparsity", "MACs"):
        table.add_column(column, justify="right")
    for i, row in enumerate(profile.layers):
        table.add_row(
            row.name or "(model)",
            row.kind,
            format_count(row.params),
            format_count(row.nonzero),
            _NONE if row.weight_sparsity is None else format_percent(row.weight_sparsity),
            format_count(row.macs),
            end_section=i == len(profile.layers) - 1,
        )
    table.add_row(
        "total",
        "",
        format_count(profile.params.total),
        format_count(profile.params.nonzero),
        format_percent(profile.weight_sparsity),
        format_count(profile.macs),
        style="bold",
    )
    return table


def summary_table(profile: ModelProfile, *, title: str = "Model") -> Table:
    """Two-column summary of a :class:`~prunekit.measure.ModelProfile` (params, MACs, size, memory, latency…).

    >>> import torch
    >>> from torch import nn
    >>> from prunekit.measure import analyze
    >>> summary_table(analyze(nn.Linear(10, 5), torch.zeros(3, 10), latency=False)).row_count
    9
    """
    lat = profile.latency
    params = profile.params
    latency = (
        f"{format_ms(lat.median_ms)} median, {format_ms(lat.p90_ms)} p90 "
        f"(batch {lat.batch_size}, {lat.threads} thread{'s' if lat.threads != 1 else ''}, {lat.runs} runs)"
        if lat is not None
        else _NONE
    )
    items = [
        ("Parameters", format_count(params.total)),
        (
            "Non-zero parameters",
            f"{format_count(params.nonzero)} ({format_percent(params.sparsity)} of all parameters zero)",
        ),
        ("Weight sparsity", f"{format_percent(profile.weight_sparsity)} of prunable weights"),
        ("MACs", f"{format_count(profile.macs)} (batch {profile.batch_size})"),
        ("Size (safetensors)", format_bytes(profile.size.dense_bytes)),
        (f"Compressed ({profile.size.codec})", format_bytes(profile.size.compressed_bytes)),
        ("Peak forward memory", format_bytes(profile.peak_memory_bytes)),
        ("Latency", latency),
        ("Accuracy", format_accuracy(profile.accuracy)),
    ]
    table = Table(title=title, show_header=False)
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for name, value in items:
        table.add_row(name, value)
    return table


STAGE_COLUMNS = ("Stage", "Accuracy", "Non-zero params", "MACs", "Size", "Compressed", "Latency (median)")


def stages_table(stages: Mapping[str, ModelProfile], *, title: str = "Stages") -> Table:
    """Before/after table: one row per stage (e.g. dense, sparse, pruned, fine-tuned), columns
    :data:`STAGE_COLUMNS`.

    >>> import torch
    >>> from torch import nn
    >>> from prunekit.measure import analyze
    >>> p = analyze(nn.Linear(10, 5), torch.zeros(3, 10), latency=False)
    >>> stages_table({"dense": p, "again": p}).row_count
    2
    """
    rows = [
        [
            stage,
            format_accuracy(p.accuracy),
            format_count(p.params.nonzero),
            format_count(p.macs),
            format_bytes(p.size.dense_bytes),
            format_bytes(p.size.compressed_bytes),
            format_ms(p.latency.median_ms) if p.latency is not None else _NONE,
        ]
        for stage, p in stages.items()
    ]
    return comparison_table(title, list(STAGE_COLUMNS), rows)
