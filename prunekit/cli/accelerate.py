"""``prunekit accelerate``: run a sparse model's layers on sparse CPU kernels where they measure faster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._common import (
    JsonOpt,
    ModelSource,
    app,
    console,
    model_command,
    plural,
    writable,
    write_json,
)
from prunekit.errors import ConfigError


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; anything but positive integers is a ConfigError.

    >>> parse_batch_sizes("1, 8,32")
    [1, 8, 32]
    """
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(
            f"--batch-sizes takes comma-separated positive integers such as 1,8,32, got {text!r}"
        )
    return sizes


def _cell(timing: dict[str, float], kernel: str | None) -> str:
    """``"dense / kernel"`` median ms at one batch size (``-`` where the layer was not timed)."""
    if "dense" not in timing:
        return "-"
    if kernel in timing:
        return f"{timing['dense']:.3f} / {timing[kernel]:.3f}"
    return f"{timing['dense']:.3f}"


@app.command()
@model_command
def accelerate(
    source: ModelSource,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Checkpoint directory to write (dense weights + which layer runs which kernel; "
            "`prunekit.load(DIR)` runs them on those kernels again).",
            show_default=False,
            callback=writable,
        ),
    ],
    batch_sizes: Annotated[
        str | None,
        typer.Option(
            "--batch-sizes",
            metavar="N,N,...",
            help="Decide over these batch sizes (a kernel must be as fast as dense at each, and >= "
            "--min-speedup in geometric mean) [default: the example input's batch].",
        ),
    ] = None,
    convs: Annotated[bool, typer.Option("--convs", help="Also try Conv2d layers (im2col + CSR).")] = False,
    min_sparsity: Annotated[
        float, typer.Option("--min-sparsity", help="Leave layers with fewer zeros dense.")
    ] = 0.5,
    min_speedup: Annotated[
        float, typer.Option("--min-speedup", help="Swap only a kernel this many times faster than dense.")
    ] = 1.1,
    runs: Annotated[int, typer.Option("--runs", help="Timed calls per layer, kernel and batch size.")] = 20,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Intra-op CPU threads to decide with (as deployed).")
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Time each sparse Linear (and with --convs Conv2d) of MODEL against sparse kernels, swap the layers
    where a kernel pays, check the outputs, and save the result as a checkpoint to --out."""
    from rich.table import Table

    from prunekit.deploy.checkpoint import save
    from prunekit.sparse.accelerate import accelerate as accelerate_model

    sizes = parse_batch_sizes(batch_sizes) if batch_sizes is not None else None
    loaded = source.load()
    result = accelerate_model(
        loaded.model,
        loaded.example,
        min_sparsity=min_sparsity,
        min_speedup=min_speedup,
        convs=convs,
        threads=threads,
        runs=runs,
        batch_sizes=sizes,
    )
    saved = save(
        loaded.model,
        out,
        spec=loaded.spec,
        plan=loaded.plans,
        metadata={"input_shape": list(loaded.shape), "source": source.spec},
    )
    write_json(json_path, result.to_dict() | {"checkpoint": saved.to_dict(), "seed": source.seed})
    shown = sorted(next((row.timings for row in result.layers if row.timings), {}))
    table = Table(title=f"prunekit accelerate {source.spec} (median ms: dense / chosen or best kernel)")
    for column in ("Layer", "Kind", "Sparsity", *[f"batch {b}" for b in shown], "Chosen", "Note"):
        table.add_column(column, justify="right" if column.startswith(("batch", "Sparsity")) else "left")
    for row in result.layers:
        timed = [k for k, v in row.kernel_ms.items() if v is not None]
        best = row.chosen if row.chosen != "dense" else min(timed, key=row.kernel_ms.get, default=None)
        cells = [_cell(row.timings.get(b, {}), best) for b in shown]
        table.add_row(row.name, row.kind, f"{100 * row.sparsity:.1f}%", *cells, row.chosen, row.note)
    console.print(table)
    speed = f"; end to end {result.speedup:.2f}x dense" if result.speedup is not None else ""
    console.print(
        f"{plural(len(result.swapped), 'layer')} of {len(result.layers)} on sparse kernels{speed}, "
        f"outputs within {result.max_abs_diff:.1e} of dense; wrote {out} (load it with prunekit.load, "
        "prunekit.decelerate for the dense form)"
    )
