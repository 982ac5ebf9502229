"""Forward latency: warm-up runs, then timed runs; median, p90 and mean in milliseconds.

Timing uses ``time.perf_counter`` around each forward, in eval mode under ``torch.no_grad``, on whatever
device the model and inputs already are (on CUDA each run is synchronised before the clock is read). The batch
size and the number of intra-op threads are recorded with the result, since latency means little without them.

A measurement is *noisy* when its p90 is over ``NOISY_P90_RATIO`` (1.5) times its median: one run in ten or
more took half as long again as the typical one, which on CPU means other work competed for the cores (a
loaded machine, frequency changes) rather than the model's own variance, so its median is not to be trusted
for a comparison.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit._inputs import ExampleInputs, batch_size_of, call_model, eval_mode
from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError
from prunekit.progress import track

NOISY_P90_RATIO = 1.5


def is_noisy(median_ms: float, p90_ms: float) -> bool:
    """Whether a timing is noisy: its p90 is over ``NOISY_P90_RATIO`` times its median.

    >>> is_noisy(10.0, 14.0), is_noisy(10.0, 16.0)
    (False, True)
    """
    return p90_ms > NOISY_P90_RATIO * median_ms


@dataclass
class LatencyStats(JsonData):
    """Latency of one forward in milliseconds over ``runs`` timed runs after ``warmup`` untimed ones."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    warmup: int
    batch_size: int
    threads: int

    @property
    def noisy(self) -> bool:
        """p90 over ``NOISY_P90_RATIO`` times the median (see :func:`is_noisy`)."""
        return is_noisy(self.median_ms, self.p90_ms)

    @classmethod
    def from_times(cls, times_ms: list[float], *, warmup: int, batch_size: int, threads: int) -> LatencyStats:
        """Median, 90th percentile and mean of the timed runs ``times_ms`` (milliseconds).

        >>> LatencyStats.from_times([1.0, 2.0, 3.0], warmup=0, batch_size=1, threads=1).median_ms
        2.0
        """
        ms = np.asarray(times_ms)
        return cls(
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            mean_ms=float(ms.mean()),
            runs=len(times_ms),
            warmup=warmup,
            batch_size=batch_size,
            threads=threads,
        )


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def check_timing_args(*, runs: int, warmup: int, threads: int | None) -> None:
    """Raise :class:`~prunekit.errors.ConfigError` unless runs >= 1, warmup >= 0 and threads is None or >= 1.

    >>> check_timing_args(runs=1, warmup=0, threads=None)
    """
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1 or None, got {threads}")


def measure_latency(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
) -> LatencyStats:
    """Time ``runs`` forwards of ``model`` after ``warmup`` untimed ones.

    ``threads`` sets ``torch.set_num_threads`` for the measurement only (the previous value is restored);
    ``None`` keeps the current setting. p90 is the linear-interpolated 90th percentile.

    >>> stats = measure_latency(nn.Linear(10, 5), torch.zeros(3, 10), runs=5, warmup=1, threads=1)
    >>> (stats.runs, stats.batch_size, stats.threads)
    (5, 3, 1)
    """
    check_timing_args(runs=runs, warmup=warmup, threads=threads)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        times = []
        with eval_mode(model), torch.no_grad():
            for _ in range(warmup):
                call_model(model, example_inputs)
            _sync()
            for _ in track(range(runs), "latency"):
                start = time.perf_counter()
                call_model(model, example_inputs)
                _sync()
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous_threads)
    return LatencyStats.from_times(
        times, warmup=warmup, batch_size=batch_size_of(example_inputs), threads=used_threads
    )


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"
