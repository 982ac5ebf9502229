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
    TrustCodeOpt,
    TrustPickleOpt,
    app,
    console,
    load_cli_model,
    writable,
    write_json,
)
from prunekit.errors import ConfigError

OutDirOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        metavar="DIR",
        help="Checkpoint directory to write.",
        file_okay=False,
        show_default=False,
        callback=writable,
    ),
]


@app.command()
def export(
    model: ModelArg,
    onnx: Annotated[
        Path,
        typer.Option(
            "--onnx",
            metavar="FILE",
            help="ONNX file to write.",
            dir_okay=False,
            show_default=False,
            callback=writable,
        ),
    ],
    int8: Annotated[
        str | None,
        typer.Option("--int8", help="Also write FILE.int8.onnx: dynamic, or static (needs --calib)."),
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
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Export MODEL to ONNX, verified against PyTorch with onnxruntime; optionally quantize it to INT8."""
    if int8 not in (None, "dynamic", "static"):
        raise ConfigError(f"--int8 must be dynamic or static, got {int8!r}")
    if int8 == "static" and calib is None:
        raise ConfigError("--int8 static needs --calib FILE with representative inputs")
    if calib is not None and int8 != "static":
        raise ConfigError("--calib is only used with --int8 static")
    from prunekit.deploy import export_onnx, quantize_onnx

    loaded = load_cli_model(
        model, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, trust_code=trust_code
    )
    batches = _calibration_batches(calib, loaded.example) if calib is not None else None
    exported = export_onnx(
        loaded.model, loaded.example, onnx, verify=not no_verify, dynamic_batch=not static_batch
    )
    data: dict[str, Any] = {"export": exported.to_dict()}
    console.print(
        f"wrote {onnx}: {exported.size_bytes:,} bytes, {exported.initializer_params:,} weights "
        f"(model has {exported.model_params:,})"
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
    write_json(json_path, data)


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
def save(
    model: ModelArg,
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
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
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
    loaded = load_cli_model(
        model, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, trust_code=trust_code
    )
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
        metadata={"input_shape": list(loaded.shape), "source": model},
    )
    write_json(json_path, saved.to_dict())
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
    loaded = load_cli_model(
        str(checkpoint), arch=None, trust_pickle=False, input_shape=input_shape, trust_code=trust_code
    )
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
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Latency and throughput of MODEL (and each --vs model) for every batch size and thread count.

    Every model gets the same random input (the first model's shape, or --input-shape) with the batch
    dimension replaced; ratios are against MODEL in the same run.
    """
    import torch

    from prunekit.measure import measure_latency
    from prunekit.models.spec import parse_input_shape

    sizes = parse_input_shape(batch_sizes)
    thread_counts = parse_input_shape(threads)
    specs = [model, *(vs or [])]
    models = [
        load_cli_model(
            spec, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, trust_code=trust_code
        )
        for spec in specs
    ]
    example = models[0].example
    if not isinstance(example, torch.Tensor):
        raise ConfigError("bench times models that take one tensor; use prunekit.measure_latency for others")
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
    write_json(json_path, {"rows": rows, "input_shape": list(example.shape[1:])})
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
