"""What every ``prunekit`` command shares: the typer app, one-line errors, common options, safe writes.

Every :class:`~prunekit.errors.PruneError` and every usage error ends the program with one line
``error: <message>`` on stderr and exit code 2, before any file is written. Library imports happen inside the
commands, so ``--version`` and ``--help`` start fast and optional extras are never imported up front.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from prunekit._atomic import write_text
from prunekit.errors import ConfigError, PruneError
from prunekit.models.data import DATA_HELP

try:  # recent typer carries its own copy of click, whose usage errors derive from TyperException
    from typer import TyperException as _UsageError
except ImportError:  # older typer uses click itself
    from click import ClickException as _UsageError

console = Console()
PIPE_WIDTH = 160
MAX_INPUT_VALUES = 2**31  # an example input above this (8 GiB as float32) is refused before loading


INVOCATION: list[str] = []  # the arguments of the running command, for the reports that reproduce it


#: Options whose value may be left out, and the value a bare one means (click has no such option in typer).
OPTIONAL_VALUES = {"--stream": "direct"}


def with_optional_values(args: Sequence[str]) -> list[str]:
    """``args`` with the value of each bare :data:`OPTIONAL_VALUES` option written out.

    An option is bare when it is the last argument or the next one is an option (starts with ``-``).

    >>> with_optional_values(["prune", "m:f", "--stream", "--data", "d.pt"])
    ['prune', 'm:f', '--stream', 'direct', '--data', 'd.pt']
    >>> with_optional_values(["check", "m:f", "--stream", "slicegpt"])
    ['check', 'm:f', '--stream', 'slicegpt']
    """
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        bare = i + 1 == len(args) or args[i + 1].startswith("-")
        if arg in OPTIONAL_VALUES and bare:
            out.append(OPTIONAL_VALUES[arg])
    return out


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
        INVOCATION[:] = list(sys.argv[1:] if args is None else args)
        args = with_optional_values(INVOCATION)
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
        except (MemoryError, RuntimeError) as err:
            if not _out_of_memory(err):
                raise
            typer.echo(f"error: out of memory ({_first_line(err)}): use a smaller --input-shape", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _out_of_memory(err: BaseException) -> bool:
    """A failed allocation: MemoryError, torch.OutOfMemoryError (CUDA), or the CPU allocator's RuntimeError
    (it raises a plain RuntimeError whose message says "can't allocate memory")."""
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


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
        help="A family spec (torchvision:NAME, timm:NAME, hf:CONFIG, ultralytics:NAME.yaml, ...), "
        "module.path:factory, a .pt/.pth/.bin/.safetensors/.pksparse file or a prunekit checkpoint "
        "directory.",
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
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Allow a checkpoint directory's module.path:factory spec (imports and calls code it names).",
    ),
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        metavar="N,C,H,W",
        help="Shape of the random example input; torchvision classifiers default to 1,3,224,224.",
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of the random initialisation when MODEL is built from a spec (recorded in --json), so "
        "every run builds the same weights.",
    ),
]


def writable(param: typer.CallbackParam, value: Path | str | None) -> Path | str | None:
    """Option callback: refuse an output path that cannot be written, before the command does any work.

    The path's nearest existing ancestor must be a directory in which a file can be created (tried with a
    temporary file, removed at once: this also catches read-only mounts, where permission bits say yes).
    """
    if value is None:
        return value
    flag = "/".join(param.opts)
    target = Path(os.path.abspath(value))
    ancestor = target if target.is_dir() else target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot write {flag} {value}: {ancestor} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise ConfigError(
            f"cannot write {flag} {value}: {ancestor} is not writable ({err.strerror})"
        ) from None
    return value


def new_output(param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Option callback for a model output (file or checkpoint directory): :func:`writable`, and its parent
    directory must exist (a mistyped path is refused, never created)."""
    writable(param, value)
    if value is not None and not Path(os.path.abspath(value)).parent.is_dir():
        flag, parent = "/".join(param.opts), Path(value).parent
        raise ConfigError(f"cannot write {flag} {value}: {parent} does not exist; create it first")
    return value


MODEL_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".onnx", ".pksparse")


