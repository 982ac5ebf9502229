"""``prunekit report`` and the ``--report DIR`` option: an HTML page + Markdown twin of a run."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from prunekit.cli._common import INVOCATION, app, console, new_output

ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        metavar="DIR",
        help="Also write DIR/report.html (self-contained, figures embedded) and DIR/report.md.",
        file_okay=False,
        callback=new_output,
    ),
]


def write_report(out: Path | None, data: dict[str, Any]) -> None:
    """Build the report of this run into ``out`` (nothing when None), with the command that reproduces it."""
    if out is None:
        return
    from prunekit.report.page import build_report

    build_report(data, out, command=shlex.join(["prunekit", *INVOCATION]))
    console.print(f"wrote {out / 'report.html'} and {out / 'report.md'}")


@app.command()
def report(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="JSON_OR_CHECKPOINT",
            help="A --json output of prune, check, sparsify, sensitivity or demo, or a checkpoint directory.",
            exists=True,
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Directory for report.html and report.md.",
            file_okay=False,
            show_default=False,
            callback=new_output,
        ),
    ],
) -> None:
    """Write a self-contained HTML report (and a Markdown twin) of a run from its --json or checkpoint."""
    from prunekit.report.page import build_report, read_source

    data = read_source(source)
    build_report(data, out)
    console.print(f"wrote {out / 'report.html'} and {out / 'report.md'}")
