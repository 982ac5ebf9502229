"""``prunekit analyze``: per-layer parameters, sparsity and MACs, size and latency."""

from __future__ import annotations

from typing import Annotated

import typer

from prunekit.cli._common import JsonOpt, ModelSource, app, console, model_command, write_json


@app.command()
@model_command
def analyze(
    source: ModelSource,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip the latency measurement.")] = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs for the latency measurement.")] = 50,
    zstd_level: Annotated[
        int | None,
        typer.Option(
            "--zstd-level", help="zstd level of the compressed size (default 19, slow on big models)."
        ),
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Per-layer parameters, non-zeros, sparsity and MACs of MODEL, plus its size and latency."""
    from prunekit.measure.profile import analyze as profile_model
    from prunekit.report.tables import profile_table, summary_table

    loaded = source.load()
    net, example = loaded.model, loaded.example
    size_options = {} if zstd_level is None else {"zstd_level": zstd_level}
    profile = profile_model(net, example, latency=not no_latency, runs=runs, **size_options)
    console.print(profile_table(profile))
    console.print(summary_table(profile, title=source.spec))
    write_json(json_path, profile.to_dict() | {"seed": source.seed})
