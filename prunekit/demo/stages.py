"""Demo stages: each one turns a model into the next thing to measure (train, sparsify, ...).

A :class:`Stage` is a name, a title for the table, the stage whose model it starts from (a deep copy of it;
``None`` = a freshly built DigitsCNN) and a function ``(model, ctx) -> model``. :func:`default_stages` lists
the stages ``prunekit demo`` runs, in order; a later feature adds its stage by appending one entry there, e.g.
``Stage("copy", "identity", lambda model, ctx: model)``. Every stage's output is measured the same way by
:mod:`prunekit.demo.run`; a stage records its own extra figures with ``ctx.note``. ONNX fp32 and INT8 rows,
run in onnxruntime, come after the PyTorch stages (see :mod:`prunekit.demo.onnx_rows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from prunekit.demo.data import IMAGE_SHAPE, DigitsSplits, make_loaders
from prunekit.errors import ConfigError
from prunekit.recover import accuracy, train
from prunekit.sparse import remove_masks, sparsify
from prunekit.structured import prune

_INT_MINIMUMS = {
    "epochs": 1,
    "finetune_epochs": 0,
    "batch_size": 1,
    "threads": 1,
    "latency_runs": 1,
    "latency_warmup": 0,
    "latency_rounds": 1,
}


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of a demo run (the full default budget; ``quick`` runs use smaller numbers)."""

    epochs: int = 15
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    finetune_epochs: int = 5
    finetune_lr: float = 1e-3
    sparsity: float = 0.9
    channel_ratio: float = 0.5
    seed: int = 0
    threads: int = 1
    latency_runs: int = 20
    latency_warmup: int = 5
    latency_rounds: int = 5

    def check(self) -> None:
        """Raise :class:`~prunekit.errors.ConfigError` on the first out-of-range value.

        >>> DemoConfig(sparsity=0.9).check()
        """
        for name, low in _INT_MINIMUMS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity!r}")
        if not 0.0 < self.channel_ratio < 1.0:
            raise ConfigError(f"channel_ratio must be in (0, 1), got {self.channel_ratio!r}")

    @property
    def sparse_name(self) -> str:
        """Name of the sparse stage, e.g. ``"sparse90"`` for ``sparsity=0.9``.

        >>> DemoConfig(sparsity=0.95).sparse_name
        'sparse95'
        """
        return f"sparse{self.sparsity * 100:g}"

    @property
    def channels_name(self) -> str:
        """Name of the structured stage, e.g. ``"channels50"`` for ``channel_ratio=0.5``.

        >>> DemoConfig(channel_ratio=0.3).channels_name
        'channels30'
        """
        return f"channels{self.channel_ratio * 100:g}"


@dataclass
class DemoContext:
    """What a stage may use: the config, the data, where to print, and a place for its own figures."""

    config: DemoConfig
    splits: DigitsSplits
    console: Console
    progress: bool = True
    stage: str = ""
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def train_loader(self) -> DataLoader:
        """A fresh seeded training loader: every stage sees the same batches whatever the stage order."""
        return make_loaders(self.splits, batch_size=self.config.batch_size, seed=self.config.seed)[0]

    def test_loader(self) -> DataLoader:
        """The fixed test loader."""
        return make_loaders(self.splits, batch_size=self.config.batch_size, seed=self.config.seed)[1]

    def note(self, **figures: Any) -> None:
        """Record JSON-serialisable figures of the running stage (they land in its row's ``extra``)."""
        self.notes.setdefault(self.stage, {}).update(figures)


StageFn = Callable[[nn.Module, DemoContext], nn.Module]
R = TypeVar("R")


@dataclass(frozen=True)
class Stage:
    """One step of the demo: ``run(copy of source model, ctx) -> model`` (``source=None``: a fresh model)."""

    name: str
    title: str
    run: StageFn
    source: str | None = "dense"


