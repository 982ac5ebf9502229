"""``prunekit sparsify``: unstructured, N:M and block masks, written as a plain state_dict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit._atomic import atomic_write
from prunekit.cli._common import (
    CalibBatchOpt,
    CalibDataOpt,
    JsonOpt,
    ModelSource,
    app,
    arch_hint,
    console,
    model_command,
    new_output,
    plural,
    save_state_dict,
    write_json,
)
from prunekit.cli.report import ReportOpt, write_report
from prunekit.models.data import load_batches


@app.command()
@model_command
def sparsify(
    source: ModelSource,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="FILE",
            help=(
                "Where to write the sparsified state_dict: .pksparse is the compressed sparse format "
                "(exact, a fraction of the dense size), .safetensors, else torch.save (both dense)."
            ),
            dir_okay=False,
            show_default=False,
            callback=new_output,
        ),
    ],
    sparsity: Annotated[
        float | None,
        typer.Option("--sparsity", help="Fraction of weights to zero, in [0, 1); implied by an N:M pattern."),
    ] = None,
    pattern: Annotated[
        str, typer.Option("--pattern", help="unstructured, N:M (e.g. 2:4) or a block pattern.")
    ] = "unstructured",
    scope: Annotated[
        str, typer.Option("--scope", help="local (per layer) or global (across layers).")
    ] = "local",
    criterion: Annotated[
        str,
        typer.Option(
            "--criterion", help="magnitude, random, or with --data: taylor, hessian, wanda, sparsegpt."
        ),
    ] = "magnitude",
    data: CalibDataOpt = None,
    batch_size: CalibBatchOpt = 32,
    include: Annotated[
        list[str] | None, typer.Option("--include", metavar="NAME", help="Only these layers (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", metavar="NAME", help="Leave these layers dense (repeatable)."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for --criterion random and a spec's random initialisation.")
    ] = 0,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Fail on a layer the pattern cannot fit instead of leaving it dense."),
    ] = False,
    json_path: JsonOpt = None,
    report_dir: ReportOpt = None,
) -> None:
    """Zero weights of MODEL with masks, then write the result as a plain state_dict to --out.

    MODEL is loaded like in every command and run once on its example input (--input-shape, or the
    model's default shape; a model with neither is not run). Layers the pattern cannot fit (e.g. 2:4 on a
    3-channel first conv) stay dense and are listed, unless --strict. The table's sparsities are over
    prunable weights (Linear / Conv), the summary's over the layers that were sparsified.
    """
    from prunekit.config import SparsifyConfig
    from prunekit.report.tables import format_bytes
    from prunekit.sparse import remove_masks, sparsity_report
    from prunekit.sparse import sparsify as sparsify_model
    from prunekit.sparse.storage import save_sparse

    batches = load_batches(data, batch_size) if data is not None else None
    config = SparsifyConfig(
        sparsity, pattern, criterion, scope, tuple(include) if include else None, tuple(exclude or ()), seed,
        data=batches, strict=strict,
    )  # fmt: skip
    loaded = source.load(needs_example=False)
    net = loaded.model
    result = sparsify_model(net, config)
    report = sparsity_report(net)
    remove_masks(net)
    if out.suffix == ".pksparse":
        save_sparse(net, out)
        written = f"the compressed sparse state_dict ({format_bytes(out.stat().st_size)})"
    else:
        atomic_write(out, lambda tmp: save_state_dict(net, tmp, out.suffix))
        written = (
            f"the dense state_dict ({format_bytes(out.stat().st_size)}; name it .pksparse for the "
            "compressed sparse format)"
        )
    write_json(json_path, result.to_dict() | {"seed": seed})
    write_report(report_dir, result.to_dict())
    console.print(report.table(notes={name: f"skipped: {why}" for name, why in result.skipped.items()}))
    skipped = ""
    if result.skipped:
        skipped = f"; {plural(len(result.skipped), 'layer')} the pattern cannot fit left dense"
    console.print(
        f"{result.pattern} {result.scope} sparsity {100 * result.sparsity:.2f}% of the sparsified layers' "
        f"weights ({result.pruned:,} of {result.numel:,} in {plural(len(result.layers), 'layer')}{skipped}); "
        f"{100 * report.sparsity:.2f}% of all prunable weights; "
        f"wrote {written} to {out} (load it with --arch {arch_hint(source.spec, source.arch)})"
    )
