"""``prunekit finetune``: recover accuracy after pruning, optionally distilling from the dense model."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from torch import nn

from prunekit.cli._common import (
    JsonOpt,
    ModelSource,
    OutDirOpt,
    app,
    console,
    model_command,
    write_json,
)
from prunekit.errors import ConfigError
from prunekit.models.data import DATA_HELP, load_batches
from prunekit.recover.config import DistillConfig, TrainConfig


@app.command()
@model_command
def finetune(
    source: ModelSource,
    data: Annotated[str, typer.Option("--data", metavar="DATA", help=f"Training data: {DATA_HELP}.")],
    out: OutDirOpt,
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
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for shuffling, dropout and a spec's random initialisation.")
    ] = 0,
    json_path: JsonOpt = None,
) -> None:
    """Fine-tune MODEL on --data and save it to --out; under torchrun every rank trains, rank 0 writes."""
    from prunekit.deploy import save
    from prunekit.recover import finetune as finetune_model

    if (epochs is None) == (steps is None):
        raise ConfigError("give exactly one of --epochs and --steps")
    train_config(epochs, steps, lr, keep_zeros, seed, val=None)  # bad options fail before any loading
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    train = load_batches(data, batch_size, shuffle=True, seed=seed)
    val = load_batches(val_data, 512) if val_data is not None else None
    loaded = source.load()
    if loaded.spec is None:
        raise ConfigError(
            "a pickled module cannot be saved without pickle; save its state_dict and pass --arch"
        )
    dense = None
    if teacher is not None:
        teacher_source = ModelSource(teacher, trust_code=source.trust_code, input_shape=source.input_shape)
        dense = teacher_source.load().model
    config = train_config(epochs, steps, lr, keep_zeros, seed, val=val)
    distill = distill_config(dense, kd_alpha, kd_temperature)
    result = finetune_model(loaded.model, train, config, distill=distill, console=console)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    saved = save(
        loaded.model,
        out,
        spec=loaded.spec,
        plan=loaded.plans,
        metadata={"input_shape": list(loaded.shape), "source": source.spec, "finetuned_on": data},
    )
    write_json(json_path, result.to_dict() | {"checkpoint": saved.to_dict(), "seed": seed})
    metric = "" if result.final_metric is None else f", accuracy {100 * result.final_metric:.2f}%"
    if metric and result.restored_best and result.best_step not in (None, result.steps):
        before = ": the weights before training" if result.best_step == 0 else ""
        metric += f" (the best evaluation, step {result.best_step}{before}, restored)"
    console.print(f"fine-tuned {result.steps} steps{metric}; wrote {out}")


def train_config(
    epochs: int | None, steps: int | None, lr: float, keep_zeros: bool, seed: int, *, val: Any
) -> TrainConfig:
    """The :class:`TrainConfig` of ``prunekit finetune``'s options (accuracy on ``val`` as the metric)."""
    from prunekit.recover import accuracy

    eval_fn = (lambda m: accuracy(m, val)) if val is not None else None
    return TrainConfig(epochs=epochs, steps=steps, lr=lr, eval_fn=eval_fn, keep_zeros=keep_zeros, seed=seed)


def distill_config(
    teacher: nn.Module | None, kd_alpha: float | None, kd_temperature: float | None
) -> DistillConfig | None:
    """The :class:`DistillConfig` of ``--teacher``/``--kd-alpha``/``--kd-temperature`` (none: no teacher)."""
    if teacher is None:
        if kd_alpha is not None or kd_temperature is not None:
            raise ConfigError("--kd-alpha and --kd-temperature need --teacher")
        return None
    given = {"alpha": kd_alpha, "temperature": kd_temperature}
    return DistillConfig(teacher=teacher, **{k: v for k, v in given.items() if v is not None})
