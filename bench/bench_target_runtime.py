"""Latency-aware pruning on a deployment runtime vs a MACs target of the same ratio.

For each model (torchvision ResNet-18 and MobileNetV2, ultralytics YOLO11n with free widths; random init, seed
0), runtime (onnxruntime, OpenVINO: the installed ones) and requested speedup (1.5x, 2x), batch 1, 1 thread:

- ``latency``: ``prunekit.prune(copy, x, target=Target(speedup=S, runtime=R))``: the latency table (built
  once per model and runtime, into a fresh cache directory unless ``--cache-dir``; its time is reported
  with the first speedup, the second reads it back), the greedy selection and the end-to-end corrections.
- ``macs``: ``prunekit.prune(copy, x, target=Target(macs=1/S))``, the MACs-targeting baseline at the same
  ratio (global L2, the same criterion), then timed on the same runtime.

Both pruned models are then re-timed next to the dense one on the runtime (runs alternated,
:meth:`prunekit.structured.latency_table.Timer.pair`): the speedup columns are those re-measurements; the
search's own reading is the ``search reached`` column. Records go to ``bench/results/target_runtime.json``
and the ``target_runtime`` section of docs/RESULTS.md.

    python bench/bench_target_runtime.py --quick    # 128 px, 10 runs per timing; about an hour on a loaded
                                                    # 2-core machine (rows are written as each model x
                                                    # runtime finishes)
    python bench/bench_target_runtime.py            # 224 px
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, common_args, finish, machine_line, markdown_table

import prunekit as pk
from prunekit._atomic import write_text
from prunekit.demo.run import environment
from prunekit.deploy.runtimes import get_runtime
from prunekit.structured.latency_table import ENV, Timer

MODELS = ("resnet18", "mobilenet_v2", "yolo11n")
RUNTIMES = ("onnxruntime", "openvino")
SPEEDUPS = (1.5, 2.0)
JSON = Path(__file__).parent / "results" / "target_runtime.json"


def build(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """``name`` with random weights (seed 0): a torchvision classifier, or an ultralytics detector whose head
    is in ultralytics' export mode (one output tensor), and its batch-1 input."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    if name.startswith("yolo"):
        from prunekit.models.ultralytics import load_yolo

        model = load_yolo(f"{name}.yaml")
        for m in model.modules():
            if type(m).__name__ == "Detect":
                m.export, m.format = True, "onnx"
        return model.eval(), x
    import torchvision

    return torchvision.models.get_model(name, weights=None).eval(), x


def prune_to(name: str, model: torch.nn.Module, x: torch.Tensor, config: pk.PruneConfig) -> pk.PruneResult:
    """``prunekit.prune``, or for a detector ``prune_yolo`` (free widths, C2f attributes kept in step)."""
    if name.startswith("yolo"):
        from prunekit.models.ultralytics import prune_yolo

        return prune_yolo(model, config, imgsz=x.shape[-1], trainable=False)
    return pk.prune(model, x, config)


def kept(result: pk.PruneResult) -> dict[str, float]:
    return {"macs_kept": result.macs_ratio, "params_kept": result.params_ratio}


