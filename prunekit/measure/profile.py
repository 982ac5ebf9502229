"""``analyze``: one call measuring a model (params, MACs, size, latency, memory, accuracy, per-layer rows)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit._inputs import ExampleInputs, batch_size_of, eval_mode
from prunekit.errors import ConfigError
from prunekit.measure.latency import LatencyStats, check_timing_args, measure_latency
from prunekit.measure.macs import count_macs, macs_by_module
from prunekit.measure.memory import peak_memory_bytes
from prunekit.measure.params import ParamCount, count_params, params_by_module
from prunekit.measure.size import DEFAULT_ZSTD_LEVEL, SizeInfo, check_zstd_level, model_size

EvalFn = Callable[[nn.Module], float]


@dataclass
class LayerRow:
    """One module's own parameters (total, non-zero) and own MACs; ``kind`` is its class name.

    ``weight_sparsity``: the fraction of zeros in the module's weight if it is a prunable layer (Linear,
    Conv, ConvTranspose: what the sparsifier masks), else ``None``.
    """

    name: str
    kind: str
    params: int
    nonzero: int
    macs: int
    weight_sparsity: float | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of this module's own parameter entries that are zero (bias, norm weights included)."""
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "params": self.params,
            "nonzero": self.nonzero,
            "sparsity": self.sparsity,
            "weight_sparsity": self.weight_sparsity,
            "macs": self.macs,
        }


@dataclass
class ModelProfile:
    """Everything :func:`analyze` measured. ``latency`` and ``accuracy`` are None when not requested.

    Two sparsities: ``params.sparsity`` is over all parameters (biases and norms included);
    ``weight_sparsity`` is over the prunable weights only (Linear / Conv / ConvTranspose weights, each
    shared weight once), the figure :func:`~prunekit.sparse.sparsity_report` gives.
    """

    params: ParamCount
    macs: int
    size: SizeInfo
    peak_memory_bytes: int
    batch_size: int
    layers: list[LayerRow]
    latency: LatencyStats | None = None
    accuracy: float | None = None
    weight_sparsity: float = 0.0

    def to_dict(self) -> dict:
        return {
            "params": self.params.to_dict(),
            "weight_sparsity": self.weight_sparsity,
            "macs": self.macs,
            "size": self.size.to_dict(),
            "peak_memory_bytes": self.peak_memory_bytes,
            "batch_size": self.batch_size,
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "accuracy": self.accuracy,
            "layers": [row.to_dict() for row in self.layers],
        }


def evaluate(model: nn.Module, eval_fn: EvalFn) -> float:
    """``float(eval_fn(model))`` with ``model`` in eval mode under ``torch.no_grad`` (flags restored after).

    ``eval_fn`` must return a real number (a Python/NumPy number or a one-element tensor), e.g. an accuracy.

    >>> evaluate(nn.Linear(2, 1), lambda m: float(m(torch.ones(1, 2)).numel()))
    1.0
    """
    if not callable(eval_fn):
        raise ConfigError(f"eval_fn must be a callable eval_fn(model) -> float, got {type(eval_fn).__name__}")
    with eval_mode(model), torch.no_grad():
        result = eval_fn(model)
    if isinstance(result, torch.Tensor) and result.numel() == 1 and not result.is_complex():
        result = result.item()
    if isinstance(result, bool) or not isinstance(result, numbers.Real):
        raise ConfigError(f"eval_fn must return a number (e.g. accuracy), got {type(result).__name__}")
    return float(result)


def module_kind(module: nn.Module) -> str:
    """Class name of ``module``; for a parametrized module, of the class it had before (``Linear``, not
    ``ParametrizedLinear``, which ``torch.nn.utils.parametrize`` derives from it).

    >>> module_kind(nn.Conv2d(1, 1, 1))
    'Conv2d'
    """
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def layer_rows(model: nn.Module, example_inputs: ExampleInputs) -> list[LayerRow]:
    """One :class:`LayerRow` per module that owns parameters or performs MACs itself, in module order.

    Rows add up to the model totals: sums of ``params``/``nonzero`` equal :func:`count_params`, the sum of
    ``macs`` equals :func:`count_macs`.

    >>> rows = layer_rows(nn.Sequential(nn.Linear(4, 2)), torch.zeros(1, 4))
    >>> [(r.name, r.kind, r.params, r.macs) for r in rows]
    [('0', 'Linear', 10, 8)]
    >>> rows = layer_rows(nn.Sequential(nn.BatchNorm1d(4)), torch.zeros(2, 4))
    >>> rows[0].sparsity, rows[0].weight_sparsity  # half its parameters (the biases) are zero
    (0.5, None)
    """
    from prunekit.sparse.report import sparsity_report

    params = params_by_module(model)
    macs = macs_by_module(model, example_inputs)
    weights = {row.name: row.sparsity for row in sparsity_report(model).rows}
    rows = []
    for name, module in model.named_modules():
        if name not in params and name not in macs:
            continue
        count = params.get(name, ParamCount(total=0, nonzero=0))
        rows.append(
            LayerRow(
                name=name,
                kind=module_kind(module),
                params=count.total,
                nonzero=count.nonzero,
                macs=macs.get(name, 0),
                weight_sparsity=weights.get(name),
            )
        )
    return rows


def analyze(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    latency: bool = True,
    eval_fn: EvalFn | None = None,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> ModelProfile:
    """Measure ``model`` on ``example_inputs``: params, MACs, size, peak memory, per-layer rows, and
    optionally latency (``runs`` timed runs after ``warmup``, on ``threads`` threads) and accuracy via
    ``eval_fn(model)``.
    ``zstd_level`` is passed to :func:`~prunekit.measure.size.model_size` (9 by default; 19: smaller, slow).

    The model is not modified (its training flags are restored).

    >>> p = analyze(nn.Linear(10, 5), torch.zeros(3, 10), latency=False)
    >>> (p.params.total, p.macs, p.latency)
    (55, 150, None)
    """
    from prunekit.sparse.report import sparsity_report

    check_timing_args(runs=runs, warmup=warmup, threads=threads)
    check_zstd_level(zstd_level)
    if eval_fn is not None and not callable(eval_fn):
        raise ConfigError(f"eval_fn must be a callable eval_fn(model) -> float, got {type(eval_fn).__name__}")
    return ModelProfile(
        params=count_params(model),
        macs=count_macs(model, example_inputs),
        size=model_size(model, zstd_level=zstd_level),
        peak_memory_bytes=peak_memory_bytes(model, example_inputs),
        batch_size=batch_size_of(example_inputs),
        layers=layer_rows(model, example_inputs),
        latency=measure_latency(model, example_inputs, runs=runs, warmup=warmup, threads=threads)
        if latency
        else None,
        accuracy=evaluate(model, eval_fn) if eval_fn is not None else None,
        weight_sparsity=sparsity_report(model).sparsity,
    )
