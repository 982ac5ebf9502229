"""Latency-aware pruning on a deployment runtime vs plain MACs-target pruning at the same measured speedup.

For each model (torchvision MobileNetV2 at 224 px, ultralytics YOLO11n with free widths at 320 px; random
init, seed 0; ``--models resnet18`` adds ResNet-18 at 224 px as an extra), runtime (onnxruntime, OpenVINO,
NCNN: the installed ones; LiteRT with ``--runtimes ...,litert`` when ``ai-edge-litert`` and ``litert-torch``
are) and requested speedup (2x; ``--speedups 1.5,2``), batch 1, 1 thread:

- ``latency``: ``prunekit.prune(copy, x, target=Target(speedup=S, runtime=R))``: the latency table (built
  once per model and runtime, into a fresh cache directory unless ``--cache-dir``; its seconds are
  reported with the first speedup, the next ones read it back), the greedy selection and the end-to-end
  corrections.
- ``macs``: plain MACs-target pruning (``Target(macs=m)``, global L2, the same criterion), with ``m``
  bisected (``--bisect`` steps, on log ``m``) until its model's speedup measured on the same runtime is the
  latency-aware model's re-measured speedup: the same-speedup point of MACs targeting. Its first step is
  ``m = 1/S``, the MACs target of the same ratio.

Every pruned model is timed next to the dense one on the runtime (runs alternated,
:meth:`prunekit.structured.latency_table.Timer.pair`). Reported per row: both models' MACs and params kept at
that speedup and their efficiency (speedup / MACs reduction), the table's and the search's seconds, and the
bisection's. Records go to ``bench/results/target_runtime.json`` (``--json``; with ``--no-write`` too, which
leaves only docs/RESULTS.md alone) and the ``target_runtime`` section of docs/RESULTS.md.

    python bench/bench_target_runtime.py --quick    # 128 px, 10 runs per timing, 2 bisection steps
    python bench/bench_target_runtime.py            # 224 px (YOLO11n 320 px), 20 runs, 4 bisection steps
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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
from prunekit.errors import ConfigError
from prunekit.structured.latency_table import ENV, Timer
from prunekit.structured.runtime_target import CORRECTIONS, TOLERANCE

MODELS = ("mobilenet_v2", "yolo11n")
RUNTIMES = ("onnxruntime", "openvino", "ncnn")
SPEEDUPS = (2.0,)
#: input size per model in the full run (--quick: 128 px for all)
SIZES = {"mobilenet_v2": 224, "yolo11n": 320, "resnet18": 224}
#: a bisection step within this relative distance of the speedup sought ends the bisection
NEAR = 0.03
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


def macs_at_speedup(
    name: str, dense: torch.nn.Module, x: torch.Tensor, timer: Timer, session, goal: float, steps: int
) -> dict:
    """Plain MACs-target pruning whose measured speedup on ``timer``'s runtime is ``goal``: ``Target(macs=m)``
    with ``m`` bisected on a log scale (speedup falls as ``m`` grows), first ``m = 1/goal``; the step
    nearest the goal is returned with every step tried."""
    start = time.perf_counter()
    low, high = 0.02, 1.0  # MACs kept: too fast below ``low``'s side, too slow above ``high``'s
    m, tried = min(0.95, 1.0 / goal), []
    for _ in range(max(1, steps)):
        model = copy.deepcopy(dense)
        res = prune_to(name, model, x, pk.PruneConfig(target=pk.Target(macs=m)))
        dense_ms, ms = timer.pair(session, timer.load(model))
        tried.append({"macs_target": m, "speedup": dense_ms / ms, "dense_ms": dense_ms, "pruned_ms": ms,
                      **kept(res)})  # fmt: skip
        if abs(tried[-1]["speedup"] / goal - 1) <= NEAR:
            break
        if tried[-1]["speedup"] > goal:
            low = max(low, m)
        else:
            high = min(high, m)
        m = math.sqrt(low * high)
    best = min(tried, key=lambda t: abs(t["speedup"] / goal - 1))
    return best | {"steps": tried, "bisect_seconds": time.perf_counter() - start}


def efficiency(speedup: float, macs_kept: float) -> float:
    """Speedup over MACs reduction (dense MACs / pruned MACs): 1 when latency falls as the MACs do."""
    return speedup * macs_kept


def one(name: str, runtime: str, size: int, threads: int, runs: int, speedups, steps: int) -> list[dict]:
    dense, x = build(name, size)
    timer = Timer(runtime, threads, runs, x)
    dense_session = timer.load(dense)
    records = []
    try:
        for speedup in speedups:
            latency_model = copy.deepcopy(dense)
            start = time.perf_counter()
            target = pk.Target(speedup=speedup, runtime=runtime, threads=threads)
            try:
                lat = prune_to(name, latency_model, x, pk.PruneConfig(target=target, latency_runs=runs))
            except ConfigError as err:  # the search's own verdict: a row, not a crash
                records.append({"model": name, "runtime": runtime, "threads": threads, "input": list(x.shape),
                                "requested_speedup": speedup, "unreachable": str(err),
                                "seconds": time.perf_counter() - start})  # fmt: skip
                print(f"{name} {runtime} {speedup}x: {err}", flush=True)
                continue
            lat_seconds = time.perf_counter() - start
            dense_a, lat_ms = timer.pair(dense_session, timer.load(latency_model))
            reached = dense_a / lat_ms
            mac = macs_at_speedup(name, dense, x, timer, dense_session, reached, steps)
            info = lat.target
            table_s = info["table"]["seconds"] if not info["table"]["cached"] else 0.0
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
                        "speedup": reached,
                        "dense_ms": dense_a,
                        "pruned_ms": lat_ms,
                        **kept(lat),
                        "efficiency": efficiency(reached, lat.macs_ratio),
                        "round_to": info["round_to"],
                        "round_to_reason": info["round_to_reason"],
                        "evaluations": info["evaluations"],
                        "search_seconds": lat_seconds,
                        "select_seconds": lat_seconds - table_s,
                        "table_cached": info["table"]["cached"],
                        "table_seconds": info["table"]["seconds"],
                        "table_measurements": info["table"]["measurements"],
                    },
                    "macs": mac | {"efficiency": efficiency(mac["speedup"], mac["macs_kept"])},
                }
            )
            r = records[-1]
            print(
                f"{name} {runtime} {speedup}x: latency-aware {reached:.2f}x (MACs / params kept "
                f"{lat.macs_ratio:.3f} / {lat.params_ratio:.3f}, "
                f"efficiency {r['latency']['efficiency']:.2f}; "
                f"table {table_s:.0f} s, search {lat_seconds - table_s:.0f} s); MACs target at "
                f"{mac['speedup']:.2f}x: MACs / params kept "
                f"{mac['macs_kept']:.3f} / {mac['params_kept']:.3f}, "
                f"efficiency {r['macs']['efficiency']:.2f} ({len(mac['steps'])} steps, "
                f"{mac['bisect_seconds']:.0f} s)",
                flush=True,
            )
    finally:
        timer.close()
    return records


def markdown(records: list[dict], line: str, quick: bool) -> str:
    rows = []
    for r in records:
        if "unreachable" in r:
            rows.append([r["model"], f"{r['input'][-1]}", r["runtime"], f"{r['requested_speedup']:.1f}x",
                         "unreachable", *["—"] * 12])  # fmt: skip
            continue
        lat, mac = r["latency"], r["macs"]
        table = (
            "cached" if lat["table_cached"] else f"{lat['table_seconds']:.0f} ({lat['table_measurements']})"
        )
        rows.append(
            [
                r["model"],
                f"{r['input'][-1]}",
                r["runtime"],
                f"{r['requested_speedup']:.1f}x",
                f"{r['search_reached_speedup']:.2f}x",
                f"{lat['speedup']:.2f}x",
                f"{lat['macs_kept']:.3f} / {lat['params_kept']:.3f}",
                f"{lat['efficiency']:.2f}",
                lat["round_to"],
                table,
                f"{lat['select_seconds']:.0f}",
                f"{mac['speedup']:.2f}x",
                f"{mac['macs_kept']:.3f} / {mac['params_kept']:.3f}",
                f"{mac['efficiency']:.2f}",
                f"{mac['macs_target']:.3f} ({len(mac['steps'])})",
                f"{mac['bisect_seconds']:.0f}",
                f"{lat['dense_ms']:.2f}",
            ]
        )
    header = [
        "model", "px", "runtime", "requested", "search reached", "re-measured", "MACs / params kept",
        "efficiency", "round_to", "table s (timings)", "search s", "MACs target: speedup",
        "MACs target: MACs / params kept", "MACs target: efficiency", "MACs target m (steps)", "bisect s",
        "dense ms",
    ]  # fmt: skip
    px = {r["model"]: r["input"][-1] for r in records}
    sizes = ", ".join(f"{m} {v} px" for m, v in px.items())
    lines = [
        "## Latency-aware pruning on the deployment runtime (`bench/bench_target_runtime.py`)",
        "",
        f"{line} Input {sizes}{' (--quick)' if quick else ''}, random init (seed 0: "
        "torchvision; ultralytics' yaml with free-width pruning through `prune_yolo`), batch 1. "
        "*latency-aware*: `prunekit.prune(model, x, target=Target(speedup=S, runtime=R))` (latency table, "
        f"greedy importance per ms saved, up to {CORRECTIONS} end-to-end corrections, tolerance "
        f"{TOLERANCE:.0%}). *search reached* "
        "is the search's own measurement, *re-measured* a new timing next to the dense model (runs "
        "alternated). *MACs target*: plain `Target(macs=m)` (global L2, the same criterion), `m` bisected "
        "until its measured speedup on the same runtime is the latency-aware model's re-measured one (first "
        "step `m = 1/S`; steps in brackets): the two models compared at the same speedup. *efficiency*: "
        "speedup / MACs reduction (dense MACs / pruned MACs). *table s*: seconds to build the latency table "
        "(number of timed models), once per model and runtime; *search s*: the selection and end-to-end "
        "corrections after it.",
        "",
        *markdown_table(header, rows, align="lrlrrrrrrrrrrrrrr"),
        "",
        *[
            f"- {r['model']} on {r['runtime']} at {r['requested_speedup']}x: {r['unreachable']} "
            f"({r['seconds']:.0f} s, the latency table included)."
            for r in records
            if "unreachable" in r
        ],
        "",
        *summary(records),
    ]
    return "\n".join(lines)


def summary(records: list[dict]) -> list[str]:
    """Sentences computed from the records: the goals of issue 16 as measured."""
    if not records:
        return []

    def near(speedup: float, requested: float) -> bool:
        return abs(speedup / requested - 1) <= 0.10

    n = len(records)  # an unreachable target counts as a miss
    records = [r for r in records if "latency" in r]
    if not records:
        return [f"Goals as measured: no target of the {n} rows was reached.", ""]
    lat = sum(near(r["latency"]["speedup"], r["requested_speedup"]) for r in records)
    same = [r for r in records if abs(r["macs"]["speedup"] / r["latency"]["speedup"] - 1) <= 0.10]
    more_macs = sum(r["latency"]["macs_kept"] > r["macs"]["macs_kept"] for r in same)
    more_params = sum(r["latency"]["params_kept"] > r["macs"]["params_kept"] for r in same)
    yolo = [
        f"{r['runtime']} {r['latency']['efficiency']:.2f} (MACs target {r['macs']['efficiency']:.2f})"
        for r in records
        if r["model"] == "yolo11n" and r["requested_speedup"] == 2.0 and r["runtime"] in ("openvino", "ncnn")
    ]
    ran = {(r["model"], r["runtime"]) for r in records}
    missing = [f"{m} on {rt}" for m in MODELS for rt in RUNTIMES if (m, rt) not in ran]
    absent = f" Not in this run: {', '.join(missing)}." if missing else ""
    spread = {}
    for r in records:
        times = spread.setdefault(f"{r['model']} on {r['runtime']}", [])
        times += [r["latency"]["dense_ms"], *(t["dense_ms"] for t in r["macs"]["steps"])]
    drift = "; ".join(f"{k} {min(v):.3g}-{max(v):.3g} ms" for k, v in spread.items())
    return [
        f"The same dense model timed in this run (each pruned model's partner): {drift}. Where that spread "
        "is larger than the speedups compared, the machine's load, not the pruning, decides the columns.",
        "",
        f"Goals as measured: re-measured speedup within 10 % of the request in {lat} of {n} rows. Of the "
        f"{len(same)} rows whose MACs-target bisection ended within 10 % of the latency-aware speedup, the "
        f"latency-aware model keeps more MACs in {more_macs} and more params in {more_params}. Efficiency of "
        f"YOLO11n at 2x: {'; '.join(yolo) if yolo else 'not in this run'} (goal >= 0.8).{absent}",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(parents=[common_args(threads=1, quick="128 px input, fewer runs and steps")])
    ap.add_argument("--runs", type=int, default=None, help="timed runs per measurement (20; 10 with --quick)")
    ap.add_argument(
        "--bisect", type=int, default=None, help="MACs-target bisection steps (4; 2 with --quick)"
    )
    ap.add_argument("--speedups", default=",".join(map(str, SPEEDUPS)), help="requested speedups (2.0)")
    ap.add_argument("--yolo-size", type=int, default=SIZES["yolo11n"], help="YOLO11n input px (320)")
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
    sizes = dict(SIZES, yolo11n=args.yolo_size)
    args.runs = args.runs or (10 if args.quick else 20)
    steps = args.bisect or (2 if args.quick else 4)
    speedups = [float(v) for v in args.speedups.split(",")]
    runtimes = []
    for r in args.runtimes.split(","):
        if get_runtime(r).available():
            runtimes.append(r)
        else:
            print(f'skipped: runtime {r} is not installed (pip install "prunekit[{get_runtime(r).extra}]")')
    records: list[dict] = []
    line = machine_line(args.threads, **versions({r: get_runtime(r).version() for r in runtimes}))
    line += f" Load average {os.getloadavg()[0]:.1f} when the run started (other work makes timings noisy)."
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-latency-") as fresh:
        os.environ[ENV] = args.cache_dir or fresh  # the latency tables' cache root
        for name in args.models.split(","):
            size = 128 if args.quick else sizes[name]
            for runtime in runtimes:
                records += one(name, runtime, size, args.threads, args.runs, speedups, steps)
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
    """The JSON records (``--json``, with ``--no-write`` too) and the RESULTS section (``--out``, not with
    ``--no-write``) of what has run so far."""
    payload = {"machine": environment(), "line": line, "quick": quick, "records": records}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.json, json.dumps(payload, indent=2) + "\n")
    finish("target_runtime", markdown(records, line, quick), args)


if __name__ == "__main__":
    main()
