"""``prunekit finetune``: recover accuracy after pruning, optionally distilling from the dense model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._common import (
    ArchOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    TrustCodeOpt,
    TrustPickleOpt,
    app,
    console,
    load_cli_model,
    writable,
    write_json,
)
from prunekit.errors import ConfigError
from prunekit.models.data import DATA_HELP, load_batches


@app.command()
def finetune(
    model: ModelArg,
    data: Annotated[str, typer.Option("--data", metavar="DATA", help=f"Training data: {DATA_HELP}.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", metavar="DIR", help="Checkpoint directory to write.", file_okay=False, callback=writable
        ),
    ],
    val_data: Annotated[
        str | None,
        typer.Option(
            "--val-data", metavar="DATA", help="Held-out data for accuracy (best weights are kept)."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Passes over the data.")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Optimizer steps (instead of --epochs).")
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (AdamW).")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for file data.")] = 64,
    teacher: Annotated[
        str | None, typer.Option("--teacher", metavar="MODEL", help="Dense model to distill from.")
    ] = None,
    kd_alpha: Annotated[float | None, typer.Option("--kd-alpha", help="Weight of the KD loss.")] = None,
    kd_temperature: Annotated[float | None, typer.Option("--kd-temperature", help="KD temperature.")] = None,
    keep_zeros: Annotated[
        bool, typer.Option("--keep-zeros", help="Zero weights stay zero (unstructured sparse models).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for shuffling and dropout.")] = 0,
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Fine-tune MODEL on --data and save it to --out; under torchrun every rank trains, rank 0 writes."""
    from prunekit.deploy import save
    from prunekit.recover import accuracy
    from prunekit.recover import finetune as finetune_model

    if (epochs is None) == (steps is None):
        raise ConfigError("give exactly one of --epochs and --steps")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    train = load_batches(data, batch_size, shuffle=True, seed=seed)
    val = load_batches(val_data, 512) if val_data is not None else None
    loaded = load_cli_model(
        model, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, trust_code=trust_code
    )
    if loaded.spec is None:
        raise ConfigError(
            "a pickled module cannot be saved without pickle; save its state_dict and pass --arch"
        )
    dense = None
    if teacher is not None:
        dense = load_cli_model(
            teacher, arch=None, trust_pickle=False, input_shape=input_shape, trust_code=trust_code
        ).model
    result = finetune_model(
        loaded.model,
        train,
        epochs=epochs,
        steps=steps,
        lr=lr,
        eval_fn=(lambda m: accuracy(m, val)) if val is not None else None,
        teacher=dense,
        kd_alpha=kd_alpha,
        kd_temperature=kd_temperature,
        keep_zeros=keep_zeros,
        seed=seed,
        console=console,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return
    saved = save(
        loaded.model,
        out,
        spec=loaded.spec,
        plan=loaded.plans,
        metadata={"input_shape": list(loaded.shape), "source": model, "finetuned_on": data},
    )
    write_json(json_path, result.to_dict() | {"checkpoint": saved.to_dict()})
    metric = "" if result.final_metric is None else f", accuracy {100 * result.final_metric:.2f}%"
    console.print(f"fine-tuned {result.steps} steps{metric}; wrote {out}")
