"""Dense vs pruned on one runtime: export each model once, then time and check it per thread count.

Shared by ``prunekit bench --runtime`` and ``bench/bench_edge.py``. Every row carries the runtime, the
model's label, batch size, threads, median/p90 ms, the speedup against the reference model (its
``median_ms`` over this row's, so the reference reads 1.00), ``noisy`` (p90 over 1.5x the median:
:func:`prunekit.measure.latency.is_noisy`), the agreement with PyTorch and ``int8`` (the INT8 mode, or
None). With ``int8`` every model is also exported as an INT8 model (label ``"<label> int8"``), timed beside
its fp32 form; its speedup is still against the fp32 reference, so the dense model's INT8 row reads what
quantizing alone buys.

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
    int8: str | None = None,
    calibration: Sequence[ExampleInputs] | None = None,
) -> list[dict[str, Any]]:
    """Rows for every model (and with ``int8``, its INT8 form) x thread count on ``runtime``; files are
    written under ``workdir``. ``calibration``: the input batches of ``int8="static"``."""
    if reference not in models:
        raise ConfigError(f"reference {reference!r} is not one of the models {list(models)}")
    rt = get_runtime(runtime)
    if int8 is not None:
        rt.check_export_args(int8, calibration)
    rt.require()
    inputs = arrays(example_inputs)
    rows = []
    modes = (None,) if int8 is None else (None, int8)
    forms = [(label, model, mode) for label, model in models.items() for mode in modes]
    for index, (label, model, mode) in enumerate(forms):
        out = Path(workdir) / f"{runtime}-{index}{rt.suffix}"
        calib = calibration if mode == "static" else None
        artifact = rt.export(model, example_inputs, out, opset=opset, int8=mode, calibration=calib)
        with eval_mode(model), torch.no_grad():
            want = flatten_tensors(call_model(model, example_inputs))
        for count in threads:
            session = rt.load(artifact, threads=count)
            agreement = compare(want, session.run(inputs), int8=mode is not None, tolerance=rt.tolerance)
            stats = time_session(session, inputs, warmup=warmup, runs=runs, threads=count)
            rows.append(
                {
                    "runtime": runtime,
                    "model": label if mode is None else f"{label} int8",
                    "int8": mode,
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
