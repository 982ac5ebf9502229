"""What every bench shares: the standard options, the machine line, markdown tables, writing the section, and
the loops that run a zoo of models one by one (in this process or one worker process each).

Benches are run as scripts (``python bench/bench_x.py``), so this directory is on ``sys.path`` and
``from _common import ...`` works without touching it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from _results import write_section

from prunekit.demo.run import environment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "RESULTS.md"


class FirstOutput(torch.nn.Module):
    """A detector as deployed: YOLO's eval forward returns (decoded detections, raw head maps); this keeps the
    detections tensor, the one output runtimes and exporters get."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def common_args(threads: int = 1, quick: str | None = None) -> argparse.ArgumentParser:
    """The options every bench takes, as an ``argparse`` parent: ``--threads``, ``--out`` (the results file;
    ``--results`` is the same option), ``--no-write`` and, where the bench has a small budget, ``--quick``
    (``quick`` is its help text).

    >>> ap = argparse.ArgumentParser(parents=[common_args(threads=2)])
    >>> args = ap.parse_args(["--results", "r.md"])
    >>> args.threads, args.out, args.no_write
    (2, 'r.md', False)
    """
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    ap.add_argument("--out", "--results", dest="out", default=str(RESULTS), help="results file")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave the results file")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
    return ap


def machine_line(threads: int | str, **versions: str) -> str:
    """One sentence naming the machine: CPU model, cores, torch version, threads, then any ``versions``
    (``timm="1.0"``), and the UTC date and time.

    >>> line = machine_line(1, timm="1.0")
    >>> line.startswith("Machine: ") and ", 1 thread, timm 1.0, " in line and line.endswith(" UTC.")
    True
    """
    env = environment()
    plural = "" if str(threads) == "1" else "s"
    extra = "".join(f", {name.replace('_', '-')} {v}" for name, v in versions.items())
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, {threads} thread{plural}"
        f"{extra}, {now:%Y-%m-%d %H:%M} UTC."
    )


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """Lines of a markdown table; ``align`` has one letter per column (``l`` left, ``r`` right), default left.

    >>> markdown_table(["a", "b"], [[1, "x"]], align="lr")
    ['| a | b |', '|---|---:|', '| 1 | x |']
    """
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def finish(section: str, text: str, args: argparse.Namespace, write: bool = True) -> None:
    """Print ``text`` and write it as section ``section`` of ``args.out``, unless ``--no-write`` was given or
    ``write`` is false (a subset of the zoo, a quick run)."""
    print(text)
    if write and not args.no_write:
        print(f"wrote {write_section(section, text, args.out)}")


def check_each(names: Sequence[Any], one: Callable[[Any], dict], jobs: int = 1) -> list[dict]:
    """``one(name)`` for every name (in ``jobs`` spawned processes of one thread each when ``jobs > 1``),
    printing each row's name, status, MACs ratio or error, and reason as it arrives."""
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            rows = pool.map(one, names, chunksize=1)
        for r in rows:
            _progress(r)
        return rows
    rows = []
    for name in names:
        rows.append(one(name))
        _progress(rows[-1])
    return rows


def _progress(r: dict) -> None:
    measure = r.get("macs_ratio", r.get("max_abs_err", ""))
    print(f"{r['name']}: {r['status']} {measure} {r.get('why', '')} {r.get('seconds', 0):.1f}s", flush=True)


def run_in_workers(
    items: Sequence[Any],
    command: Callable[[Any], list[str]],
    timeout: float,
    dead: Callable[[Any, str, bool], dict],
) -> list[dict]:
    """Run ``command(item)`` (a worker invocation of the bench itself) in a fresh process per item and parse
    the JSON it prints after ``ROW `` (``worker_row``); ``dead(item, why, timed_out)`` is the row of a worker
    that printed none or ran past ``timeout`` seconds. Each row is printed as it arrives. A process per
    model keeps one model's memory and threads away from the next."""
    rows = []
    for item in items:
        try:
            proc = subprocess.run(
                [sys.executable, *command(item)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:100]
            row = json.loads(line[4:]) if line else dead(item, f"worker died: {err}", False)
        except subprocess.TimeoutExpired:
            row = dead(item, "worker killed (timeout)", True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def worker_row(row: dict) -> None:
    """The line a worker prints for ``run_in_workers`` to read."""
    print("ROW " + json.dumps(row), flush=True)
