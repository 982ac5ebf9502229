"""A plain supervised training loop and top-1 accuracy.

:func:`train` is deliberately small: cross-entropy, AdamW or SGD with momentum, an optional cosine
learning rate schedule, a rich progress bar. It trains masked models as they are: a prunekit mask is a
``torch.nn.utils.parametrize`` parametrization ``weight = original * mask``, so a pruned weight reads as zero
in every forward and gets zero gradient; no hooks are needed to keep it pruned.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn import functional as F

from prunekit._inputs import eval_mode
from prunekit.errors import ConfigError

EpochCallback = Callable[[int, float], None]
"""Called after each epoch with ``(epoch, mean_loss)``; ``epoch`` counts from 1."""

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def _check_args(
    model: nn.Module,
    loader: Iterable,
    epochs: int,
    lr: float,
    weight_decay: float,
    optimizer: str,
    schedule: str,
) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    if epochs > 0 and _num_batches(loader) == 0:
        raise ConfigError("the training loader is empty: give it at least one batch")


def _num_batches(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _lr_schedule(
    opt: torch.optim.Optimizer, schedule: str, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The cosine schedule from ``lr`` to 0 over ``total_steps`` (``None`` for ``schedule="constant"``)."""
    if schedule != "cosine":
        return None
    if total_steps is None:
        raise ConfigError('schedule="cosine" needs a loader with len(); use schedule="constant"')
    return cosine_schedule(opt, total_steps)


def cosine_schedule(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate from its initial value to 0 along a half cosine over ``total`` steps.

    >>> opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    >>> sched = cosine_schedule(opt, 2)
    >>> opt.step(); sched.step(); opt.param_groups[0]["lr"]
    0.5
    """
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )


def _progress_bar(console: Console | None) -> Progress:
    """The transient rich bar of :func:`train`: epoch, steps done, running mean loss, time."""
    return Progress(
        TextColumn("[bold]train[/] epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def optimizer_step(
    model: nn.Module,
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    max_grad_norm: float | None = None,
) -> None:
    """One training step on ``loss``: clear the gradients, backward, clip, step ``opt`` and then ``sched``.

    Args:
        model: the module whose parameters' gradient norm is clipped to ``max_grad_norm``.
        loss: the scalar loss of the batch.
        opt: the optimizer stepped once.
        sched: a learning-rate scheduler stepped once after ``opt``, or ``None``.
        max_grad_norm: clip the total gradient norm of ``model``'s parameters to this (``None``: no clipping).

    >>> net = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> before = net.weight.detach().clone()
    >>> optimizer_step(net, net(torch.ones(1, 2)).sum(), opt)
    >>> torch.allclose(net.weight, before - 0.1)
    True
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    if sched is not None:
        sched.step()


def _train_epoch(
    model: nn.Module,
    loader: Iterable,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR | None,
    device: torch.device,
    advance: Callable[..., None] | None,
) -> float:
    """One pass over ``loader`` (cross-entropy, one optimiser and schedule step a batch); its mean loss.

    ``advance(loss=running_mean)`` is called after each batch. An empty loader raises ConfigError.
    """
    total, count = 0.0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        loss = F.cross_entropy(model(inputs), targets)
        optimizer_step(model, loss, opt, sched)
        total += loss.item() * len(targets)
        count += len(targets)
        if advance is not None:
            advance(loss=total / count)
    if count == 0:
        raise ConfigError("the training loader is empty: give it at least one batch")
    return total / count


def train(
    model: nn.Module,
    loader: Iterable,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    momentum: float = 0.9,
    schedule: str = "constant",
    progress: bool | EpochCallback = True,
    seed: int | None = None,
    console: Console | None = None,
) -> list[float]:
    """Train ``model`` in place on ``(inputs, targets)`` batches (cross-entropy); return per-epoch mean loss.

    ``optimizer`` is ``"adam"`` (AdamW, decoupled ``weight_decay``) or ``"sgd"`` (Nesterov momentum). With
    ``schedule="cosine"`` the learning rate follows a cosine from ``lr`` to 0 over all steps.
    ``progress=True`` shows a rich progress bar, ``False`` shows nothing, a callable gets
    ``(epoch, mean_loss)`` after each epoch. With ``seed`` the run's randomness (dropout, a loader without its
    own generator) is seeded without changing the caller's global RNG state. Batches are moved to the model's
    device. The model is left in train mode.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> model = nn.Linear(4, 3)
    >>> losses = train(model, [(x, y)], epochs=20, lr=0.05, progress=False)
    >>> losses[-1] < losses[0]
    True
    """
    _check_args(model, loader, epochs, lr, weight_decay, optimizer, schedule)
    device = _device_of(model)
    opt = _make_optimizer(model, optimizer, float(lr), float(weight_decay), momentum)
    per_epoch = _num_batches(loader)
    total_steps = None if per_epoch is None else per_epoch * epochs
    sched = _lr_schedule(opt, schedule, total_steps)
    bar = _progress_bar(console) if progress is True else None
    callback = progress if callable(progress) else None

    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model.train()
        if bar is not None:
            bar.start()
            task = bar.add_task("train", total=total_steps, epoch=0, epochs=epochs, loss=float("nan"))
        try:
            for epoch in range(1, epochs + 1):
                advance = None if bar is None else functools.partial(bar.update, task, advance=1, epoch=epoch)
                losses.append(_train_epoch(model, loader, opt, sched, device, advance))
                if callback is not None:
                    callback(epoch, losses[-1])
        finally:
            if bar is not None:
                bar.stop()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy of ``model`` on ``(inputs, targets)`` batches, in [0, 1].

    Runs in eval mode under ``torch.no_grad()`` and puts back the model's train/eval flags afterwards.

    >>> model = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
    >>> accuracy(model, [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))])
    0.5
    """
    device = _device_of(model)
    correct, count = 0, 0
    with eval_mode(model):
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
            count += len(targets)
    if count == 0:
        raise ConfigError("the evaluation loader is empty: give it at least one batch")
    return correct / count
