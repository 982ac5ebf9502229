"""One self-contained HTML page (figures as embedded PNG, no links, no scripts) and its Markdown twin, built
from what a command wrote: a ``--json`` output (prune, check, sparsify, sensitivity, bench, demo) or a
checkpoint.

Each section appears when its data exists: the before/after table (params, MACs, size, latency), the
per-layer widths of the structural plans and the per-layer sparsity, every group that stayed whole and why
(pinned by a rule of the trace or by the user's ignore, or kept by max_ratio, round_to, the ratio or the
global ranking, as the plan recorded), the groups a criterion scored by its fallback (bn_scale without a
BatchNorm), sensitivity curves, the demo's stages with their accuracy/latency/size figures, a bench's timed
rows with its speedup chart, and the command that reproduces the run.

>>> import tempfile
>>> data = {"params_before": 100, "params_after": 40, "macs_before": 1000, "macs_after": 300}
>>> files = build_report(data, tempfile.mkdtemp(), command="prunekit prune m --out p")
>>> sorted(p.name for p in files)
['report.html', 'report.md']
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit._atomic import write_bytes, write_text
from prunekit.errors import ConfigError

Table = tuple[list[str], list[list[str]]]
_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f3f3f3;padding:2px}"
)


def read_source(path: str | os.PathLike) -> dict[str, Any]:
    """The data of a ``--json`` file, or of a checkpoint directory (its ``prunekit.json``)."""
    path = Path(path)
    file = path / "prunekit.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path} is neither a --json output file nor a checkpoint directory")
    try:
        data = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{file} is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} holds a {type(data).__name__}, not a prunekit result")
    return {"checkpoint": data} if path.is_dir() else data


def build_report(data: dict[str, Any], out: str | os.PathLike, *, command: str | None = None) -> list[Path]:
    """Write ``report.html`` and ``report.md`` into directory ``out`` (its parent must exist); return them."""
    out = Path(out)
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write the report to {out}: {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    tables, figures = _sections(data)
    command = command or data.get("command")
    html_parts = [f"<h1>prunekit report</h1><p>Reproduce: <code>{_e(command or 'not recorded')}</code></p>"]
    md_parts = ["# prunekit report", "", f"Reproduce: `{command or 'not recorded'}`", ""]
    for title, (header, rows) in tables:
        html_parts.append(f"<h2>{_e(title)}</h2>{_html_table(header, rows)}")
        md_parts += [f"## {title}", "", *_md_table(header, rows), ""]
    for name, (title, png) in figures.items():
        write_bytes(out / f"{name}.png", png)
        src = "data:image/png;base64," + base64.b64encode(png).decode()
        html_parts.append(f'<h2>{_e(title)}</h2><img alt="{_e(title)}" src="{src}">')
        md_parts += [f"## {title}", "", f"![{title}]({name}.png)", ""]
    page = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>prunekit report</title>"
    page += f"<style>{_STYLE}</style></head><body>{''.join(html_parts)}</body></html>\n"
    write_text(out / "report.html", page)
    write_text(out / "report.md", "\n".join(md_parts))
    return [out / "report.html", out / "report.md"]


def _sections(data: dict[str, Any]) -> tuple[list[tuple[str, Table]], dict[str, tuple[str, bytes]]]:
    tables = [(title, table) for title, make in _TABLES if (table := make(data)) is not None and table[1]]
    figures = {name: (title, png) for name, title, make in _FIGURES if (png := make(data)) is not None}
    return tables, figures


def _before_after(data: dict[str, Any]) -> Table | None:
    rows = []
    for label, key in (
        ("params", "params"),
        ("MACs", "macs"),
        ("size (bytes)", "size"),
        ("latency ms", "latency"),
    ):
        before, after = data.get(f"{key}_before"), data.get(f"{key}_after")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            ratio = f"{after / before:.3f}" if before else "-"
            rows.append([label, f"{before:,.6g}", f"{after:,.6g}", ratio])
    for label, key in (("params", "params_ratio"), ("MACs", "macs_ratio")):  # a check reports ratios only
        if not any(r[0] == label for r in rows) and isinstance(data.get(key), (int, float)):
            rows.append([label, "", "", f"{data[key]:.3f}"])
    return ["", "before", "after", "after / before"], rows


def _plans(data: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(data.get("plan"), dict):
        return [data["plan"]]
    for holder in (data.get("checkpoint"), data):
        if isinstance(holder, dict) and isinstance(holder.get("plans"), list):
            return [p for p in holder["plans"] if isinstance(p, dict)]
    return []


def _widths(data: dict[str, Any]) -> Table | None:
    rows = []
    for i, plan in enumerate(_plans(data), 1):
        for name, shape in plan.get("signature", {}).items():
            cut = plan.get("removals", {}).get(name, {})
            after = [size - len(cut.get(str(dim), [])) for dim, size in enumerate(shape)]
            if after != list(shape):
                rows.append([name, str(i), "x".join(map(str, shape)), "x".join(map(str, after))])
    return ["tensor", "plan", "shape before", "shape after"], rows


def _sparsity(data: dict[str, Any]) -> Table | None:
    layers = data.get("layers")
    if not isinstance(layers, dict):
        return None
    rows = [
        [n, f"{v['numel']:,}", f"{v['pruned']:,}", f"{100 * v['sparsity']:.2f}%"] for n, v in layers.items()
    ]
    return ["layer", "weights", "zeroed", "sparsity"], rows


def _kept_whole(data: dict[str, Any]) -> Table | None:
    """Every group a plan left whole and why (``meta["kept_whole"]`` of each plan, or ``check``'s
    ``kept_whole``); from an older output that has only ``check``'s ``pinned`` list, those groups."""
    entries = data.get("kept_whole")
    if isinstance(entries, list):
        listed = [(None, e) for e in entries]
    else:
        plans = _plans(data)
        listed = [
            (i if len(plans) > 1 else None, e)
            for i, plan in enumerate(plans, 1)
            for e in plan.get("meta", {}).get("kept_whole", [])
        ]
    if not listed and isinstance(data.get("pinned"), list):
        listed = [(None, g | {"pinned": True}) for g in data["pinned"]]
    if not listed:
        return None
    rows = []
    for plan, e in listed:
        why = "; ".join(e.get("reasons", [])) or "not recorded"
        rows.append(
            [
                str(e["id"]) if plan is None else f"{e['id']} (plan {plan})",
                str(e["width"]),
                ", ".join(e.get("members", [])),
                f"pinned: {why}" if e.get("pinned") else why,
            ]
        )
    return ["group", "width", "members", "why it stayed whole"], rows


