"""``prunekit demo``: the embedded end-to-end pipeline on real digits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._common import JsonOpt, app, console, writable
from prunekit.cli.report import ReportOpt, write_report


@app.command()
def demo(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Write the models, the results tables and the figures (report.html, report.md) to DIR.",
            callback=writable,
        ),
    ] = None,
    json_path: JsonOpt = None,
    report_dir: ReportOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="A small budget, for smoke tests.")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs of the dense CNN.")] = None,
    finetune_epochs: Annotated[
        int | None, typer.Option("--finetune-epochs", help="Fine-tuning epochs after pruning.")
    ] = None,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", help="Sparsity of the pruned stage.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for data split, init and training.")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op CPU threads.")] = None,
) -> None:
    """Train a small CNN on bundled handwritten digits, prune it, and show what each stage costs and saves.

    Options left out take run_demo's defaults (90% sparsity, seed 0, 1 thread).
    """
    from prunekit.demo import run_demo

    given = dict(
        epochs=epochs, finetune_epochs=finetune_epochs, sparsity=sparsity, seed=seed, threads=threads
    )
    options = {name: value for name, value in given.items() if value is not None}
    result = run_demo(out=out, json_path=json_path, quick=quick, console=console, **options)
    if report_dir is not None:
        write_report(report_dir, result.to_dict())
