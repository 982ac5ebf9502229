"""``prunekit export | save | load | bench``: the last mile, from the shell."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from prunekit._inputs import at_batch, batch_size_of, flatten_tensors, input_shapes
from prunekit.cli._common import (
    InputShapeOpt,
    JsonOpt,
    ModelSource,
    OutDirOpt,
    TrustCodeOpt,
    app,
    console,
    model_command,
    new_output,
    writable,
    write_json,
)
from prunekit.cli.report import ReportOpt, write_report
from prunekit.errors import ConfigError, ExportError

CalibFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--calib",
        metavar="FILE",
        help="Representative inputs, a .npy/.npz/.pt tensor of samples (first dim): --int8 static calibrates "
        "on them; export compares INT8 with fp32 on them (with --int8 dynamic too).",
        dir_okay=False,
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
    calib: CalibFileOpt = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the onnxruntime comparison.")] = False,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Fix the batch dimension.")] = False,
    json_path: JsonOpt = None,
) -> None:
    """Export MODEL for a runtime (ONNX, OpenVINO, TFLite, NCNN), checked against PyTorch; optionally INT8."""
    if int8 not in (None, "dynamic", "static"):
        raise ConfigError(f"--int8 must be dynamic or static, got {int8!r}")
    if int8 == "static" and calib is None:
        raise ConfigError("--int8 static needs --calib FILE with representative inputs")
    if calib is not None and int8 is None:
        raise ConfigError("--calib is only used with --int8 (static: calibration; dynamic: the comparison)")
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
        on = "--calib" if batches is not None else "the example input (seeded random, the export's shape)"
        quantized = quantize_onnx(
            onnx,
            int8_path,
            mode=int8,
            calibration=batches if int8 == "static" else None,
            compare_on=batches if batches is not None else [loaded.example],
        )
        data["int8"] = quantized.to_dict() | {"compared_on": on}
        console.print(
            f"wrote {int8_path}: {quantized.bytes_after:,} bytes ({quantized.ratio:.2f}x smaller); INT8 vs "
            f"fp32 on {on}: relative error {quantized.output_rel_err:.3f}, "
            f"cosine {quantized.output_cosine:.4f}"
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
    from prunekit.progress import progress_bar

    runtime = runtime_for_format(fmt)
    if calib is not None and int8 != "static":
        raise ConfigError(
            "--calib with --format is for --int8 static (the comparison is on MODEL's example input)"
        )
    runtime.check_export_args(int8, calib)
    runtime.require()
    loaded = source.load()
    batches = _calibration_batches(calib, loaded.example) if calib is not None else None
    with progress_bar(f"{runtime.name}: convert, compare", 2) as bar:
        artifact = runtime.export(
            loaded.model, loaded.example, out, opset=opset, int8=int8, calibration=batches
        )
        bar.advance()
        with eval_mode(loaded.model), torch.no_grad():
            want = flatten_tensors(call_model(loaded.model, loaded.example))
        got = runtime.load(artifact, threads=1).run(arrays(loaded.example))
        agreement = compare(want, got, int8=int8 is not None, tolerance=runtime.tolerance)
        bar.advance()
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
    shapes = [list(t.shape) for t in flatten_tensors(outputs)]
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


TENSOR_ONLY = (".safetensors", ".pksparse")  # file formats that cannot hold a pickled module
VsArchOpt = Annotated[
    str | None,
    typer.Option(
        "--vs-arch",
        help="For a --vs state_dict file: torchvision:NAME or module.path:factory that builds it "
        "(default: --arch).",
    ),
]


@app.command()
@model_command
def bench(
    source: ModelSource,
    vs: Annotated[
        list[str] | None,
        typer.Option(
            "--vs",
            metavar="OTHER",
            help="Another model to compare (repeatable); speedups are against the first one (the dense "
            "model).",
        ),
    ] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8",
    threads: Annotated[str, typer.Option("--threads", help="Comma-separated intra-op thread counts.")] = "1",
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per setting.")] = 30,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs first.")] = 5,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="Comma-separated runtimes (onnxruntime, openvino, litert, ncnn): time each model there.",
        ),
    ] = None,
    int8: Annotated[
        str | None,
        typer.Option(
            "--int8",
            help="With --runtime: also time each model's INT8 form (dynamic, or static with --calib), its "
            "speedup against the fp32 reference.",
        ),
    ] = None,
    calib: CalibFileOpt = None,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            help="For a state_dict file: torchvision:NAME or module.path:factory that builds it (MODEL's, "
            "and the --vs files' unless --vs-arch is given).",
        ),
    ] = None,
    vs_arch: VsArchOpt = None,
    json_path: JsonOpt = None,
    report_dir: ReportOpt = None,
) -> None:
    """Latency and throughput of MODEL (and each --vs model) for every batch size and thread count.

    Every model gets the same random input (the first model's shape, or --input-shape) with the batch
    dimension replaced. Speedup = the reference's median ms / the row's, in the same run and setting; the
    reference is the first --vs model (the dense one: it reads 1.00x, a faster pruned MODEL above 1x), or
    MODEL alone. A row whose p90 is over 1.5x its median is marked noisy (--json "noisy") and named in a
    warning: its median is not to be trusted; use more --runs or an idle machine. With --runtime and --int8
    each model's INT8 form gets its own row ("MODEL int8"), timed against the same fp32 reference.
    """

    from prunekit.models.spec import parse_input_shape
    from prunekit.progress import progress_bar

    sizes = parse_input_shape(batch_sizes)
    thread_counts = parse_input_shape(threads)
    specs = [source.spec, *(vs or [])]
    arches = _bench_arches(specs, arch, vs_arch, source.trust_pickle)
    names = _runtime_names(runtime)
    _bench_int8_options(names, int8, calib)
    models = [
        _bench_model(index, replace(source, spec=spec, arch=side_arch), vs_arch is not None)
        for index, (spec, side_arch) in enumerate(zip(specs, arches, strict=True))
    ]
    example = models[0].example
    labels = _bench_labels(specs)
    reference = labels[1 if len(labels) > 1 else 0]
    result = {"reference": reference, "input_shape": input_shapes(example), "seed": source.seed}
    if names:
        calibration = _calibration_batches(calib, example) if calib is not None else None
        rows = _bench_runtimes(
            names,
            dict(zip(labels, [m.model for m in models], strict=True)),
            reference,
            example,
            sizes,
            thread_counts,
            runs,
            warmup,
            int8=int8,
            calibration=calibration,
        )
        write_json(json_path, {"rows": rows} | result)
        write_report(report_dir, {"rows": rows} | result)
        return
    rows = []
    with progress_bar("bench", len(sizes) * len(thread_counts) * len(models)) as bar:
        for batch in sizes:
            x = at_batch(example, batch)
            for count in thread_counts:
                rows += _bench_setting(labels, models, reference, x, count, runs, warmup, bar)
    write_json(json_path, {"rows": rows} | result)
    table = Table(title=f"prunekit bench (median of timed runs; speedup = {reference} ms / ms)")
    for column in ("model", "batch", "threads", "median ms", "p90 ms", "samples/s", "speedup"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(
            row["model"],
            str(row["batch_size"]),
            str(row["threads"]),
            f"{row['median_ms']:.2f}",
            f"{row['p90_ms']:.2f}",
            f"{row['throughput_per_s']:.1f}",
            f"{row['speedup']:.2f}x",
        )
    console.print(table)
    _noisy_warning(rows)
    write_report(report_dir, {"rows": rows} | result)


def _bench_setting(
    labels: list[str],
    models: list[Any],
    reference: str,
    x: Any,
    threads: int,
    runs: int,
    warmup: int,
    bar: Any,
) -> list[dict]:
    """One row per model at one batch size and thread count, speedups against ``reference``."""
    from prunekit.measure import measure_latency

    setting = []
    for label, loaded in zip(labels, models, strict=True):
        stats = measure_latency(loaded.model, x, runs=runs, warmup=warmup, threads=threads)
        setting.append(
            {
                "model": label,
                "batch_size": batch_size_of(x),
                "threads": threads,
                "median_ms": stats.median_ms,
                "p90_ms": stats.p90_ms,
                "noisy": stats.noisy,
                "throughput_per_s": 1000.0 * batch_size_of(x) / stats.median_ms,
            }
        )
        bar.advance()
    base = next(r for r in setting if r["model"] == reference)["median_ms"]
    return [r | {"speedup": base / r["median_ms"]} for r in setting]


def _bench_arches(
    specs: list[str], arch: str | None, vs_arch: str | None, trust_pickle: bool
) -> list[str | None]:
    """The architecture each side is built with: ``--arch`` for MODEL, ``--vs-arch`` (else ``--arch``) for
    the --vs models; only a file takes one. One error line for a state_dict side without one, or an option
    no side uses."""
    from prunekit.models.files import is_file_spec

    is_file = [is_file_spec(spec) for spec in specs]
    fallback = vs_arch if vs_arch is not None else arch
    arches = [arch if is_file[0] else None] + [fallback if f else None for f in is_file[1:]]
    for index, (spec, side_arch) in enumerate(zip(specs, arches, strict=True)):
        path = Path(spec)
        # a state_dict for sure: without --trust-pickle, or in a format that holds only tensors
        if path.is_file() and side_arch is None and (not trust_pickle or path.suffix in TENSOR_ONLY):
            side, option = ("MODEL", "--arch") if index == 0 else ("--vs", "--vs-arch")
            raise ConfigError(
                f"{side} {spec} is a state_dict file: give {option} torchvision:NAME or "
                "module.path:factory that builds it (--arch alone serves both sides)"
            )
    if arch is not None and not is_file[0] and (vs_arch is not None or not any(is_file[1:])):
        raise ConfigError(f"--arch is for a state_dict file, but MODEL {specs[0]!r} is not one")
    if vs_arch is not None and not any(is_file[1:]):
        raise ConfigError("--vs-arch is for a --vs state_dict file, but no --vs model is a file")
    return arches


def _bench_model(index: int, side: ModelSource, vs_arch_given: bool) -> Any:
    """One side of ``bench``, loaded; a --vs file's load error names the option its architecture came from."""
    from prunekit.errors import ModelLoadError

    try:
        return side.load()
    except ModelLoadError as err:
        if index == 0 or side.arch is None or not vs_arch_given:
            raise
        raise ModelLoadError(f"--vs {side.spec}: {str(err).replace('--arch', '--vs-arch')}") from err


def _bench_labels(specs: list[str]) -> list[str]:
    """A label per model: its spec, with ``[index]`` after a spec that came before."""
    labels: list[str] = []
    for index, spec in enumerate(specs):
        labels.append(spec if spec not in labels else f"{spec} [{index}]")
    return labels


def _noisy_warning(rows: list[dict]) -> None:
    """One ``warning:`` line naming the noisy rows (p90 over 1.5x the median), if any."""
    from prunekit.measure.latency import NOISY_P90_RATIO

    noisy = [r for r in rows if r["noisy"]]
    if not noisy:
        return
    where = "; ".join(
        " ".join(
            ([r["runtime"]] if "runtime" in r else [])
            + [r["model"], f"batch {r['batch_size']}", f"threads {r['threads']}"]
        )
        for r in noisy
    )
    console.print(
        f"warning: noisy timings (p90 over {NOISY_P90_RATIO:g}x the median) in {len(noisy)} of {len(rows)} "
        f"rows: {where}; their medians are unreliable: use more --runs or an idle machine",
        markup=False,
        highlight=False,
    )


def _bench_int8_options(names: list[str], int8: str | None, calib: Path | None) -> None:
    """Refuse --int8 / --calib that cannot apply (no --runtime, an unknown mode, static without --calib, a
    runtime without that mode) before any model is loaded."""
    from prunekit.deploy.runtimes import get_runtime

    if int8 is None:
        if calib is not None:
            raise ConfigError("--calib is for --int8 static")
        return
    if not names:
        raise ConfigError("--int8 times runtime INT8 models: give --runtime too")
    if int8 not in ("dynamic", "static"):
        raise ConfigError(f"--int8 must be dynamic or static, got {int8!r}")
    if (int8 == "static") != (calib is not None):
        raise ConfigError("--int8 static needs --calib FILE; --calib is for --int8 static only")
    for name in names:
        get_runtime(name).check_export_args(int8, calib)  # a runtime without that INT8 mode


def _runtime_names(value: str | None) -> list[str]:
    """The runtimes of ``--runtime``, each known and installed (else one error line naming the extra)."""
    from prunekit.deploy.runtimes import get_runtime

    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    for name in names:
        get_runtime(name).require()
    return names


def _bench_runtimes(
    names: list[str],
    models: dict[str, Any],
    reference: str,
    example: Any,
    sizes: tuple[int, ...],
    thread_counts: tuple[int, ...],
    runs: int,
    warmup: int,
    *,
    int8: str | None = None,
    calibration: list[Any] | None = None,
) -> list[dict]:
    """``bench --runtime``: one table, every runtime x model (x INT8 form) x batch x threads, speedup vs
    ``reference``; the rows."""
    import tempfile

    from prunekit.deploy.runtimes.bench import bench_runtime
    from prunekit.progress import progress_bar

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="prunekit-bench-") as work,
        progress_bar("bench --runtime", len(names) * len(sizes)) as bar,
    ):
        for name in names:
            for batch in sizes:
                x = at_batch(example, batch)
                rows += bench_runtime(
                    name,
                    models,
                    x,
                    work,
                    reference=reference,
                    threads=thread_counts,
                    runs=runs,
                    warmup=warmup,
                    int8=int8,
                    calibration=calibration,
                )
                bar.advance()
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
    _noisy_warning(rows)
    return rows


def _agreement_text(agreement: dict) -> str:
    from prunekit.deploy.runtimes import Agreement

    return Agreement(**agreement).summary()