def checkpoint_dir(param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Option callback for a checkpoint directory: :func:`new_output`, and no model-file suffix (``r18.pt``
    as a directory name is a mistake: the command would make a directory there, not that file)."""
    new_output(param, value)
    if value is not None:
        refuse_file_suffix("/".join(param.opts), Path(value))
    return value


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


def refuse_file_suffix(flag: str, out: Path) -> None:
    """Raise ConfigError if a checkpoint directory ``out`` is named like a model file."""
    if out.suffix.lower() in MODEL_FILE_SUFFIXES and not out.is_dir():
        raise ConfigError(
            f"{flag} {out} names a checkpoint directory, but {out.suffix} is a file suffix: this model is "
            f"saved as a directory (safetensors + prunekit.json); drop the suffix, e.g. {flag} "
            f"{out.with_suffix('')}"
        )


JsonOpt = Annotated[
    Path | None,
    typer.Option(
        "--json",
        metavar="PATH",
        help="Also write the result as JSON to PATH.",
        dir_okay=False,
        callback=writable,
    ),
]
CalibDataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", metavar="DATA", help=f"Batches for data-driven criteria (taylor, wanda, ...): {DATA_HELP}."
    ),
]
CalibBatchOpt = Annotated[int, typer.Option("--batch-size", help="Batch size for file --data.")]


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
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="No progress bars (they show on stderr only when it is a terminal)."
        ),
    ] = False,
) -> None:
    """Prune trained PyTorch models: unstructured masks and exact structural removal, measured."""
    from prunekit.progress import set_cli_default

    set_cli_default(not quiet)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH  # tables piped to a file or a CI log are not cut at 80 columns
    # Like `python -m`: let module.path:factory specs name modules in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@dataclass
class LoadedModel:
    """A model loaded from the command line, with what is needed to save it again without pickle."""

    model: Any
    example: Any
    shape: tuple[int, ...]  # the example's shape (BATCH,SEQ for hf: models), kept in saved checkpoints
    spec: str | None  # builds the *unpruned* architecture (None for a pickled module)
    plans: list[Any]  # structural plans already applied to it (a checkpoint directory's)


def load_spec(
    spec: str, *, arch: str | None, trust_pickle: bool, trust_code: bool, seed: int | None = None
) -> Any:
    """The model MODEL names; a checkpoint directory's own spec is built only if registered or trusted."""
    if (Path(spec) / "prunekit.json").is_file() and arch is None:
        from prunekit.deploy.checkpoint import load

        return load(spec, trust_code=trust_code)
    from prunekit.models.spec import load_model

    return load_model(spec, arch=arch, trust_pickle=trust_pickle, seed=seed)


def load_cli_model(
    spec: str,
    *,
    arch: str | None,
    trust_pickle: bool,
    input_shape: str | None,
    needs_example: bool = True,
    trust_code: bool = False,
    seed: int | None = None,
) -> LoadedModel:
    """Load MODEL, make its example input, run it once, and work out the spec + plans to save it under.

    Without ``needs_example``, a model with neither ``--input-shape`` nor a default shape is loaded but not
    run (``example`` None, ``shape`` empty)."""
    from prunekit.models.spec import (
        check_forward,
        default_input_shape,
        example_inputs_for,
        parse_input_shape,
    )

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    values = math.prod(shape) if shape is not None else 0
    if values > MAX_INPUT_VALUES:
        raise ConfigError(
            f"--input-shape {input_shape} is {values:.3g} values ({4 * values / 2**30:,.0f} GiB as float32), "
            f"over the {MAX_INPUT_VALUES:.3g} allowed: give a smaller shape"
        )
    net = load_spec(spec, arch=arch, trust_pickle=trust_pickle, trust_code=trust_code, seed=seed)
    if shape is None:
        try:
            shape = default_input_shape(arch or spec)
        except ConfigError:
            if needs_example:
                raise
    example = None if shape is None else example_inputs_for(arch or spec, shape, model=net)
    if example is not None:
        check_forward(net, example)
    shape = () if shape is None else shape
    if (Path(spec) / "prunekit.json").is_file():
        from prunekit.deploy.checkpoint import read_info
        from prunekit.plan import Plan

        info = read_info(spec)
        return LoadedModel(net, example, shape, info["spec"], [Plan.from_dict(p) for p in info["plans"]])
    if Path(spec).is_file():
        return LoadedModel(net, example, shape, arch, [])
    return LoadedModel(net, example, shape, spec, [])


@dataclass(frozen=True)
class ModelSource:
    """MODEL and the options that say how to build or read it, as one value.

    Every command that loads a model takes the same argument and options (see :func:`model_command`) and
    receives them as a ``ModelSource``; :meth:`load` is :func:`load_cli_model` with them.
    """

    spec: str
    arch: str | None = None
    trust_pickle: bool = False
    trust_code: bool = False
    input_shape: str | None = None
    seed: int = 0

    def load(self, *, needs_example: bool = True, spec: str | None = None) -> LoadedModel:
        """Load this source's model (or, with ``spec``, another model under the same options)."""
        return load_cli_model(
            self.spec if spec is None else spec,
            arch=self.arch,
            trust_pickle=self.trust_pickle,
            input_shape=self.input_shape,
            needs_example=needs_example,
            trust_code=self.trust_code,
            seed=self.seed,
        )


_SOURCE_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("arch", ArchOpt, None),
    ("trust_pickle", TrustPickleOpt, False),
    ("trust_code", TrustCodeOpt, False),
    ("input_shape", InputShapeOpt, None),
    ("seed", SeedOpt, 0),
)


