"""``prunekit finetune``: recover accuracy after pruning, optionally distilling from the dense model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from prunekit.cli._common import (
    ArchOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    TrustPickleOpt,
    app,
    console,
    load_cli_model,
    write_json,
)
from prunekit.errors import ConfigError

DATA_HELP = (
    "a .npz with arrays x and y, a .pt holding {'x': tensor, 'y': tensor}, or module.path:factory returning "
    "an iterable of (inputs, targets) batches"
)


@app.command()
def finetune(
    model: ModelArg,
    data: Annotated[str, typer.Option("--data", metavar="DATA", help=f"Training data: {DATA_HELP}.")],
    out: Annotated[
        Path,
        typer.Option("--out", metavar="DIR", help="Checkpoint directory to write.", file_okay=False),
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
    train = _batches(data, batch_size, shuffle=True, seed=seed)
    val = _batches(val_data, 512, shuffle=False, seed=seed) if val_data is not None else None
    loaded = load_cli_model(model, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape)
    if loaded.spec is None:
        raise ConfigError(
            "a pickled module cannot be saved without pickle; save its state_dict and pass --arch"
        )
    dense = None
    if teacher is not None:
        dense = load_cli_model(teacher, arch=None, trust_pickle=False, input_shape=input_shape).model
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
        metadata={"input_shape": list(loaded.example.shape), "source": model, "finetuned_on": data},
    )
    write_json(json_path, result.to_dict() | {"checkpoint": saved.to_dict()})
    metric = "" if result.final_metric is None else f", accuracy {100 * result.final_metric:.2f}%"
    console.print(f"fine-tuned {result.steps} steps{metric}; wrote {out}")


def _batches(spec: str, batch_size: int, *, shuffle: bool, seed: int) -> Any:
    """Training or validation batches from a tensor file or a factory (see DATA_HELP)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    path = Path(spec)
    if path.suffix in (".npz", ".pt", ".pth"):
        if not path.is_file():
            raise ConfigError(f"no data file {path}")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                tensors = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        else:
            tensors = torch.load(path, weights_only=True)
        if not isinstance(tensors, dict) or not {"x", "y"} <= set(tensors):
            raise ConfigError(f"{path} must hold tensors named x (inputs) and y (targets)")
        x, y = tensors["x"], tensors["y"]
        if len(x) != len(y) or len(x) == 0:
            raise ConfigError(f"{path}: x and y must have the same, non-zero length ({len(x)} vs {len(y)})")
        generator = torch.Generator().manual_seed(seed)
        dataset = TensorDataset(x.float() if x.is_floating_point() else x, y)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    from prunekit.models.spec import call_factory

    return call_factory(spec, what="data")
