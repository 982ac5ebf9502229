"""What :func:`prunekit.recover.finetune` is asked to do: a training config and a distillation config.

- :class:`TrainConfig`: ``steps`` or ``epochs`` (exactly one), ``lr``, ``optimizer``, ``weight_decay``,
  ``momentum``, ``schedule``, ``max_grad_norm``, ``loss_fn``, ``eval_fn``, ``eval_every``, ``patience``,
  ``min_delta``, ``restore_best``, ``keep_zeros``, ``seed``.
- :class:`DistillConfig`: ``teacher`` (the dense model), ``alpha``, ``temperature``, ``feature_kd``,
  ``feature_kd_weight``.

Both are frozen and checked once, when built, so a bad value is one :class:`ConfigError` before the model
changes. ``finetune`` takes them (``finetune(model, data, TrainConfig(...), distill=DistillConfig(...))``) OR
its keywords (``steps=``, ``teacher=``, ``kd_alpha=``, ...), through :func:`prunekit.config.resolve`: a
keyword left at ``None`` is "not given", one that disagrees with a given config is a :class:`ConfigError`.

>>> cfg = TrainConfig(steps=100, lr=0.01)
>>> cfg.replace(schedule="cosine").schedule, cfg.to_dict()["lr"]
('cosine', 0.01)
>>> DistillConfig(teacher=nn.Linear(2, 2), alpha=1.5)
Traceback (most recent call last):
prunekit.errors.ConfigError: kd_alpha must be a number in [0, 1], got 1.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.config import _Config
from prunekit.errors import ConfigError
from prunekit.recover.callbacks import check_positive_int
from prunekit.recover.distill import check_kd_args
from prunekit.recover.train import OPTIMIZERS, SCHEDULES


def _number(value: Any, name: str, *, positive: bool) -> float:
    """``value`` as a float if it is a finite number ``> 0`` (``positive``) or ``>= 0``."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def _flag(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class TrainConfig(_Config):
    """How :func:`~prunekit.recover.finetune` trains (see it for what each option does).

    ``steps`` or ``epochs`` (exactly one; ``steps`` cycles through the data), ``optimizer`` ``"adam"`` or
    ``"sgd"``, ``schedule`` ``"constant"`` or ``"cosine"``; ``eval_every`` and ``patience`` need an
    ``eval_fn``. ``loss_fn``/``eval_fn`` are compared by identity and left out of :meth:`to_dict`.

    >>> TrainConfig(epochs=1, patience=2)
    Traceback (most recent call last):
    prunekit.errors.ConfigError: patience (early stopping) needs an eval_fn to watch
    """

    _RUNTIME = ("loss_fn", "eval_fn")

    steps: int | None = None
    epochs: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    max_grad_norm: float | None = None
    loss_fn: Any = field(default=None, compare=False, repr=False)
    eval_fn: Any = field(default=None, compare=False, repr=False)
    eval_every: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    keep_zeros: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of steps or epochs, e.g. finetune(model, data, epochs=3)")
        check_positive_int("steps", self.steps)
        check_positive_int("epochs", self.epochs)
        put(self, "lr", _number(self.lr, "lr", positive=True))
        put(self, "weight_decay", _number(self.weight_decay, "weight_decay", positive=False))
        put(self, "momentum", _number(self.momentum, "momentum", positive=False))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.max_grad_norm is not None:
            put(self, "max_grad_norm", _number(self.max_grad_norm, "max_grad_norm", positive=True))
        for name in ("loss_fn", "eval_fn"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be callable, got {type(fn).__name__}")
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("patience", self.patience)
        if self.eval_every is not None and self.eval_fn is None:
            raise ConfigError("eval_every is set but there is no eval_fn to run")
        if self.patience is not None and self.eval_fn is None:
            raise ConfigError("patience (early stopping) needs an eval_fn to watch")
        put(self, "min_delta", _number(self.min_delta, "min_delta", positive=False))
        _flag(self.restore_best, "restore_best")
        _flag(self.keep_zeros, "keep_zeros")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an int or None, got {self.seed!r}")


@dataclass(frozen=True)
class DistillConfig(_Config):
    """Knowledge distillation from ``teacher`` (the dense model) during :func:`~prunekit.recover.finetune`.

    The loss is ``(1 - alpha) * task + alpha * KL(teacher || student at temperature) * T**2``; ``feature_kd``
    names modules (a list: the same name in both, or a ``{student: teacher}`` mapping, kept as pairs) whose
    outputs are matched with an MSE weighted by ``feature_kd_weight``.

    >>> DistillConfig(teacher=nn.Linear(2, 2), feature_kd=["0"]).feature_kd
    (('0', '0'),)
    >>> DistillConfig(teacher=nn.Linear(2, 2), temperature=0)
    Traceback (most recent call last):
    prunekit.errors.ConfigError: kd_temperature must be a finite number > 0, got 0
    """

    _RUNTIME = ("teacher",)

    teacher: Any = field(default=None, compare=False, repr=False)
    alpha: float = 0.5
    temperature: float = 4.0
    feature_kd: tuple | None = None
    feature_kd_weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, nn.Module):
            raise ConfigError(f"teacher must be a torch.nn.Module, got {type(self.teacher).__name__}")
        check_kd_args(self.alpha, self.temperature)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "feature_kd", _pairs(self.feature_kd))
        weight = _number(self.feature_kd_weight, "feature_kd_weight", positive=False)
        object.__setattr__(self, "feature_kd_weight", weight)

    def to_dict(self) -> dict[str, Any]:
        """JSON data (the teacher left out; ``feature_kd`` as ``[student, teacher]`` pairs).

        >>> DistillConfig(teacher=nn.Linear(2, 2), feature_kd={"0": "1"}).to_dict()["feature_kd"]
        [['0', '1']]
        """
        pairs = None if self.feature_kd is None else [list(pair) for pair in self.feature_kd]
        return {**super().to_dict(), "feature_kd": pairs}


def _pairs(feature_kd: Any) -> tuple[tuple[str, str], ...] | None:
    """``feature_kd`` as ``(student module, teacher module)`` name pairs (``None`` stays ``None``)."""
    if feature_kd is None:
        return None
    if isinstance(feature_kd, str):
        raise ConfigError(f"feature_kd must be a list of module names or a mapping, got {feature_kd!r}")
    items = feature_kd.items() if isinstance(feature_kd, Mapping) else feature_kd
    pairs = []
    for item in items:
        pair = (item, item) if isinstance(item, str) else tuple(item)
        if len(pair) != 2 or not all(isinstance(name, str) for name in pair):
            raise ConfigError(f"feature_kd: module names must be strings, got {item!r}")
        pairs.append(pair)
    return tuple(pairs)
