"""The demo's before/after table: one row per figure, one column per stage, each compared with dense.

Rendered as a rich Table (terminal and ``results.txt``) and as GitHub Markdown (``results.md``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from prunekit.report.tables import format_bytes, format_count, format_ms

if TYPE_CHECKING:
    from prunekit.demo.run import DemoResult, StageRow

CAPTION = (
    "In brackets, against dense: accuracy change in points, counts and sizes as % of dense, latency speedup. "
    "Unstructured zeros still run dense kernels: MACs and latency do not drop, the compressed file does. "
    "onnx rows run the structured model in onnxruntime (fp32, then static INT8); their latency brackets "
    "compare onnxruntime with dense PyTorch, so the INT8 gain is onnx-int8 against onnx."
)


def _pct(value: float, dense: float) -> str:
    return f" ({100 * value / dense:.1f}%)" if dense else ""


def _figures(result: DemoResult) -> list[tuple[str, Callable[[StageRow, StageRow | None], str]]]:
    """(label, cell function) per table row; a cell gets the stage's row and dense (None for dense)."""

    def acc(r: StageRow, d: StageRow | None) -> str:
        return f"{100 * r.accuracy:.2f}%" + (
            "" if d is None else f" ({100 * (r.accuracy - d.accuracy):+.2f})"
        )

    def nonzero(r: StageRow, d: StageRow | None) -> str:
        return f"{r.params.nonzero:,}" + ("" if d is None else _pct(r.params.nonzero, d.params.nonzero))

    def zstd(r: StageRow, d: StageRow | None) -> str:
        ratio = "" if d is None else _pct(r.size.compressed_bytes, d.size.compressed_bytes)
        return format_bytes(r.size.compressed_bytes) + ratio

    def latency(i: int) -> Callable[[StageRow, StageRow | None], str]:
        def cell(r: StageRow, d: StageRow | None) -> str:
            text = format_ms(r.latency[i].median_ms)
            return text if d is None else f"{text} ({d.latency[i].median_ms / r.latency[i].median_ms:.2f}x)"

        return cell

    rows: list[tuple[str, Callable[[StageRow, StageRow | None], str]]] = [
        ("test accuracy", acc),
        ("parameters", lambda r, d: f"{r.params.total:,}"),
        ("non-zero parameters", nonzero),
        ("MACs / image", lambda r, d: format_count(r.macs)),
        ("size (safetensors or .onnx)", lambda r, d: format_bytes(r.size.dense_bytes)),
        (f"compressed ({result.rows[0].size.codec})", zstd),
    ]
    rows += [(f"latency, batch {s.batch_size}", latency(i)) for i, s in enumerate(result.rows[0].latency)]
    rows.append(("stage time", lambda r, d: f"{r.seconds:.1f} s"))
    return rows


def _cells(result: DemoResult) -> tuple[list[str], list[list[str]]]:
    dense = result.rows[0]
    headers = ["metric", *(row.name for row in result.rows)]
    body = [
        [label, *(cell(row, None if row is dense else dense) for row in result.rows)]
        for label, cell in _figures(result)
    ]
    return headers, body


def _title(result: DemoResult) -> str:
    cfg = result.config
    threads = result.rows[0].latency[0].threads
    return (
        f"prunekit demo: digits CNN, {result.data['test']} test images. Latency: median of "
        f"{cfg.latency_runs} runs, best of {cfg.latency_rounds} rounds, "
        f"{threads} thread{'' if threads == 1 else 's'}"
    )


def demo_table(result: DemoResult) -> Table:
    """A rich Table: one row per figure, one column per stage.

    >>> from prunekit.demo import run_demo
    >>> result = run_demo(quick=True, console=Console(quiet=True), progress=False)
    >>> [column.header for column in demo_table(result).columns]
    ['metric', 'dense', 'sparse90', 'channels50', 'onnx', 'onnx-int8']
    """
    headers, body = _cells(result)
    table = Table(title=_title(result), caption=CAPTION)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for cells in body:
        table.add_row(*cells)
    return table


def table_text(result: DemoResult, width: int = 120) -> str:
    """The rich table as plain text (no colour codes), for ``results.txt``.

    >>> from prunekit.demo import run_demo
    >>> result = run_demo(quick=True, console=Console(quiet=True), progress=False)
    >>> "non-zero parameters" in table_text(result)
    True
    """
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(demo_table(result))
    return console.export_text()


def table_markdown(result: DemoResult) -> str:
    """The same table as GitHub Markdown, for ``results.md``.

    >>> from prunekit.demo import run_demo
    >>> result = run_demo(quick=True, console=Console(quiet=True), progress=False)
    >>> table_markdown(result).splitlines()[2]
    '| metric | dense | sparse90 | channels50 | onnx | onnx-int8 |'
    """
    headers, body = _cells(result)
    lines = [
        f"**{_title(result)}**",
        "",
        "| " + " | ".join(headers) + " |",
        "|---|" + "---:|" * (len(headers) - 1),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", CAPTION]
    return "\n".join(lines) + "\n"