def one(name: str, runtime: str, size: int, threads: int, runs: int) -> list[dict]:
    dense, x = build(name, size)
    timer = Timer(runtime, threads, runs, x)
    dense_session = timer.load(dense)
    records = []
    try:
        for speedup in SPEEDUPS:
            latency_model = copy.deepcopy(dense)
            start = time.perf_counter()
            target = pk.Target(speedup=speedup, runtime=runtime, threads=threads)
            lat = prune_to(name, latency_model, x, pk.PruneConfig(target=target, latency_runs=runs))
            lat_seconds = time.perf_counter() - start
            macs_model = copy.deepcopy(dense)
            start = time.perf_counter()
            mac = prune_to(name, macs_model, x, pk.PruneConfig(target=pk.Target(macs=1 / speedup)))
            mac_seconds = time.perf_counter() - start
            dense_a, lat_ms = timer.pair(dense_session, timer.load(latency_model))
            dense_b, mac_ms = timer.pair(dense_session, timer.load(macs_model))
            info = lat.target
            records.append(
                {
                    "model": name,
                    "runtime": runtime,
                    "runtime_version": info["runtime_version"],
                    "threads": threads,
                    "input": list(x.shape),
                    "requested_speedup": speedup,
                    "search_reached_speedup": info["reached_speedup"],
                    "latency": {
                        "speedup": dense_a / lat_ms,
                        "dense_ms": dense_a,
                        "pruned_ms": lat_ms,
                        **kept(lat),
                        "round_to": info["round_to"],
                        "round_to_reason": info["round_to_reason"],
                        "evaluations": info["evaluations"],
                        "search_seconds": lat_seconds,
                        "table_cached": info["table"]["cached"],
                        "table_seconds": info["table"]["seconds"],
                        "table_measurements": info["table"]["measurements"],
                    },
                    "macs": {
                        "speedup": dense_b / mac_ms,
                        "dense_ms": dense_b,
                        "pruned_ms": mac_ms,
                        **kept(mac),
                        "search_seconds": mac_seconds,
                    },
                }
            )
            r = records[-1]
            print(
                f"{name} {runtime} {speedup}x: latency-aware {r['latency']['speedup']:.2f}x "
                f"(MACs kept {r['latency']['macs_kept']:.3f}, {lat_seconds:.0f} s), MACs target "
                f"{r['macs']['speedup']:.2f}x (MACs kept {r['macs']['macs_kept']:.3f})",
                flush=True,
            )
    finally:
        timer.close()
    return records


def markdown(records: list[dict], line: str, quick: bool) -> str:
    rows = []
    for r in records:
        lat, mac = r["latency"], r["macs"]
        table = (
            "cached" if lat["table_cached"] else f"{lat['table_seconds']:.0f} s ({lat['table_measurements']})"
        )
        rows.append(
            [
                r["model"],
                r["runtime"],
                f"{r['requested_speedup']:.1f}x",
                f"{r['search_reached_speedup']:.2f}x",
                f"{lat['speedup']:.2f}x",
                f"{lat['macs_kept']:.3f} / {lat['params_kept']:.3f}",
                lat["round_to"],
                table,
                f"{lat['search_seconds']:.0f}",
                f"{mac['speedup']:.2f}x",
                f"{mac['macs_kept']:.3f} / {mac['params_kept']:.3f}",
                f"{lat['dense_ms']:.2f}",
            ]
        )
    header = [
        "model", "runtime", "requested", "search reached", "re-measured", "MACs / params kept", "round_to",
        "table (timings)", "search s", "MACs target: speedup", "MACs target: MACs / params kept", "dense ms",
    ]  # fmt: skip
    size = records[0]["input"][-1] if records else 0
    lines = [
        "## Latency-aware pruning on the deployment runtime (`bench/bench_target_runtime.py`)",
        "",
        f"{line} Input 1x3x{size}x{size}{' (--quick)' if quick else ''}, random init (seed 0: torchvision; "
        "ultralytics' yaml with free-width pruning through `prune_yolo`), batch 1. "
        "*latency-aware*: `prunekit.prune(model, x, target=Target(speedup=S, runtime=R))` (latency table, "
        "greedy importance per ms saved, up to 3 end-to-end corrections, tolerance 5 %); *MACs target*: "
        "`Target(macs=1/S)`, global L2, the same criterion. *search reached* is the search's own "
        "measurement; *re-measured* and the MACs target's speedup are re-timed afterwards, each next to the "
        "dense model with runs alternated. *table*: seconds to build the latency table (number of timed "
        "models), once per model and runtime; the second speedup reads it from the cache. *search s* "
        "includes the table when it was built.",
        "",
        *markdown_table(header, rows, align="llrrrrrrrrrr"),
        "",
        *summary(records),
    ]
    return "\n".join(lines)