def train_dense(model: nn.Module, ctx: DemoContext) -> nn.Module:
    """Train the fresh model: AdamW, cosine learning rate, ``config.epochs`` epochs.

    >>> from prunekit.demo.data import load_splits
    >>> from prunekit.demo.model import build_model
    >>> ctx = DemoContext(DemoConfig(epochs=1), load_splits(), Console(quiet=True), progress=False)
    >>> model = train_dense(build_model(), ctx)
    >>> len(ctx.notes[""]["train_loss"])
    1
    """
    cfg = ctx.config
    losses = _train(model, ctx, epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ctx.note(epochs=cfg.epochs, train_loss=losses)
    return model


def _train(model: nn.Module, ctx: DemoContext, **options: Any) -> list[float]:
    """:func:`prunekit.recover.train` as every demo stage runs it: on the stage's seeded training loader,
    AdamW with the cosine schedule, seeded by ``config.seed``, printing to ``ctx.console``; ``options`` add
    the epochs, learning rate, ... of the stage. Returns the mean loss of each epoch."""
    return train(
        model,
        ctx.train_loader(),
        schedule="cosine",
        progress=ctx.progress,
        seed=ctx.config.seed,
        console=ctx.console,
        **options,
    )


def _finetune(model: nn.Module, ctx: DemoContext) -> list[float]:
    """The fine-tune every pruning stage gets: ``finetune_epochs`` of AdamW at ``finetune_lr``, cosine."""
    cfg = ctx.config
    if not cfg.finetune_epochs:
        return []
    return _train(model, ctx, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr)


def _prune_then_finetune(
    model: nn.Module, ctx: DemoContext, cut: Callable[[nn.Module], R]
) -> tuple[R, dict[str, Any]]:
    """Time ``cut(model)``, take the test accuracy, fine-tune (:func:`_finetune`).

    Returns ``cut``'s result and the figures every pruning stage notes: ``accuracy_before_finetune``,
    ``finetune_epochs``, ``finetune_loss`` and ``prune_seconds``.
    """
    start = time.perf_counter()
    result = cut(model)
    prune_s = time.perf_counter() - start
    before = accuracy(model, ctx.test_loader())
    losses = _finetune(model, ctx)
    figures = {
        "accuracy_before_finetune": before,
        "finetune_epochs": ctx.config.finetune_epochs,
        "finetune_loss": losses,
        "prune_seconds": prune_s,
    }
    return result, figures


def sparsify_finetune(model: nn.Module, ctx: DemoContext) -> nn.Module:
    """Globally mask the smallest Conv/Linear weights to ``config.sparsity``, fine-tune, make it permanent.

    >>> from prunekit.demo.data import load_splits
    >>> from prunekit.demo.model import build_model
    >>> ctx = DemoContext(DemoConfig(finetune_epochs=1), load_splits(), Console(quiet=True), progress=False)
    >>> model = sparsify_finetune(build_model(), ctx)
    >>> round(ctx.notes[""]["sparsity_achieved"], 4)
    0.9
    """
    cfg = ctx.config
    result, figures = _prune_then_finetune(model, ctx, lambda m: sparsify(m, cfg.sparsity, scope="global"))
    remove_masks(model)
    ctx.note(
        sparsity_requested=cfg.sparsity,
        sparsity_achieved=result.sparsity,
        pruned_weights=result.pruned,
        prunable_weights=result.numel,
        **figures,
    )
    return model


def channels_finetune(model: nn.Module, ctx: DemoContext) -> nn.Module:
    """Physically remove ``config.channel_ratio`` of every prunable channel group (L2), then fine-tune.

    The input channel and the 10 logits are pinned by the engine (model inputs and outputs keep their
    shapes); every conv, BatchNorm and the hidden Linear layer get narrower, so MACs and latency drop.

    >>> from prunekit.demo.data import load_splits
    >>> from prunekit.demo.model import build_model
    >>> ctx = DemoContext(DemoConfig(finetune_epochs=0), load_splits(), Console(quiet=True), progress=False)
    >>> channels_finetune(build_model(), ctx).conv3.out_channels
    64
    """
    cfg = ctx.config
    result, figures = _prune_then_finetune(
        model, ctx, lambda m: prune(m, torch.zeros(1, *IMAGE_SHAPE), ratio=cfg.channel_ratio)
    )
    ctx.note(
        channel_ratio=cfg.channel_ratio,
        removed_channels=result.removed_units,
        pruned_groups=result.n_pruned_groups,
        macs_ratio=result.macs_ratio,
        params_ratio=result.params_ratio,
        **figures,
        plan=result.plan.to_dict(),
    )
    return model


def default_stages(config: DemoConfig) -> list[Stage]:
    """The stages ``prunekit demo`` runs, in order. Add a stage by appending one entry.

    >>> [stage.name for stage in default_stages(DemoConfig())]
    ['dense', 'sparse90', 'channels50']
    """
    pct = f"{config.sparsity * 100:g}%"
    channels = f"{config.channel_ratio * 100:g}%"
    return [
        Stage("dense", "dense (trained)", train_dense, source=None),
        Stage(config.sparse_name, f"{pct} global unstructured + fine-tune", sparsify_finetune),
        Stage(
            config.channels_name,
            f"{channels} of channels removed (structured) + fine-tune",
            channels_finetune,
        ),
    ]


def check_stages(stages: list[Stage]) -> None:
    """Names unique and non-empty, every ``source`` an earlier stage.

    >>> check_stages(default_stages(DemoConfig()))
    """
    seen: set[str] = set()
    for stage in stages:
        if not stage.name:
            raise ConfigError("every stage needs a non-empty name")
        if stage.name in seen:
            raise ConfigError(f"two stages are named {stage.name!r}: give each stage its own name")
        if stage.source is not None and stage.source not in seen:
            raise ConfigError(
                f"stage {stage.name!r} starts from {stage.source!r}, which is not an earlier stage"
            )
        seen.add(stage.name)
    if not stages:
        raise ConfigError("the demo needs at least one stage")


__all__ = [
    "DemoConfig",
    "DemoContext",
    "Stage",
    "channels_finetune",
    "check_stages",
    "default_stages",
    "sparsify_finetune",
    "train_dense",
]
