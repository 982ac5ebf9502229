"""``run_demo``: train the digits CNN, run every stage, measure each result the same way, print and save it.

Every stage's model is measured with :mod:`prunekit.measure`: top-1 test accuracy, parameters (total and
non-zero), MACs, safetensors bytes and their zstd-compressed size, and median latency at batch 1 and 64
(measured after every stage has run, the models alternating, see :func:`measure_latencies`).
When the ``onnx`` extra is installed, the last structured stage is also exported to ONNX and quantized to
static INT8, and both files are measured in onnxruntime (:mod:`prunekit.demo.onnx_rows`).
With ``out=DIR`` the models (``<stage>.safetensors``, masks removed; the ``.onnx`` files), ``results.md``,
``results.txt`` and ``results.json`` are written there; every file goes through a temporary file and
``os.replace``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from rich.console import Console
from torch import nn

from prunekit._atomic import write_bytes
from prunekit.demo.data import IMAGE_SHAPE, load_splits
from prunekit.demo.model import build_model
from prunekit.demo.onnx_rows import OnnxRow, export_rows, onnx_available
from prunekit.demo.stages import DemoConfig, DemoContext, Stage, check_stages, default_stages
from prunekit.demo.table import demo_table, table_markdown, table_text
from prunekit.errors import ConfigError
from prunekit.measure.latency import LatencyStats, measure_latency
from prunekit.measure.macs import count_macs
from prunekit.measure.params import ParamCount, count_params
from prunekit.measure.size import SizeInfo, model_size
from prunekit.progress import enabled
from prunekit.recover import accuracy
from prunekit.report.page import build_report

QUICK = {"epochs": 4, "finetune_epochs": 2, "latency_runs": 5, "latency_warmup": 1, "latency_rounds": 2}
LATENCY_BATCHES = (1, 64)


@dataclass
class StageRow:
    """The measurements of one stage's model; ``extra`` holds the stage's own figures (``ctx.note``)."""

    name: str
    title: str
    accuracy: float
    params: ParamCount
    macs: int
    size: SizeInfo
    latency: list[LatencyStats]
    seconds: float
    measure_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable figures of this stage."""
        return {
            "name": self.name,
            "title": self.title,
            "accuracy": self.accuracy,
            "params": self.params.to_dict(),
            "macs": self.macs,
            "size": self.size.to_dict(),
            "latency": [stats.to_dict() for stats in self.latency],
            "seconds": self.seconds,
            "measure_seconds": self.measure_seconds,
            "extra": self.extra,
        }


@dataclass
class DemoResult:
    """Everything a demo run measured: one :class:`StageRow` per stage, the data, the machine, timings."""

    config: DemoConfig
    rows: list[StageRow]
    data: dict[str, int]
    environment: dict[str, Any]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    def row(self, name: str) -> StageRow:
        """The row of stage ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(r.name for r in self.rows)}")

    def to_dict(self) -> dict:
        """JSON-serialisable: config, data sizes, machine, every stage's figures and its change vs dense."""
        dense = self.rows[0]
        return {
            "config": dataclasses.asdict(self.config),
            "data": self.data,
            "environment": self.environment,
            "seconds": self.seconds,
            "files": self.files,
            "stages": [row.to_dict() for row in self.rows],
            "vs_dense": {row.name: _versus(row, dense) for row in self.rows[1:]},
        }


def _versus(row: StageRow, dense: StageRow) -> dict[str, float]:
    return {
        "accuracy_drop_points": 100.0 * (dense.accuracy - row.accuracy),
        "nonzero_fraction": row.params.nonzero / dense.params.nonzero,
        "macs_fraction": row.macs / dense.macs,
        "compression_vs_dense_file": dense.size.dense_bytes / row.size.compressed_bytes,
        "latency_speedup": [
            d.median_ms / r.median_ms for d, r in zip(dense.latency, row.latency, strict=True)
        ],
    }


