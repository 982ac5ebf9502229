"""``prunekit prune`` and ``prunekit check``: structural pruning from the shell (exact, or approximate with
``--stream``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from prunekit.cli._common import (
    CalibBatchOpt,
    CalibDataOpt,
    JsonOpt,
    ModelSource,
    app,
    before_after_table,
    console,
    model_command,
    new_output,
    refuse_file_suffix,
    write_json,
)
from prunekit.cli.report import ReportOpt, write_report
from prunekit.config import PruneConfig
from prunekit.errors import ConfigError
from prunekit.models.data import load_batches

RatioOpt = Annotated[
    float, typer.Option("--ratio", help="Fraction of each group's channels to remove, in [0, 1).")
]
CriterionOpt = Annotated[str, typer.Option("--criterion", help="Importance criterion: l1, l2, ...")]
ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope",
        help="local (per group) or global (ranked together); default: local, global with --target-*.",
    ),
]
IgnoreOpt = Annotated[
    list[str] | None,
    typer.Option("--ignore", metavar="NAME", help="Module whose channels stay (repeatable)."),
]
RoundToOpt = Annotated[
    int | None, typer.Option("--round-to", help="Keep every pruned width a multiple of this.")
]
MaxRatioOpt = Annotated[
    float, typer.Option("--max-ratio", help="Never remove more than this fraction of any group.")
]


#: ``--stream KIND`` of ``prune`` and ``check``: the ``stream=`` of :class:`prunekit.PruneConfig` per kind
STREAM_KINDS = {
    "direct": "activation",
    "direct-output": "output",
    "direct-weighted": "weighted",
    "slicegpt": "slicegpt",
}


def stream_kind(value: str | None) -> str | None:
    """Validate ``--stream``: one of :data:`STREAM_KINDS` (or None)."""
    if value is not None and value not in STREAM_KINDS:
        raise typer.BadParameter(
            f"{value!r} is not a stream kind: give --stream {' or --stream '.join(STREAM_KINDS)}"
        )
    return value


StreamKindOpt = Annotated[
    str | None,
    typer.Option(
        "--stream",
        metavar="[KIND]",
        help="Also cut LayerNorm/RMSNorm-ed residual streams, ranked on --data: 'direct' (by each norm's "
        "input energy; the default of a bare --stream), 'direct-output' (by the norms' output energy, "
        "their scale applied), 'direct-weighted' (that times the column norms of the layers reading the "
        "stream) or 'slicegpt' (SliceGPT's rotation first; transformers Llama/Qwen2/Mistral, "
        "torchvision ViT). The result is approximate: its relative error against MODEL is reported.",
        callback=stream_kind,
    ),
]


def prune_config(
    ratio: float,
    criterion: str,
    scope: str | None,
    ignore: list[str] | None,
    round_to: int | None,
    max_ratio: float,
    **more: Any,
) -> PruneConfig:
    """The :class:`prunekit.PruneConfig` of the shared structural options (``more``: target, data)."""
    return PruneConfig(
        ratio=ratio, criterion=criterion, scope=scope, ignore=tuple(ignore or ()), round_to=round_to,
        max_ratio=max_ratio, **more,
    )  # fmt: skip


@app.command()
@model_command
def prune(
    source: ModelSource,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Checkpoint directory to write (safetensors + plan; `prunekit load DIR`), or a file in the "
            "model family's own format (FILE.pt for an ultralytics model, as `prunekit yolo prune`).",
            show_default=False,
            callback=new_output,
        ),
    ],
    ratio: RatioOpt = 0.5,
    criterion: CriterionOpt = "l2",
    scope: ScopeOpt = None,
    ignore: IgnoreOpt = None,
    round_to: RoundToOpt = None,
    max_ratio: MaxRatioOpt = 0.9,
    target_macs: Annotated[
        float | None, typer.Option("--target-macs", help="Prune until MACs are this fraction of MODEL's.")
    ] = None,
    target_params: Annotated[
        float | None, typer.Option("--target-params", help="Prune until params are this fraction.")
    ] = None,
    target_latency_ms: Annotated[
        float | None,
        typer.Option(
            "--target-latency-ms",
            help="Prune until the median latency (ms, batch of --input-shape) is at most this: on --runtime, "
            "else eager PyTorch on this CPU.",
        ),
    ] = None,
    target_speedup: Annotated[
        float | None,
        typer.Option(
            "--target-speedup",
            help="Prune until the measured speedup over MODEL (dense ms / pruned ms) is this (> 1): on "
            "--runtime, else eager PyTorch on this CPU.",
        ),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="With --target-latency-ms/--target-speedup: time on this runtime (onnxruntime, openvino, "
            "litert, ncnn; a per-group latency table, cached, then end-to-end checks).",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="Intra-op threads of every timing of --target-latency-ms/--target-speedup (default 1, as "
            "`prunekit bench`).",
        ),
    ] = None,
    data: CalibDataOpt = None,
    batch_size: CalibBatchOpt = 32,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            metavar="YAML",
            help="A recipe (method, criterion, ratio/target, schedule, fine-tune); replaces the options.",
            dir_okay=False,
        ),
    ] = None,
    json_path: JsonOpt = None,
    report_dir: ReportOpt = None,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Skip the masked-reference comparison (one forward); shapes, attributes still checked.",
        ),
    ] = False,
    stream: StreamKindOpt = None,
) -> None:
    """Physically remove channels, neurons and heads from MODEL and save the result to --out.

    With a --target-* option the ratio is searched so the pruned model meets the target (scope global unless
    --scope says otherwise). With --recipe the recipe decides everything; --data then also feeds its
    fine-tuning.
    """
    from prunekit.models.spec import file_format_for
    from prunekit.structured.target import target_from_options

    target = target_from_options(
        macs=target_macs,
        params=target_params,
        latency_ms=target_latency_ms,
        speedup=target_speedup,
        runtime=runtime,
        threads=threads,
    )
    verify = "shapes" if no_verify else None
    stream_options(stream, data, None)
    config = prune_config(
        ratio, criterion, scope, ignore, round_to, max_ratio, target=target, verify=verify,
        stream=STREAM_KINDS[stream] if stream is not None else False,
    )  # fmt: skip
    model, seed = source.spec, source.seed
    file_format = file_format_for(model, out) if recipe is None and data is None else None
    if file_format is not None:
        if target is not None:
            raise ConfigError(
                f"--target-* is not supported when writing {file_format.name}; use --ratio, or --out DIR "
                "for a prunekit checkpoint"
            )
        result = file_format.prune(model, out, config, seed=seed)
        write_json(json_path, result.to_dict() | {"checkpoint": str(out), "seed": seed})
        write_report(report_dir, result.to_dict())
        console.print(before_after_table(f"prunekit prune {model}", result))
        console.print(f"wrote {out} ({file_format.name})")
        return None
    refuse_file_suffix("--out", out)
    from prunekit.deploy import save
    from prunekit.recipe import load_recipe, run_recipe
    from prunekit.structured import prune as prune_model

    plan_recipe = load_recipe(recipe) if recipe is not None else None
    batches = load_batches(data, batch_size) if data is not None else None
    loaded = source.load()
    if plan_recipe is not None:
        ran = run_recipe(plan_recipe, loaded.model, loaded.example, train_data=batches, calib_data=batches)
        plans, report = ran.plans, ran.to_dict()
    else:
        result = prune_model(loaded.model, loaded.example, config.replace(data=batches))
        plans, report = [result.plan], result.to_dict()
    saved = save(
        loaded.model,
        out,
        spec=loaded.spec,
        plan=[*loaded.plans, *plans],
        metadata={"input_shape": list(loaded.shape), "source": model},
    )
    write_json(json_path, report | {"checkpoint": saved.to_dict(), "seed": seed})
    write_report(report_dir, report | {"checkpoint": saved.to_dict()})
    if plan_recipe is not None:
        console.print(
            f"ran recipe {recipe} ({plan_recipe.method}); wrote {out} (reload with `prunekit load {out}`)"
        )
        return
    console.print(before_after_table(f"prunekit prune {model}", result))
    if result.target is not None and "reached_ms" in result.target:
        console.print(timed_target_line(result.target))
    if result.approx_error is not None:
        console.print(
            f"approximate cut ({'; '.join(result.plan.approximate)}): rel. error {result.approx_error:.3g}"
        )
    console.print(
        f"removed {result.removed_units:,} channels in {result.n_pruned_groups} of {result.n_groups} groups; "
        f"wrote {out} (reload with `prunekit load {out}`)"
    )


def timed_target_line(info: dict[str, Any]) -> str:
    """What a latency/speedup search reached: ms and speedup requested vs reached, runtime, threads.

    >>> timed_target_line({"requested_ms": 5.0, "reached_ms": 4.9, "requested_speedup": 2.0,
    ...     "reached_speedup": 2.04, "runtime": "onnxruntime", "threads": 1, "met": True})
    'latency 4.9 ms (requested 5 ms), speedup 2.04x (requested 2.00x) on onnxruntime, 1 thread: met'
    """
    plural = "" if info["threads"] == 1 else "s"
    verdict = "met" if info["met"] else "not met"
    if "within_tolerance" in info and not info["met"]:
        verdict = f"{verdict} (within {info['tolerance']:.0%})" if info["within_tolerance"] else verdict
    return (
        f"latency {info['reached_ms']:.3g} ms (requested {info['requested_ms']:.3g} ms), speedup "
        f"{info['reached_speedup']:.2f}x (requested {info['requested_speedup']:.2f}x) on {info['runtime']}, "
        f"{info['threads']} thread{plural}: {verdict}"
    )


def stream_options(stream: str | None, data: str | None, max_rel_err: float | None) -> None:
    """Refuse stream options that cannot go together (ConfigError: one line, exit 2)."""
    if stream is not None and data is None:
        raise ConfigError(
            f"--stream {stream} ranks the stream's channels on calibration data: pass --data DATA"
        )
    if max_rel_err is not None and stream is None:
        raise ConfigError("--max-rel-err bounds an approximate check: it needs --stream direct|slicegpt")
    if max_rel_err is not None and not max_rel_err >= 0:
        raise ConfigError(f"--max-rel-err must be >= 0, got {max_rel_err}")


@app.command()
@model_command
def check(
    source: ModelSource,
    ratio: RatioOpt = 0.5,
    criterion: CriterionOpt = "l2",
    scope: ScopeOpt = None,
    ignore: IgnoreOpt = None,
    round_to: RoundToOpt = None,
    max_ratio: MaxRatioOpt = 0.9,
    stream: StreamKindOpt = None,
    data: CalibDataOpt = None,
    batch_size: CalibBatchOpt = 32,
    max_rel_err: Annotated[
        float | None,
        typer.Option(
            "--max-rel-err",
            metavar="X",
            help="With --stream: exit 1 when the approximate result's relative error is above X.",
        ),
    ] = None,
    json_path: JsonOpt = None,
    report_dir: ReportOpt = None,
    compare_at: Annotated[
        str | None,
        typer.Option(
            "--compare-at",
            help="compare the outputs of this submodule instead of the model's (e.g. a detector's 'head')",
        ),
    ] = None,
) -> None:
    """Report what can be pruned in MODEL, what is pinned and why, and whether the cut is exact.

    MODEL is not changed and nothing but --json is written. With --stream KIND --data DATA the residual
    streams are cut too: such a cut is never exact; it is compared with MODEL itself and reported as
    approximate, with its relative error max|y - y0| / max|y0|.

    Exit codes:
    0 exact, or approximate (its error at most --max-rel-err when that is given);
    1 not exact (the pruned copy does not match the masked reference: please report it, it is a bug), an
    approximate cut whose outputs changed shape or are not finite, or an error above --max-rel-err;
    2 bad input (one error: line).
    """
    from prunekit.structured import check as check_model

    stream_options(stream, data, max_rel_err)
    batches = load_batches(data, batch_size) if data is not None else None
    config = prune_config(
        ratio, criterion, scope, ignore, round_to, max_ratio, data=batches,
        stream=STREAM_KINDS[stream] if stream is not None else False,
    )  # fmt: skip
    loaded = source.load()
    report = check_model(loaded.model, loaded.example, config, compare_at=compare_at)
    approximate = list(report.plan.approximate)
    extra = {"stream": stream, "approximate": approximate, "max_rel_err": max_rel_err, "seed": source.seed}
    write_json(json_path, report.to_dict() | extra)
    write_report(report_dir, report.to_dict() | extra)
    if report.pinned:
        pinned = Table(title="pinned groups (never pruned)")
        for column in ("group", "width", "members", "why"):
            pinned.add_column(column)
        for row in report.pinned:
            pinned.add_row(str(row["id"]), str(row["width"]), ", ".join(row["members"]), row["reasons"][0])
        console.print(pinned)
    console.print(
        f"{report.n_prunable_groups} of {report.n_groups} groups prunable; at ratio {ratio}: "
        f"MACs x{report.macs_ratio:.3f}, params x{report.params_ratio:.3f}; {verdict(report, max_rel_err)}"
    )
    check_notes(report)
    too_far = report.status == "approximate" and max_rel_err is not None and report.rel_err > max_rel_err
    if report.status == "failed" or too_far:
        raise typer.Exit(1)


def verdict(report: Any, max_rel_err: float | None) -> str:
    """What ``check`` says of ``report``: exact, approximate (its error against ``max_rel_err``) or not."""
    if report.plan.approximate:
        why = "; ".join(report.plan.approximate)
        if report.status != "approximate":
            return (
                f"[red]failed[/red] (approximate cut, {why}: outputs differ in shape or are not finite, "
                f"relative err {report.rel_err:.2e})"
            )
        bound = ""
        if max_rel_err is not None:
            above = report.rel_err > max_rel_err
            bound = f", [red]above[/red] --max-rel-err {max_rel_err:g}" if above else f", <= {max_rel_err:g}"
        return f"[yellow]approximate[/yellow] ({why}: relative err {report.rel_err:.2e} against MODEL{bound})"
    word = "[green]exact[/green]" if report.ok else "[red]NOT exact[/red]"
    return (
        f"{word} (relative err {report.rel_err:.2e}, max abs err {report.max_abs_err:.2e}, tolerance "
        f"{report.tolerance:.1e})"
    )


def check_notes(report: Any) -> None:
    """The warnings ``check`` prints under its verdict (tiny or empty outputs, replayed decisions)."""
    if report.tiny_outputs:
        console.print(
            "[yellow]the outputs are tiny[/yellow] (every max |output| < 1e-6: an untrained model?): "
            "they were compared relative to their own scale, but such a model may leave channels unused; "
            "check a trained model or compare a submodule with --compare-at"
        )
    if report.ok and report.n_values == 0:
        console.print(
            "[yellow]every compared output was empty[/yellow] (a detector that kept no box above its score "
            "threshold?): nothing was compared; compare a submodule with --compare-at (e.g. its head)"
        )
    if report.replayed:
        ops = ", ".join(sorted({r.split(" (")[0] for r in report.replayed}))
        console.print(
            f"{len(report.replayed)} near-tie decisions ({ops}) took the masked reference's answer: their "
            "inputs agreed within the tolerance (see --json 'replayed')"
        )
    if report.status == "failed" and report.compared_at is None and None in report.plan.output_shapes:
        console.print(
            "the model's outputs are sized by the data (post-processing such as top-k or NMS): two equal "
            "networks may still keep different boxes; compare before it with --compare-at (e.g. its head)"
        )
