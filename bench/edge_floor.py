"""The fixed cost of a runtime: how much of a model's time does not shrink with its width, and what that
allows a structured cut at a 2x speedup.

Reads the records of ``bench/bench_edge.py`` (the dense model and uniform cuts of it at a ladder of
ratios, every pair timed in the same run) and fits, per model x runtime x thread count, the line

    t(m) / t_dense = f + (1 - f) * m        (m: MACs kept, dense = 1)

by least squares over the ladder: ``f`` is the share of the dense time that stays however thin the model
gets (per-op dispatch, memory traffic of the input and of the head's outputs, a runtime's own overhead),
under the model that the rest falls in proportion to MACs. A model obeying it reaches a 2x speedup at
``m = (0.5 - f) / (1 - f)``, so its efficiency (speedup / MACs reduction) at 2x is at most
``(1 - 2f) / (1 - f)``: 0.8 needs ``f <= 1/6``. The *residual* column is the fit's largest miss (in units
of the dense time): a large one says the line does not describe that runtime (steps at SIMD widths, say).

    python bench/edge_floor.py            # the bench_edge records (ratios 0.3, 0.5): section edge-floor
    python bench/bench_edge.py --models yolo11n@320,yolo11n@640 --runtimes onnxruntime,openvino,ncnn \
        --ratios 0.3,0.5,0.7,0.9 --json bench/results/edge_floor.json --no-write
    python bench/edge_floor.py --json bench/results/edge_runtimes.json bench/results/edge_floor.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import common_args, finish, markdown_table

RECORDS = Path(__file__).parent / "results" / "edge_runtimes.json"


def fit_floor(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(f, largest residual)`` of ``y = f + (1 - f) * m`` through ``(m, y)`` points and ``(1, 1)``.

    ``y - m = f * (1 - m)``: one unknown, least squares through the origin of ``(1 - m, y - m)``.

    >>> f, r = fit_floor([(0.5, 0.6), (0.25, 0.4)])
    >>> round(f, 3), round(r, 3)
    (0.2, 0.0)
    """
    m = np.array([p[0] for p in points] + [1.0])
    y = np.array([p[1] for p in points] + [1.0])
    x = 1.0 - m
    f = float((x @ (y - m)) / (x @ x)) if (x @ x) > 0 else 0.0
    return f, float(np.abs(f + (1 - f) * m - y).max())


def bound_at_2x(f: float) -> float | None:
    """The most efficiency a model with floor ``f`` can have at a 2x speedup (None: 2x is out of reach).

    >>> bound_at_2x(1 / 6), bound_at_2x(0.4), bound_at_2x(0.5)
    (0.8, 0.333..., None)
    """
    return None if f >= 0.5 else (1 - 2 * f) / (1 - f)


def rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One fit per model x runtime x threads from the records that were measured and agree."""
    series: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("pruned_ms") and r.get("dense_ms") and r.get("macs_reduction"):
            series.setdefault((r["model"], r["runtime"], r["threads"]), []).append(r)
    out = []
    for (model, runtime, threads), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["ratio"])
        points = [(1 / r["macs_reduction"], r["pruned_ms"] / r["dense_ms"]) for r in rs]
        f, resid = fit_floor(points)
        near = min(rs, key=lambda r: abs(r["speedup"] - 2.0))
        out.append({
            "model": model, "runtime": runtime, "threads": threads, "floor": f, "residual": resid,
            "bound_2x": bound_at_2x(f), "dense_ms": float(np.median([r["dense_ms"] for r in rs])),
            "ladder": [(r["ratio"], 1 / r["macs_reduction"], r["speedup"]) for r in rs],
            "near_2x": (near["ratio"], near["speedup"], near["efficiency"]),
        })  # fmt: skip
    return out


def part(data: Mapping[str, Any], source: Path) -> list[str]:
    """One records file's fits: its sentence, its table and its machine line."""
    fits = rows(data["records"])
    ratios = sorted({r["ratio"] for r in data["records"]})
    table = markdown_table(
        ["model", "runtime", "threads", "dense ms", "ladder (ratio: MACs kept, speedup)", "floor f",
         "fit residual", "efficiency bound at 2x", "uniform cut nearest 2x: ratio, speedup, efficiency"],
        [[r["model"], r["runtime"], r["threads"], f"{r['dense_ms']:.2f}",
          "; ".join(f"{a}: {m:.3f}, {s:.2f}x" for a, m, s in r["ladder"]),
          f"{r['floor']:.3f}", f"{r['residual']:.3f}",
          "2x out of reach" if r["bound_2x"] is None else f"{r['bound_2x']:.2f}",
          "{}: {:.2f}x, {:.2f}".format(*r["near_2x"])]
         for r in fits],
        align="llrrlrrrl",
    )  # fmt: skip
    reach = [r for r in fits if r["bound_2x"] is not None and r["bound_2x"] >= 0.8]
    return [
        f"`{source.name}` (ratios {', '.join(map(str, ratios))}; median of {data['settings']['runs']} runs, "
        f"best of {data['settings']['rounds']} rounds): {len(reach)} of {len(fits)} rows allow 0.8 at 2x.",
        "",
        *table,
        "",
        f"{data['line']}",
        "",
    ]


def markdown(sources: Sequence[Path]) -> str:
    lines = [
        "## Edge runtimes: the share of a model's time that does not shrink with its width",
        "",
        "`bench/edge_floor.py` over records of `bench/bench_edge.py`: each model cut uniformly "
        "(`prune_yolo` / `prune`, round_to 8), dense and pruned timed alternately in the same run (batch 1, "
        "random weights). Fit per row: t/t_dense = f + (1 - f) * MACs kept, least squares through the dense "
        "point (*fit residual*: its largest miss, in units of the dense time). A model on that line reaches "
        "2x at MACs kept (0.5 - f) / (1 - f), so its efficiency (speedup / MACs reduction) at 2x is at most "
        "(1 - 2f) / (1 - f); the 0.8 of the edge-deployment issue needs f ≤ 0.167.",
        "",
    ]
    for source in sources:
        lines += part(json.loads(source.read_text()), source)
    return "\n".join(lines).rstrip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(1)])
    ap.add_argument("--json", nargs="+", default=[str(RECORDS)], help="bench_edge records files to fit")
    args = ap.parse_args()
    finish("edge-floor", markdown([Path(p) for p in args.json]), args)


if __name__ == "__main__":
    main()
