"""The ``prunekit`` command line: parse, call the library, print with rich, write ``--json``.

    prunekit --version
    prunekit demo --out out/demo --json out/demo/demo.json
    prunekit analyze torchvision:resnet18 --no-latency --json resnet18.json
    prunekit sparsify torchvision:resnet18 --sparsity 0.9 --out resnet18-sparse.safetensors
    prunekit sparsify weights.pt --arch mypkg.models:build --pattern 2:4 --out weights-24.pt

Every :class:`~prunekit.errors.PruneError` and every usage error ends the program with one line
``error: <message>`` on stderr and exit code 2, before any file is written. Library imports happen inside the
commands, so ``--version`` and ``--help`` start fast and optional extras are never imported up front.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from prunekit.errors import PruneError

try:  # recent typer carries its own copy of click, whose usage errors derive from TyperException
    from typer import TyperException as _UsageError
except ImportError:  # older typer uses click itself
    from click import ClickException as _UsageError

console = Console()
PIPE_WIDTH = 160


class _OneLineErrors(TyperGroup):
    """Turn PruneError and click usage errors into ``error: <message>`` on stderr, exit 2, no traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as err:
            typer.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except PruneError as err:
            typer.echo(f"error: {err}", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="prunekit",
    cls=_OneLineErrors,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Options shared by the commands that load a model.
ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="torchvision:NAME, module.path:factory, or a .pt/.pth/.bin/.safetensors file.",
        show_default=False,
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch", help="For a state_dict file: torchvision:NAME or module.path:factory that builds it."
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow unpickling a whole module from MODEL (runs code from the file)."
    ),
]
JsonOpt = Annotated[
    Path | None,
    typer.Option("--json", metavar="PATH", help="Also write the result as JSON to PATH.", dir_okay=False),
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"prunekit {package_version('prunekit')}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Prune trained PyTorch models: unstructured masks and exact structural removal, measured."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH  # tables piped to a file or a CI log are not cut at 80 columns
    # Like `python -m`: let module.path:factory specs name modules in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option("--out", metavar="DIR", help="Write the models and figures to DIR.")
    ] = None,
    json_path: JsonOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="A small budget, for smoke tests.")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs of the dense CNN.")] = None,
    finetune_epochs: Annotated[
        int | None, typer.Option("--finetune-epochs", help="Fine-tuning epochs after pruning.")
    ] = None,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", help="Sparsity of the pruned stage.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for data split, init and training.")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op CPU threads.")] = None,
) -> None:
    """Train a small CNN on bundled handwritten digits, prune it, and show what each stage costs and saves.

    Options left out take run_demo's defaults (90% sparsity, seed 0, 1 thread).
    """
    from prunekit.demo import run_demo

    given = dict(
        epochs=epochs, finetune_epochs=finetune_epochs, sparsity=sparsity, seed=seed, threads=threads
    )
    options = {name: value for name, value in given.items() if value is not None}
    run_demo(out=out, json_path=json_path, quick=quick, console=console, **options)


@app.command()
def analyze(
    model: ModelArg,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            metavar="N,C,H,W",
            help="Shape of the random example input; torchvision classifiers default to 1,3,224,224.",
        ),
    ] = None,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip the latency measurement.")] = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs for the latency measurement.")] = 50,
    zstd_level: Annotated[
        int | None,
        typer.Option(
            "--zstd-level", help="zstd level of the compressed size [default: 19, slow on big models]."
        ),
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Per-layer parameters, non-zeros, sparsity and MACs of MODEL, plus its size and latency."""
    from prunekit.measure.profile import analyze as profile_model
    from prunekit.models.spec import check_forward, example_inputs_for, load_model, parse_input_shape
    from prunekit.report.tables import profile_table, summary_table

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    example = example_inputs_for(arch or model, shape)
    check_forward(net, example)
    size_options = {} if zstd_level is None else {"zstd_level": zstd_level}
    profile = profile_model(net, example, latency=not no_latency, runs=runs, **size_options)
    console.print(profile_table(profile))
    console.print(summary_table(profile, title=model))
    _write_json(json_path, profile.to_dict())


@app.command()
def sparsify(
    model: ModelArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Where to write the sparsified state_dict (.safetensors, else torch.save).",
            dir_okay=False,
            show_default=False,
        ),
    ],
    sparsity: Annotated[
        float | None,
        typer.Option("--sparsity", help="Fraction of weights to zero, in [0, 1); implied by an N:M pattern."),
    ] = None,
    pattern: Annotated[
        str, typer.Option("--pattern", help="unstructured, N:M (e.g. 2:4) or a block pattern.")
    ] = "unstructured",
    scope: Annotated[
        str, typer.Option("--scope", help="local (per layer) or global (across layers).")
    ] = "local",
    criterion: Annotated[str, typer.Option("--criterion", help="magnitude or random.")] = "magnitude",
    include: Annotated[
        list[str] | None, typer.Option("--include", metavar="NAME", help="Only these layers (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", metavar="NAME", help="Leave these layers dense (repeatable)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --criterion random.")] = 0,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    json_path: JsonOpt = None,
) -> None:
    """Zero weights of MODEL with masks, then write the result as a plain state_dict to --out."""
    from prunekit.models.spec import load_model
    from prunekit.sparse import remove_masks, sparsity_report
    from prunekit.sparse import sparsify as sparsify_model

    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    result = sparsify_model(
        net,
        sparsity,
        pattern=pattern,
        criterion=criterion,
        scope=scope,
        include=include or None,
        exclude=exclude or None,
        seed=seed,
    )
    report = sparsity_report(net)
    remove_masks(net)
    _atomic_write(out, lambda tmp: _save_state_dict(net, tmp, out.suffix))
    _write_json(json_path, result.to_dict())
    console.print(report)
    console.print(
        f"{result.pattern} {result.scope} sparsity {100 * result.sparsity:.2f}% "
        f"({result.pruned:,} of {result.numel:,} weights in {_plural(len(result.layers), 'layer')}); "
        f"wrote the state_dict to {out} (load it with --arch {_arch_hint(model, arch)})"
    )


# --- helpers ------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it into place in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() would (some writers use 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        text = json.dumps(data, indent=2) + "\n"
        _atomic_write(path, lambda tmp: tmp.write_text(text))


def _save_state_dict(net: Any, path: Path, suffix: str) -> None:
    """safetensors for a .safetensors name (save_model de-duplicates tied weights), else torch.save."""
    if suffix == ".safetensors":
        from safetensors.torch import save_model

        save_model(net, str(path))
    else:
        import torch

        torch.save(net.state_dict(), path)


def _arch_hint(model: str, arch: str | None) -> str:
    """The --arch that rebuilds the architecture of MODEL (the spec itself unless MODEL was a file)."""
    if arch is not None:
        return arch
    return "<the model's builder>" if Path(model).exists() else model


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