def model_command(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the MODEL argument and the shared loading options in place of its ``source``.

    ``command`` declares one parameter ``source: ModelSource``; the function returned declares MODEL first
    and ``--arch``, ``--trust-pickle``, ``--trust-code``, ``--input-shape`` and ``--seed`` after the
    command's own options (typer reads its signature), and calls ``command`` with them gathered into a
    :class:`ModelSource`. So every model-loading command offers the same options with the same help. A
    command that declares one of those options itself (``seed`` with its own help, say) keeps its own; the
    value is passed to it and also goes into the ``ModelSource``.
    """
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [
        p.replace(kind=keyword)
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.name != "source"
    ]
    if any(p.name == "model" for p in own):
        raise TypeError(f"{command.__name__} declares model, which model_command adds")
    declared = {p.name for p in own}
    shared = [
        inspect.Parameter(n, keyword, annotation=hint, default=d)
        for n, hint, d in _SOURCE_OPTIONS
        if n not in declared
    ]
    parameters = [inspect.Parameter("model", keyword, annotation=ModelArg), *own, *shared]

    @functools.wraps(command)
    def run(**options: Any) -> Any:
        loading = {n: options[n] if n in declared else options.pop(n) for n, _, _ in _SOURCE_OPTIONS}
        return command(source=ModelSource(options.pop("model"), **loading), **options)

    run.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return run


def before_after_table(title: str, result: Any) -> Any:
    """A rich table of parameters and MACs before/after a structural prune (a PruneResult-like object)."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("", "before", "after", "ratio"):
        table.add_column(column, justify="right")
    for what, before, after, ratio in (
        ("params", result.params_before, result.params_after, result.params_ratio),
        ("MACs", result.macs_before, result.macs_after, result.macs_ratio),
    ):
        table.add_row(what, f"{before:,}", f"{after:,}", f"{ratio:.3f}")
    return table


# --- helpers ------------------------------------------------------------------------------------------------


def write_json(path: Path | None, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` (if given), with the ``command`` that reproduces this run."""
    if path is not None:
        command = {"command": shlex.join(["prunekit", *INVOCATION])} if INVOCATION else {}
        write_text(path, json.dumps(command | data, indent=2) + "\n")


def save_state_dict(net: Any, path: Path, suffix: str) -> None:
    """safetensors for a .safetensors name (save_model de-duplicates tied weights), else torch.save."""
    if suffix == ".safetensors":
        from safetensors.torch import save_model

        save_model(net, str(path))
    else:
        import torch

        torch.save(net.state_dict(), path)


def arch_hint(model: str, arch: str | None) -> str:
    """The --arch that rebuilds the architecture of MODEL (the spec itself unless MODEL was a file)."""
    if arch is not None:
        return arch
    return "<the model's builder>" if Path(model).exists() else model


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