def environment() -> dict[str, Any]:
    """The machine a measurement ran on: CPU model, cores, torch version, intra-op threads, Python.

    >>> sorted(environment())
    ['cores', 'cpu', 'platform', 'python', 'threads', 'torch']
    """
    from prunekit.measure.latency import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "x.txt"
    >>> write_atomic(target, "hi"); target.read_text()
    'hi'
    """
    write_bytes(path, data.encode() if isinstance(data, str) else data)


def measure_stage(model: nn.Module, ctx: DemoContext) -> dict[str, Any]:
    """Test accuracy, parameter counts, MACs of one image, and file sizes of a stage's model.

    >>> from prunekit.demo.data import load_splits
    >>> from prunekit.demo.model import build_model
    >>> ctx = DemoContext(DemoConfig(), load_splits(), Console(quiet=True))
    >>> measure_stage(build_model(), ctx)["macs"]
    2444544
    """
    return {
        "accuracy": accuracy(model, ctx.test_loader()),
        "params": count_params(model),
        "macs": count_macs(model, torch.zeros(1, *IMAGE_SHAPE)),
        "size": model_size(model),
    }


def measure_latencies(models: dict[str, nn.Module], ctx: DemoContext) -> dict[str, list[LatencyStats]]:
    """Latency of every model at batch 1 and 64: best round of ``config.latency_rounds``, models alternating.

    Each round runs :func:`~prunekit.measure.latency.measure_latency` (``latency_runs`` timed runs after
    ``latency_warmup``) on every model in turn; a model keeps the round with its lowest median. Alternating
    spreads load from other processes over all models instead of one; the best round is the least disturbed.

    >>> from prunekit.demo.data import load_splits
    >>> from prunekit.demo.model import build_model
    >>> ctx = DemoContext(DemoConfig(latency_runs=2, latency_rounds=1), load_splits(), Console(quiet=True))
    >>> [s.batch_size for s in measure_latencies({"m": build_model()}, ctx)["m"]]
    [1, 64]
    """
    cfg = ctx.config
    best: dict[str, list[LatencyStats]] = {}
    for _ in range(cfg.latency_rounds):
        for name, model in models.items():
            stats = [
                measure_latency(
                    model, ctx.splits.x_test[:batch], runs=cfg.latency_runs, warmup=cfg.latency_warmup
                )
                for batch in LATENCY_BATCHES
            ]
            kept = best.setdefault(name, stats)
            best[name] = [
                min(old, new, key=lambda s: s.median_ms) for old, new in zip(kept, stats, strict=True)
            ]
    return best


def _onnx_rows(
    models: dict[str, nn.Module],
    measured: dict[str, dict[str, Any]],
    ctx: DemoContext,
    folder: Path,
    source: str | None,
) -> list[OnnxRow]:
    if source is None:
        if not onnx_available():
            ctx.console.print(
                "ONNX and INT8 rows skipped: install the onnx extra (pip install 'prunekit[onnx]')"
            )
        return []
    ctx.stage = source
    return export_rows(models[source], source, ctx, folder, LATENCY_BATCHES)


def _check_paths(out: Path | None, json_path: Path | None) -> None:
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (it is created if missing)")
    if json_path is not None and json_path.is_dir():
        raise ConfigError(f"--json {json_path} is a directory; give a file path")


def _save(out: Path, result: DemoResult, models: dict[str, nn.Module], onnx: list[OnnxRow]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
        path = out / f"{name}.safetensors"
        write_atomic(path, safetensors.torch.save(state, metadata={"stage": name}))
        result.files[name] = str(path)
    for row in onnx:
        path = out / row.path.name
        write_atomic(path, row.path.read_bytes())
        result.files[row.name] = str(path)
    command = (
        f"prunekit demo --out {out} --epochs {result.config.epochs} --finetune-epochs "
        f"{result.config.finetune_epochs} --sparsity {result.config.sparsity} --seed {result.config.seed} "
        f"--threads {result.config.threads}"
    )
    for path in build_report(result.to_dict(), out, command=command):  # the figures, as report.html/.md
        result.files[path.stem + path.suffix.replace(".", "_")] = str(path)
    for key, filename in (("table_md", "results.md"), ("table_txt", "results.txt"), ("json", "results.json")):
        result.files[key] = str(out / filename)
    write_atomic(out / "results.md", table_markdown(result))
    write_atomic(out / "results.txt", table_text(result))
    write_atomic(out / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")


def _pick_onnx_source(onnx_source: str | None, config: DemoConfig, stages: list[Stage]) -> str | None:
    """The stage exported to ONNX: ``"auto"`` picks the structured stage when the ``onnx`` extra is there.

    ``None`` means no ONNX rows; a name that is not a stage raises :class:`~prunekit.errors.ConfigError`.
    """
    names = {stage.name for stage in stages}
    if onnx_source == "auto":
        source = config.channels_name if onnx_available() else None
        return source if source in names else None
    if onnx_source is not None and onnx_source not in names:
        raise ConfigError(f"onnx_source {onnx_source!r} is not a stage; stages: {[s.name for s in stages]}")
    return onnx_source


def _run_stages(
    stages: list[Stage], ctx: DemoContext
) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    """Run each stage on a fresh model or a copy of its source stage's, measure it, print one line.

    Returns the models and their figures (:func:`measure_stage` plus the stage's and the measurement's
    seconds), both by stage name.
    """
    models: dict[str, nn.Module] = {}
    measured: dict[str, dict[str, Any]] = {}
    for i, stage in enumerate(stages, 1):
        ctx.stage = stage.name
        source = build_model(ctx.config.seed) if stage.source is None else copy.deepcopy(models[stage.source])
        t0 = time.perf_counter()
        models[stage.name] = model = stage.run(source, ctx)
        t1 = time.perf_counter()
        figures = measure_stage(model, ctx)
        measured[stage.name] = {"seconds": t1 - t0, "measure_seconds": time.perf_counter() - t1, **figures}
        ctx.console.print(
            f"[{i}/{len(stages)}] {stage.name} ({stage.title}): "
            f"accuracy {100 * figures['accuracy']:.2f}%, {t1 - t0:.1f} s"
        )
    return models, measured


def _stage_rows(
    stages: list[Stage],
    measured: dict[str, dict[str, Any]],
    latencies: dict[str, list[LatencyStats]],
    ctx: DemoContext,
    onnx: list[OnnxRow],
    onnx_source: str | None,
) -> list[StageRow]:
    """One :class:`StageRow` per stage, then one per ONNX row (counts taken from its source stage)."""
    rows = [
        StageRow(
            stage.name,
            stage.title,
            latency=latencies[stage.name],
            extra=ctx.notes.get(stage.name, {}),
            **measured[stage.name],
        )
        for stage in stages
    ]
    rows += [
        StageRow(
            row.name,
            row.title,
            row.accuracy,
            measured[onnx_source]["params"],
            measured[onnx_source]["macs"],
            row.size,
            row.latency,
            row.seconds,
            0.0,
            row.extra,
        )
        for row in onnx
    ]
    return rows


def run_demo(
    *,
    out: Path | str | None = None,
    json_path: Path | str | None = None,
    epochs: int | None = None,
    finetune_epochs: int | None = None,
    sparsity: float = 0.9,
    quick: bool = False,
    seed: int = 0,
    threads: int = 1,
    console: Console | None = None,
    progress: bool | None = None,
    stages: list[Stage] | None = None,
    onnx_source: str | None = "auto",
) -> DemoResult:
    """Train the digits CNN, run the stages (default: dense, 90% global unstructured + fine-tune), measure.

    ``quick=True`` uses a small budget (4 + 2 epochs, 2 x 5 latency runs) for smoke tests; ``epochs`` and
    ``finetune_epochs`` override either budget. Runs with ``threads`` intra-op threads (restored afterwards)
    and is reproducible for a given ``seed``. Prints each stage's lines and the table to ``console``, with
    progress bars when ``progress`` is true (``None``: :func:`prunekit.progress.enabled`, so the command
    line's ``--quiet`` turns them off); writes files only after every stage has run. ``onnx_source`` names
    the stage exported to ONNX and INT8 (``"auto"``: the structured stage when the ``onnx`` extra is
    installed; ``None``: no ONNX rows).

    >>> result = run_demo(quick=True, console=Console(quiet=True), progress=False, onnx_source=None)
    >>> [row.name for row in result.rows], result.row("dense").accuracy > 0.9
    (['dense', 'sparse90', 'channels50'], True)
    """
    config = DemoConfig(sparsity=sparsity, seed=seed, threads=threads, **(QUICK if quick else {}))
    overrides = {k: v for k, v in (("epochs", epochs), ("finetune_epochs", finetune_epochs)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    config.check()
    out = Path(out) if out is not None else None
    json_path = Path(json_path) if json_path is not None else None
    _check_paths(out, json_path)
    stages = default_stages(config) if stages is None else list(stages)
    check_stages(stages)
    onnx_source = _pick_onnx_source(onnx_source, config, stages)
    console = console if console is not None else Console()

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        start = time.perf_counter()
        splits = load_splits()
        ctx = DemoContext(config, splits, console, progress=enabled(progress))
        models, measured = _run_stages(stages, ctx)
        t2 = time.perf_counter()
        latencies = measure_latencies(models, ctx)
        console.print(f"latency of {len(models)} models measured in {time.perf_counter() - t2:.1f} s")
        onnx_dir = tempfile.TemporaryDirectory(prefix="prunekit-demo-")
        onnx = _onnx_rows(models, measured, ctx, Path(onnx_dir.name), onnx_source)
        rows = _stage_rows(stages, measured, latencies, ctx, onnx, onnx_source)
        data = {"train": len(splits.y_train), "test": len(splits.y_test)}
        result = DemoResult(config, rows, data, environment(), seconds=time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)

    console.print(demo_table(result))
    try:
        if out is not None:
            _save(out, result, models, onnx)
            console.print(f"wrote {len(result.files)} files to {out}")
    finally:
        onnx_dir.cleanup()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    return result
