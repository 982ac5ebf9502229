"""Latency of a torch model as a runtime sees it: export, load, time. For searches that need the number
on the deployment runtime rather than in PyTorch (a latency or speedup target for OpenVINO, LiteRT, ...).

:func:`runtime_latency` returns a callable with the signature a target search measures candidates with,
``measure(model, example_inputs, runs) -> median ms``; each call exports the candidate into a temporary
directory, loads it with ``threads`` threads and times ``runs`` runs after a short warm-up.

>>> import torch
>>> measure = runtime_latency("onnxruntime", threads=1)
>>> measure(torch.nn.Linear(16, 4), torch.randn(1, 16), 5) > 0
True
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.deploy.runtimes import arrays, get_runtime, time_session
from prunekit.measure.latency import check_timing_args

Measure = Callable[[nn.Module, ExampleInputs, int], float]


def runtime_latency(runtime: str, *, threads: int = 1, opset: int | None = None) -> Measure:
    """A ``measure(model, example_inputs, runs)`` giving the median ms of ``model`` on ``runtime``.

    The runtime is looked up and its packages imported now, so a missing one fails before any search.
    """
    rt = get_runtime(runtime)
    rt.require()
    check_timing_args(runs=1, warmup=0, threads=threads)

    def measure(model: nn.Module, example_inputs: ExampleInputs, runs: int) -> float:
        with tempfile.TemporaryDirectory(prefix="prunekit-latency-") as work:
            artifact = rt.export(model, example_inputs, Path(work) / f"model{rt.suffix}", opset=opset)
            session = rt.load(artifact, threads=threads)
            stats = time_session(session, arrays(example_inputs), warmup=max(2, runs // 5), runs=runs,
                                 threads=threads)  # fmt: skip
        return stats.median_ms

    return measure
