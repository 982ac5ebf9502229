"""``prunekit export | save | load | bench``: the last mile, from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from prunekit.cli._common import (
    ArchOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    ModelSource,
    SeedOpt,
    TrustCodeOpt,
    TrustPickleOpt,
    app,
    checkpoint_dir,
    console,
    load_cli_model,
    model_command,
    new_output,
    writable,
    write_json,
)
from prunekit.errors import ConfigError, ExportError

OutDirOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        metavar="DIR",
        help="Checkpoint directory to write.",
        file_okay=False,
        show_default=False,
        callback=checkpoint_dir,
    ),
]


@app.command()
@model_command
def export(
    source: ModelSource,
    onnx: Annotated[
        Path | None,
        typer.Option(
            "--onnx",
            metavar="FILE",
            help="ONNX file to write (with --int8 also FILE.int8.onnx); same as --format onnx --out FILE.",
            dir_okay=False,
            show_default=False,
            callback=new_output,
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="onnx, openvino (.xml + .bin), tflite, or ncnn (.param + .bin)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="File to write with --format (.onnx, .xml, .tflite, .param); with --int8: the INT8 model.",
            dir_okay=False,
            show_default=False,
            callback=writable,
        ),
    ] = None,
    opset: Annotated[
        int | None, typer.Option("--opset", help="ONNX opset, 11..23 (below 18: the TorchScript exporter).")
    ] = None,
    int8: Annotated[
        str | None,
        typer.Option("--int8", help="INT8 model too: dynamic, or static (needs --calib)."),
    ] = None,
    calib: Annotated[
        Path | None,
        typer.Option(
            "--calib",
            metavar="FILE",
            help="Calibration inputs for --int8 static: a .npy/.npz/.pt tensor of samples (first dim).",
            dir_okay=False,
        ),
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the onnxruntime comparison.")] = False,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Fix the batch dimension.")] = False,
    json_path: JsonOpt = None,
) -> None:
    """Export MODEL for a runtime (ONNX, OpenVINO, TFLite, NCNN), checked against PyTorch; optionally INT8."""
    if int8 not in (None, "dynamic", "static"):
        raise ConfigError(f"--int8 must be dynamic or static, got {int8!r}")
    if int8 == "static" and calib is None:
        raise ConfigError("--int8 static needs --calib FILE with representative inputs")
    if calib is not None and int8 != "static":
        raise ConfigError("--calib is only used with --int8 static")
    if (onnx is None) == (fmt is None and out is None):
        raise ConfigError("give --onnx FILE, or --format FORMAT with --out FILE")
    if fmt is not None or out is not None:
        if fmt is None or out is None:
            raise ConfigError("--format and --out go together")
        _export_runtime(source, fmt, out, opset, int8, calib, json_path)
        return
    assert onnx is not None
    from prunekit.deploy import export_onnx, quantize_onnx

    loaded = source.load()
    batches = _calibration_batches(calib, loaded.example) if calib is not None else None
    exported = export_onnx(
        loaded.model,
        loaded.example,
        onnx,
        verify=not no_verify,
        dynamic_batch=not static_batch,
        opset=opset,
    )
    data: dict[str, Any] = {"export": exported.to_dict()}
    console.print(
        f"wrote {onnx}: {exported.size_bytes:,} bytes, {exported.initializer_params:,} weights "
        f"(model has {exported.model_params:,}; opset {exported.opset}, {exported.exporter})"
        + (
            f"; onnxruntime matches PyTorch (max abs err {exported.max_abs_err:.1e})"
            if exported.verified
            else ""
        )
    )
    if int8 is not None:
        int8_path = onnx.with_suffix(".int8.onnx")
        quantized = quantize_onnx(onnx, int8_path, mode=int8, calibration=batches)
        data["int8"] = quantized.to_dict()
        console.print(
            f"wrote {int8_path}: {quantized.bytes_after:,} bytes ({quantized.ratio:.2f}x smaller)"
            + (
                f"; INT8 vs fp32 on the calibration data: relative error {quantized.output_rel_err:.3f}, "
                f"cosine {quantized.output_cosine:.4f}"
                if quantized.output_rel_err is not None
                else ""
            )
        )
    write_json(json_path, data | {"seed": source.seed})


def _export_runtime(
    source: ModelSource,
    fmt: str,
    out: Path,
    opset: int | None,
    int8: str | None,
    calib: Path | None,
    json_path: Path | None,
) -> None:
    """``export --format``: convert with the runtime's converter, run it once, compare with PyTorch."""
    import torch

    from prunekit._inputs import call_model, eval_mode
    from prunekit.deploy.runtimes import arrays, compare, runtime_for_format
    from prunekit.graph.trace import flatten_tensors

    runtime = runtime_for_format(fmt)
    runtime.check_export_args(int8, calib)
    runtime.require()
    loaded = source.load()
    batches = _calibration_batches(calib, loaded.example) if calib is not None else None
    artifact = runtime.export(loaded.model, loaded.example, out, opset=opset, int8=int8, calibration=batches)
    with eval_mode(loaded.model), torch.no_grad():
        want = flatten_tensors(call_model(loaded.model, loaded.example))
    got = runtime.load(artifact, threads=1).run(arrays(loaded.example))
    agreement = compare(want, got, int8=int8 is not None, tolerance=runtime.tolerance)
    if not agreement.ok:
        for name in artifact.files:
            Path(name).unlink(missing_ok=True)
        raise ExportError(
            f"{runtime.name} does not reproduce PyTorch ({agreement.summary()}); nothing written"
        )
    write_json(
        json_path, {"export": artifact.to_dict(), "agreement": agreement.to_dict(), "seed": source.seed}
    )
    console.print(
        f"wrote {', '.join(artifact.files)}: {artifact.size_bytes:,} bytes; "
        f"{runtime.name} vs PyTorch: {agreement.summary()}"
    )


