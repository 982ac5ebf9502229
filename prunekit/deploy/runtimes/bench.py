"""Dense vs pruned on one runtime: export each model once, then time and check it per thread count.

Shared by ``prunekit bench --runtime`` and ``bench/bench_edge.py``. Every row carries the runtime, the
model's label, batch size, threads, median/p90 ms, the speedup against the reference model (its
``median_ms`` over this row's, so the reference reads 1.00), ``noisy`` (p90 over 1.5x the median:
:func:`prunekit.measure.latency.is_noisy`) and the agreement with PyTorch.

>>> import tempfile, torch
>>> models = {"dense": torch.nn.Linear(8, 8), "pruned": torch.nn.Linear(8, 2)}
>>> rows = bench_runtime("onnxruntime", models, torch.randn(1, 8), tempfile.mkdtemp(), reference="dense",
...                      threads=(1,), runs=3, warmup=1)
>>> [(r["model"], r["speedup"] if r["model"] == "dense" else None, r["agree"]) for r in rows]
[('dense', 1.0, True), ('pruned', None, True)]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs, call_model, eval_mode
from prunekit.deploy.runtimes import arrays, compare, get_runtime, time_session
from prunekit.errors import ConfigError
from prunekit.graph.trace import flatten_tensors


def bench_runtime(
    runtime: str,
    models: Mapping[str, nn.Module],
    example_inputs: ExampleInputs,
    workdir: str | os.PathLike,
    *,
    reference: str,
    threads: Sequence[int] = (1,),
    runs: int = 30,
    warmup: int = 5,
    opset: int | None = None,
) -> list[dict[str, Any]]:
    """Rows for every model x thread count on ``runtime``; files are written under ``workdir``."""
    if reference not in models:
        raise ConfigError(f"reference {reference!r} is not one of the models {list(models)}")
    rt = get_runtime(runtime)
    rt.require()
    inputs = arrays(example_inputs)
    rows = []
    for index, (label, model) in enumerate(models.items()):
        out = Path(workdir) / f"{runtime}-{index}{rt.suffix}"
        artifact = rt.export(model, example_inputs, out, opset=opset)
        with eval_mode(model), torch.no_grad():
            want = flatten_tensors(call_model(model, example_inputs))
        for count in threads:
            session = rt.load(artifact, threads=count)
            agreement = compare(want, session.run(inputs), tolerance=rt.tolerance)
            stats = time_session(session, inputs, warmup=warmup, runs=runs, threads=count)
            rows.append(
                {
                    "runtime": runtime,
                    "model": label,
                    "batch_size": stats.batch_size,
                    "threads": count,
                    "median_ms": stats.median_ms,
                    "p90_ms": stats.p90_ms,
                    "noisy": stats.noisy,
                    "agree": agreement.ok,
                    "agreement": agreement.to_dict(),
                    "size_bytes": artifact.size_bytes,
                }
            )
    for row in rows:
        base = next(r for r in rows if r["model"] == reference and r["threads"] == row["threads"])
        row["speedup"] = base["median_ms"] / row["median_ms"]
    return rows
