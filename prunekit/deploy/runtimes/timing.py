"""Time a loaded runtime session the same way for every runtime: warm-up runs, then timed runs.

The clock (``time.perf_counter``) is read around each ``session.run``; the result has the median, p90 and
mean in milliseconds, with the batch size and the thread count the session was loaded with, as
:class:`prunekit.measure.LatencyStats` (the numbers compare with ``measure_latency`` and ``onnx_latency``).

>>> import numpy as np
>>> class Echo:
...     def run(self, inputs):
...         return list(inputs)
>>> time_session(Echo(), [np.zeros((4, 3))], warmup=1, runs=5, threads=1).batch_size
4
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from prunekit.deploy.runtimes.base import Session
from prunekit.measure.latency import LatencyStats, check_timing_args


def time_session(
    session: Session,
    inputs: Sequence[np.ndarray],
    *,
    warmup: int = 10,
    runs: int = 50,
    threads: int,
) -> LatencyStats:
    """``runs`` timed ``session.run(inputs)`` after ``warmup`` untimed ones; ``threads`` is recorded."""
    check_timing_args(runs=runs, warmup=warmup, threads=threads)
    for _ in range(warmup):
        session.run(inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(inputs)
        times.append((time.perf_counter() - start) * 1000.0)
    ms = np.asarray(times)
    return LatencyStats(
        median_ms=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        runs=runs,
        warmup=warmup,
        batch_size=int(inputs[0].shape[0]) if inputs and inputs[0].ndim else 1,
        threads=threads,
    )