def _calibration_batches(path: Path, example: Any) -> list[Any]:
    """Split a file of samples into batches shaped like the example input."""
    import numpy as np
    import torch

    if not path.is_file():
        raise ConfigError(f"no calibration file {path}")
    if not isinstance(example, torch.Tensor):
        raise ConfigError("--calib works for models that take one tensor; quantize in Python for others")
    if path.suffix == ".npy":
        samples = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            samples = torch.from_numpy(arrays[arrays.files[0]])
    elif path.suffix in (".pt", ".pth"):
        samples = torch.load(path, weights_only=True)
    else:
        raise ConfigError(f"calibration file must be .npy, .npz or .pt, got {path.name}")
    if not isinstance(samples, torch.Tensor) or tuple(samples.shape[1:]) != tuple(example.shape[1:]):
        want = ",".join(str(d) for d in example.shape[1:])
        raise ConfigError(f"{path} must hold one tensor of samples shaped N,{want}")
    return list(samples.to(example.dtype).split(example.shape[0]))


@app.command()
@model_command
def save(
    source: ModelSource,
    out: OutDirOpt,
    sparse: Annotated[
        bool, typer.Option("--sparse", help="Store weights as bitmask + values + zstd (for sparse models).")
    ] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="prunekit (a checkpoint), hf (a save_pretrained directory stock transformers loads) or "
            "sentence (a directory SentenceTransformer loads).",
        ),
    ] = "prunekit",
    json_path: JsonOpt = None,
) -> None:
    """Save MODEL as a pickle-free checkpoint directory (safetensors weights + spec + structural plans), or,
    with --format hf / sentence, as a directory stock transformers / sentence-transformers load."""
    from prunekit.deploy import save as save_checkpoint
    from prunekit.deploy.pretrained import FORMATS

    if fmt not in ("prunekit", *FORMATS):
        raise ConfigError(f"--format is prunekit, {', '.join(FORMATS)}; got {fmt!r}")
    if sparse and fmt != "prunekit":
        raise ConfigError("--sparse is for prunekit checkpoints; stock directories store dense weights")
    loaded = source.load()
    if fmt != "prunekit":
        _save_stock(loaded, out, fmt, json_path)
        return
    if loaded.spec is None:
        raise ConfigError(
            "a pickled module has no spec to rebuild it from; save its state_dict and pass --arch"
        )
    saved = save_checkpoint(
        loaded.model,
        out,
        spec=loaded.spec,
        plan=loaded.plans,
        sparse=sparse,
        metadata={"input_shape": list(loaded.shape), "source": source.spec},
    )
    write_json(json_path, saved.to_dict() | {"seed": source.seed})
    console.print(f"wrote {out}: {saved.weights_bytes:,} bytes of weights, {saved.params:,} parameters")