def summary(records: list[dict]) -> list[str]:
    """Sentences computed from the records: how often each approach lands within 10 % of the request."""
    if not records:
        return []

    def near(speedup: float, requested: float) -> bool:
        return abs(speedup / requested - 1) <= 0.10

    n = len(records)
    lat = sum(near(r["latency"]["speedup"], r["requested_speedup"]) for r in records)
    mac = sum(near(r["macs"]["speedup"], r["requested_speedup"]) for r in records)
    ratio = [r["macs"]["speedup"] / r["requested_speedup"] for r in records]
    fewer = sum(r["latency"]["macs_kept"] > r["macs"]["macs_kept"] for r in records)
    ran = {(r["model"], r["runtime"]) for r in records}
    missing = [f"{m} on {rt}" for m in MODELS for rt in RUNTIMES if (m, rt) not in ran]
    absent = f" Not in this run: {', '.join(missing)}." if missing else ""
    spread = {}
    for r in records:
        times = spread.setdefault(f"{r['model']} on {r['runtime']}", [])
        times += [r["latency"]["dense_ms"], r["macs"]["dense_ms"]]
    drift = "; ".join(f"{k} {min(v):.3g}-{max(v):.3g} ms" for k, v in spread.items())
    return [
        f"The same dense model timed in this run (the re-measurements): {drift}. Where that spread is larger "
        "than the speedups compared, the machine's load, not the pruning, decides the columns: such rows "
        "say nothing about either method and need a quiet machine.",
        "",
        f"Re-measured speedup within 10 % of the request: latency-aware {lat} of {n} rows, MACs target of "
        f"the same ratio {mac} of {n} (its speedup is {min(ratio):.2f}-{max(ratio):.2f} of the request). The "
        f"latency-aware model keeps more MACs than the MACs-target model in {fewer} of {n} rows.{absent}",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(parents=[common_args(threads=1, quick="128 px input instead of 224")])
    ap.add_argument("--runs", type=int, default=None, help="timed runs per measurement (20; 10 with --quick)")
    ap.add_argument("--cache-dir", default=None, help="latency-table cache root (default: a fresh one)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--json", default=str(JSON), help=f"records file (default {JSON.relative_to(ROOT)})")
    ap.add_argument(
        "--render", nargs="+", metavar="JSON", help="measure nothing: join these records files into --json "
        "and the RESULTS section (runs split over processes)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.render:
        loaded = [json.loads(Path(path).read_text()) for path in args.render]
        records = [r for data in loaded for r in data["records"]]
        line = machine_line(args.threads, **versions({r["runtime"]: r["runtime_version"] for r in records}))
        write(records, line, args, quick=all(d["quick"] for d in loaded))
        return
    size = 128 if args.quick else 224
    args.runs = args.runs or (10 if args.quick else 20)
    runtimes = [r for r in args.runtimes.split(",") if get_runtime(r).available()]
    records: list[dict] = []
    line = machine_line(args.threads, **versions({r: get_runtime(r).version() for r in runtimes}))
    line += f" Load average {os.getloadavg()[0]:.1f} when the run started (other work makes timings noisy)."
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-latency-") as fresh:
        os.environ[ENV] = args.cache_dir or fresh  # the latency tables' cache root
        for name in args.models.split(","):
            for runtime in runtimes:
                records += one(name, runtime, size, args.threads, args.runs)
                write(
                    records, line, args, args.quick
                )  # after each model x runtime: a stopped run keeps its rows


def versions(found: dict[str, str]) -> dict[str, str]:
    """Each runtime's own package version from ``Runtime.version()`` strings (``"onnx 1.17, onnxruntime
    1.20"`` -> ``{"onnxruntime": "1.20"}``)."""
    out = {}
    for runtime, text in found.items():
        parts = dict(part.rsplit(" ", 1) for part in text.split(", ") if " " in part)
        out[runtime] = parts.get(runtime, text)
    return out


def write(records: list[dict], line: str, args: argparse.Namespace, quick: bool) -> None:
    """The JSON records (``--json``) and the RESULTS section (``--out``) of what has run so far."""
    payload = {"machine": environment(), "line": line, "quick": quick, "records": records}
    if not args.no_write:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(payload, indent=2) + "\n")
    finish("target_runtime", markdown(records, line, quick), args)


if __name__ == "__main__":
    main()