def _scored_by(data: dict[str, Any]) -> Table | None:
    """Groups a criterion scored by a fallback rule, and why (``meta["scored_by"]`` of each plan)."""
    plans = _plans(data)
    rows = [
        [gid if len(plans) == 1 else f"{gid} (plan {i})", how]
        for i, plan in enumerate(plans, 1)
        for gid, how in plan.get("meta", {}).get("scored_by", {}).items()
    ]
    return (["group", "scored by"], rows) if rows else None


def _stages(data: dict[str, Any]) -> Table | None:
    stages = data.get("stages")
    if not isinstance(stages, list):
        return None
    rows = [
        [s["name"], f"{100 * s['accuracy']:.2f}%", f"{s['params']['nonzero']:,}", f"{s['macs']:,}",
         f"{s['size']['compressed_bytes']:,}", f"{s['latency'][0]['median_ms']:.3f}" if s["latency"] else "-"]
        for s in stages
    ]  # fmt: skip
    return ["stage", "accuracy", "non-zero params", "MACs", "compressed bytes", "latency ms"], rows


def _bench_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The timed rows of a ``prunekit bench`` result (torch or ``--runtime``), else none."""
    rows = data.get("rows")
    if not isinstance(rows, list):
        return []
    keys = ("model", "batch_size", "threads", "median_ms", "p90_ms", "speedup")
    return [r for r in rows if isinstance(r, dict) and all(k in r for k in keys)]


def _latency(data: dict[str, Any]) -> Table | None:
    rows = _bench_rows(data)
    if not rows:
        return None
    header = ["runtime", "model", "batch", "threads", "median ms", "p90 ms", "speedup", "noisy"]
    return header, [
        [r.get("runtime", "torch"), r["model"], str(r["batch_size"]), str(r["threads"]),
         f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['speedup']:.2f}x",
         "yes" if r.get("noisy") else ""]
        for r in rows
    ]  # fmt: skip


def _latency_plot(data: dict[str, Any]) -> bytes | None:
    rows = _bench_rows(data)
    if not rows:
        return None
    reference = data.get("reference")

    def draw(ax: Any) -> None:
        settings = sorted({(r.get("runtime", "torch"), r["batch_size"], r["threads"]) for r in rows}, key=str)
        models = list(dict.fromkeys(r["model"] for r in rows))
        width = 0.8 / max(1, len(models))
        for i, model in enumerate(models):
            pick = {
                (r.get("runtime", "torch"), r["batch_size"], r["threads"]): r
                for r in rows
                if r["model"] == model
            }
            xs = [j + i * width for j, key in enumerate(settings) if key in pick]
            ax.bar(xs, [pick[k]["speedup"] for k in settings if k in pick], width, label=model)
        ax.axhline(1.0, color="#888", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(settings))])
        ax.set_xticklabels([f"{rt}\nb{b} t{t}" for rt, b, t in settings], fontsize=7)
        ax.set(ylabel=f"speedup vs {reference or 'the reference'}", title="measured speedup per setting")
        ax.legend(fontsize=7)

    return _figure(draw)


def _figure(draw: Callable[[Any], None]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _sensitivity_plot(data: dict[str, Any]) -> bytes | None:
    curves = data.get("curves")
    if not isinstance(curves, list) or not curves:
        return None

    def draw(ax: Any) -> None:
        for c in curves:
            ax.plot(c["ratios"], c["metrics"], marker="o", label=f"{c['group']}: {c['name']}"[:40])
        ax.set(xlabel="ratio removed from the group alone", ylabel="output change", title="sensitivity")
        if len(curves) <= 12:
            ax.legend(fontsize=7)

    return _figure(draw)


def _stage_plot(data: dict[str, Any]) -> bytes | None:
    stages = [s for s in data.get("stages", []) if isinstance(s, dict) and s.get("latency")]
    if not stages:
        return None

    def draw(ax: Any) -> None:
        for s in stages:
            ax.scatter(s["latency"][0]["median_ms"], 100 * s["accuracy"], s=40)
            ax.annotate(s["name"], (s["latency"][0]["median_ms"], 100 * s["accuracy"]), fontsize=8)
        ax.set(xlabel="latency, median ms", ylabel="accuracy %", title="accuracy vs latency per stage")

    return _figure(draw)


def _width_plot(data: dict[str, Any]) -> bytes | None:
    rows = (_widths(data) or ([], []))[1]
    if not rows:
        return None
    rows = rows[:60]

    def draw(ax: Any) -> None:
        before = [int(r[2].split("x")[0]) for r in rows]
        after = [int(r[3].split("x")[0]) for r in rows]
        ax.bar(range(len(rows)), before, color="#ccc", label="before")
        ax.bar(range(len(rows)), after, color="#3a7", label="after")
        ax.set(xlabel="pruned tensor (plan order)", ylabel="width (dim 0)", title="widths before and after")
        ax.legend()

    return _figure(draw)


_TABLES = [
    ("Before and after", _before_after),
    ("Demo stages", _stages),
    ("Per-layer widths (structural plans)", _widths),
    ("Per-layer sparsity", _sparsity),
    ("What stayed whole and why", _kept_whole),
    ("Groups scored by a fallback", _scored_by),
    ("Latency (bench)", _latency),
]
_FIGURES = [
    ("widths", "Widths before and after", _width_plot),
    ("sensitivity", "Sensitivity curves", _sensitivity_plot),
    ("stages", "Accuracy vs latency", _stage_plot),
    ("latency", "Measured speedup", _latency_plot),
]


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
    ]