def _save_stock(loaded: Any, out: Path, fmt: str, json_path: Path | None) -> None:
    from prunekit.deploy.pretrained import save_pretrained, save_sentence_transformer

    if fmt == "hf":
        saved = save_pretrained(loaded.model, out, example_inputs=loaded.example)
    else:
        saved = save_sentence_transformer(loaded.model, out)
    write_json(json_path, saved.to_dict())
    fields = ", ".join(f"{k}={v}" for k, v in saved.config.items())
    console.print(
        f"wrote {out} ({fmt}: {saved.model_class}, {fields}); reloaded by stock tools, "
        f"max |diff| {saved.max_abs_diff:.2g}"
    )


@app.command()
def load(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="DIR", help="A directory written by prunekit save/prune.")
    ],
    input_shape: InputShapeOpt = None,
    json_path: JsonOpt = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Rebuild a checkpoint (spec, plans, weights checked by sha256), run it once, and describe it."""
    from prunekit.deploy import read_info
    from prunekit.measure import count_params

    info = read_info(checkpoint)
    loaded = ModelSource(str(checkpoint), input_shape=input_shape, trust_code=trust_code).load()
    import torch

    from prunekit._inputs import call_model

    with torch.no_grad():
        outputs = call_model(loaded.model, loaded.example)
    shapes = [list(t.shape) for t in _tensors(outputs)]
    params = count_params(loaded.model)
    data = {
        "path": str(checkpoint),
        "spec": info["spec"],
        "plans": len(info["plans"]),
        "weights": info["weights"],
        "params": params.to_dict(),
        "output_shapes": shapes,
        "metadata": info.get("metadata", {}),
    }
    write_json(json_path, data)
    table = Table(title=f"prunekit load {checkpoint}", show_header=False)
    for key, value in (
        ("spec", info["spec"]),
        ("structural plans", len(info["plans"])),
        ("weights", f"{info['weights']['bytes']:,} bytes ({info['weights']['encoding']}, sha256 checked)"),
        ("parameters", f"{params.total:,} ({params.nonzero:,} non-zero)"),
        ("output shapes", ", ".join("x".join(str(d) for d in s) for s in shapes)),
    ):
        table.add_row(key, str(value))
    console.print(table)


def _tensors(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


@app.command()
def bench(
    model: ModelArg,
    vs: Annotated[
        list[str] | None, typer.Option("--vs", metavar="OTHER", help="Another model to compare (repeatable).")
    ] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8",
    threads: Annotated[str, typer.Option("--threads", help="Comma-separated intra-op thread counts.")] = "1",
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per setting.")] = 30,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs first.")] = 5,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="Comma-separated runtimes (onnxruntime, openvino, litert, ncnn): time each model there; "
            "speedups are against the first --vs (the dense model).",
        ),
    ] = None,
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Latency and throughput of MODEL (and each --vs model) for every batch size and thread count.

    Every model gets the same random input (the first model's shape, or --input-shape) with the batch
    dimension replaced; ratios are against MODEL in the same run (with --runtime: against the first --vs).
    """
    import torch

    from prunekit.measure import measure_latency
    from prunekit.models.spec import parse_input_shape

    sizes = parse_input_shape(batch_sizes)
    thread_counts = parse_input_shape(threads)
    specs = [model, *(vs or [])]
    names = _runtime_names(runtime)
    models = [
        load_cli_model(
            spec,
            arch=arch,
            trust_pickle=trust_pickle,
            input_shape=input_shape,
            trust_code=trust_code,
            seed=seed,
        )
        for spec in specs
    ]
    example = models[0].example
    if not isinstance(example, torch.Tensor):
        raise ConfigError("bench times models that take one tensor; use prunekit.measure_latency for others")
    if names:
        _bench_runtimes(
            names, specs, [m.model for m in models], example, sizes, thread_counts, runs, warmup, json_path
        )
        return
    rows = []
    for batch in sizes:
        x = example[:1].expand(batch, *example.shape[1:]).contiguous()
        for count in thread_counts:
            base = None
            for spec, loaded in zip(specs, models, strict=True):
                stats = measure_latency(loaded.model, x, runs=runs, warmup=warmup, threads=count)
                base = base or stats.median_ms
                rows.append(
                    {
                        "model": spec,
                        "batch_size": batch,
                        "threads": count,
                        "median_ms": stats.median_ms,
                        "p90_ms": stats.p90_ms,
                        "throughput_per_s": 1000.0 * batch / stats.median_ms,
                        "speedup_vs_model": base / stats.median_ms,
                    }
                )
    write_json(json_path, {"rows": rows, "input_shape": list(example.shape[1:]), "seed": seed})
    table = Table(title="prunekit bench (median of timed runs)")
    for column in ("model", "batch", "threads", "median ms", "p90 ms", "samples/s", f"speedup vs {model}"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(
            row["model"],
            str(row["batch_size"]),
            str(row["threads"]),
            f"{row['median_ms']:.2f}",
            f"{row['p90_ms']:.2f}",
            f"{row['throughput_per_s']:.1f}",
            f"{row['speedup_vs_model']:.2f}x",
        )
    console.print(table)


def _runtime_names(value: str | None) -> list[str]:
    """The runtimes of ``--runtime``, each known and installed (else one error line naming the extra)."""
    from prunekit.deploy.runtimes import get_runtime

    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    for name in names:
        get_runtime(name).require()
    return names


def _bench_runtimes(
    names: list[str],
    specs: list[str],
    models: list[Any],
    example: Any,
    sizes: tuple[int, ...],
    thread_counts: tuple[int, ...],
    runs: int,
    warmup: int,
    json_path: Path | None,
) -> None:
    """``bench --runtime``: one table, every runtime x model x batch x threads, speedup vs the dense model."""
    import tempfile

    from prunekit.deploy.runtimes.bench import bench_runtime

    labels: dict[str, Any] = {}
    for index, (spec, net) in enumerate(zip(specs, models, strict=True)):
        labels[spec if spec not in labels else f"{spec} [{index}]"] = net
    reference = list(labels)[1 if len(labels) > 1 else 0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-") as work:
        for name in names:
            for batch in sizes:
                x = example[:1].expand(batch, *example.shape[1:]).contiguous()
                rows += bench_runtime(
                    name,
                    labels,
                    x,
                    work,
                    reference=reference,
                    threads=thread_counts,
                    runs=runs,
                    warmup=warmup,
                )
    write_json(json_path, {"rows": rows, "reference": reference, "input_shape": list(example.shape[1:])})
    table = Table(title=f"prunekit bench --runtime (median of timed runs; speedup = {reference} ms / ms)")
    for column in ("runtime", "model", "batch", "threads", "median ms", "p90 ms", "speedup", "agreement"):
        table.add_column(column, justify="left" if column in ("runtime", "model", "agreement") else "right")
    for row in rows:
        table.add_row(
            row["runtime"],
            row["model"],
            str(row["batch_size"]),
            str(row["threads"]),
            f"{row['median_ms']:.2f}",
            f"{row['p90_ms']:.2f}",
            f"{row['speedup']:.2f}x",
            _agreement_text(row["agreement"]),
        )
    console.print(table)


def _agreement_text(agreement: dict) -> str:
    from prunekit.deploy.runtimes import Agreement

    return Agreement(**agreement).summary()
