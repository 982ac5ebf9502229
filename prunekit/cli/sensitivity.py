"""``prunekit sensitivity``: per-group metric-vs-ratio curves for a model, from the shell.

The metric is output fidelity: the mean cosine similarity between the pruned copy's outputs and the
original model's outputs on the example input (1.0 = unchanged). MODEL itself is never changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli._common import (
    JsonOpt,
    ModelSource,
    app,
    console,
    model_command,
    writable,
    write_json,
)
from prunekit.cli.report import ReportOpt, write_report
from prunekit.errors import ConfigError


def _ratios(text: str) -> list[float]:
    try:
        return [float(r) for r in text.split(",") if r.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"--ratios must be comma-separated numbers like 0.25,0.5,0.75, got {text!r}"
        ) from exc


@app.command()
@model_command
def sensitivity(
    source: ModelSource,
    ratios: Annotated[
        str, typer.Option("--ratios", help="Comma-separated ratios per group.")
    ] = "0.25,0.5,0.75",
    criterion: Annotated[str, typer.Option("--criterion", help="Importance criterion: l1, l2, ...")] = "l2",
    max_ratio: Annotated[float, typer.Option("--max-ratio", help="Cap per group.")] = 0.9,
    allocate: Annotated[
        float | None,
        typer.Option("--allocate", help="Also print per-group ratios removing this share of all units."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the curves as a PNG (matplotlib).", callback=writable)
    ] = None,
    json_path: JsonOpt = None,
    report_dir: ReportOpt = None,
) -> None:
    """Prune each prunable group of MODEL alone at each ratio and report how much the outputs change."""
    import torch

    from prunekit.structured.oracle import run_outputs
    from prunekit.structured.sensitivity import sensitivity as scan

    loaded = source.load()
    ref = [
        o.double().flatten(1) if o.dim() > 1 else o.double()[None]
        for o in run_outputs(loaded.model, loaded.example)
    ]

    def fidelity(m: torch.nn.Module) -> float:
        outs = run_outputs(m, loaded.example)
        sims = [
            torch.nn.functional.cosine_similarity(
                o.double().flatten(1) if o.dim() > 1 else o.double()[None], r
            )
            .mean()
            .item()
            for o, r in zip(outs, ref, strict=True)
        ]
        return float(sum(sims) / max(1, len(sims)))

    result = scan(loaded.model, loaded.example, fidelity, ratios=_ratios(ratios), criterion=criterion,
                  max_ratio=max_ratio)  # fmt: skip
    data = result.to_dict() | {"metric": "output cosine fidelity"}
    if allocate is not None:
        data["allocation"] = {str(k): v for k, v in result.allocate(allocate).items()}
    if plot is not None:
        result.plot(plot)
    write_json(json_path, data | {"seed": source.seed})
    write_report(report_dir, data)
    table = Table(title=f"prunekit sensitivity {source.spec} (output fidelity, 1.0 = unchanged)")
    table.add_column("group", justify="right")
    table.add_column("first member")
    table.add_column("width", justify="right")
    for r in result.ratios:
        table.add_column(f"{r:g}", justify="right")
    if allocate is not None:
        table.add_column(f"alloc@{allocate:g}", justify="right")
    for c in result.curves:
        row = [str(c.group), c.name, str(c.width), *(f"{m:.4f}" for m in c.metrics)]
        if allocate is not None:
            row.append(f"{data['allocation'][str(c.group)]:.3f}")
        table.add_row(*row)
    console.print(table)
    if plot is not None:
        console.print(f"wrote {plot}")
