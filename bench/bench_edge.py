"""Dense vs structurally pruned models on edge runtimes (onnxruntime, OpenVINO, LiteRT, NCNN), batch 1.

For each model and ratio: prune a copy with ``prunekit.prune`` (YOLO: ``prune_yolo``), then on every runtime
that is installed export both models, check each against PyTorch and time both at 1 and 2 threads
(``prunekit.deploy.runtimes.bench``). A record is one model x ratio x runtime x threads: dense_ms, pruned_ms,
speedup (dense_ms / pruned_ms), MACs reduction (dense MACs / pruned MACs), efficiency (speedup / MACs
reduction: 1.0 means latency falls as fast as MACs) and agree (both models within the runtime's tolerance).
Weights are random (no downloads): agreement is between the runtime and PyTorch on the same model.

Records are cached in ``bench/results/edge_runtimes.json`` as they finish; a rerun skips the cached ones
(delete the file, or pass ``--fresh``, to measure again).

    python bench/bench_edge.py --quick     # MobileNetV2 at ratio 0.5: minutes
    python bench/bench_edge.py             # every model and ratio; writes the edge_runtimes section
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from _common import FirstOutput
from _results import write_section

import prunekit as pk
from prunekit.demo.run import environment
from prunekit.deploy.runtimes import RUNTIMES, get_runtime
from prunekit.deploy.runtimes.base import first_line
from prunekit.deploy.runtimes.bench import bench_runtime
from prunekit.errors import PruneError

console = Console()
CACHE = Path(__file__).parent / "results" / "edge_runtimes.json"
MODELS = {"mobilenet_v2": 224, "resnet50": 224, "yolo11n": 320, "yolov8n": 320}


def build(
    name: str, ratio: float, size: int | None = None
) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The dense model, a copy pruned at ``ratio`` (0: left dense) and the batch-1 input of ``size`` px."""
    size = size or MODELS[name]
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    if name.startswith("yolo"):
        from prunekit.models.ultralytics import load_yolo, prune_yolo

        dense = load_yolo(f"{name}.yaml")
        for m in dense.modules():  # ultralytics' export settings: a fixed-shape, export-friendly head
            if type(m).__name__ == "Detect":
                m.export, m.format = True, "onnx"
        pruned = copy.deepcopy(dense)
        if ratio:
            prune_yolo(pruned, ratio, imgsz=size)
        return FirstOutput(dense).eval(), FirstOutput(pruned).eval(), x
    import torchvision

    dense = torchvision.models.get_model(name, weights=None).eval()
    pruned = copy.deepcopy(dense)
    if ratio:
        pk.prune(pruned, x, ratio=ratio, round_to=8)
    return dense, pruned, x


def load_cache() -> list[dict]:
    return json.loads(CACHE.read_text())["records"] if CACHE.exists() else []


def save_cache(records: list[dict]) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_name(f".{CACHE.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"machine": environment(), "records": records}, indent=2) + "\n")
    os.replace(tmp, CACHE)


def measure(name: str, ratio: float, runtime: str, runs: int) -> list[dict]:
    dense, pruned, x = build(name, ratio)
    macs = pk.count_macs(dense, x) / pk.count_macs(pruned, x)
    base = {"model": name, "ratio": ratio, "runtime": runtime, "runs": runs, "macs_reduction": macs}
    with tempfile.TemporaryDirectory() as work:
        try:
            rows = bench_runtime(runtime, {"dense": dense, "pruned": pruned}, x, work, reference="dense",
                                 threads=(1, 2), runs=runs, warmup=max(2, runs // 5))  # fmt: skip
        except PruneError as err:
            return [{**base, "threads": t, "error": first_line(err)} for t in (1, 2)]
    records = []
    for threads in (1, 2):
        pick = {r["model"]: r for r in rows if r["threads"] == threads}
        d, p = pick["dense"], pick["pruned"]
        speedup = d["median_ms"] / p["median_ms"]
        records.append({
            **base, "threads": threads, "dense_ms": d["median_ms"], "pruned_ms": p["median_ms"],
            "dense_p90_ms": d["p90_ms"], "pruned_p90_ms": p["p90_ms"], "speedup": speedup,
            "efficiency": speedup / macs, "agree": d["agree"] and p["agree"],
            "agreement": {"dense": d["agreement"], "pruned": p["agreement"]},
        })  # fmt: skip
    return records


def markdown(records: list[dict]) -> str:
    env = environment()
    lines = [
        "## Edge runtimes: dense vs pruned, batch 1 (`bench/bench_edge.py`)",
        "",
        f"{datetime.date.today()}, {env['cpu']}, {env['cores']} cores shared with other jobs (latencies",
        f"are noisy: sequential runs, not interleaved), torch {env['torch']}. Random weights; agree: both",
        "models match PyTorch within the runtime's fp32 tolerance (max abs error / output scale <= 1e-3).",
        "",
        "| model | ratio | runtime | threads | dense ms | pruned ms | speedup | MACs reduction | efficiency "
        "| agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['ratio']} | {r['runtime']} | {r['threads']} | "
                         f"{r['error']} |  |  | {r['macs_reduction']:.2f}x |  |  |")  # fmt: skip
            continue
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['runtime']} | {r['threads']} | {r['dense_ms']:.2f} | "
            f"{r['pruned_ms']:.2f} | {r['speedup']:.2f}x | {r['macs_reduction']:.2f}x | "
            f"{r['efficiency']:.2f} | {'yes' if r['agree'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 at ratio 0.5 only, fewer runs")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated runtimes")
    parser.add_argument("--fresh", action="store_true", help="ignore the cached records")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per setting (quick: 10, else 30)")
    parser.add_argument("--report", action="store_true", help="only write the section from the cache")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else (["mobilenet_v2"] if args.quick else list(MODELS))
    ratios = (0.5,) if args.quick else (0.3, 0.5)
    runs = args.runs or (10 if args.quick else 30)
    records = [] if args.fresh else load_cache()
    for name in models if not args.report else []:
        for ratio in ratios:
            for runtime in args.runtimes.split(","):
                key = (name, ratio, runtime, runs)
                if any((r["model"], r["ratio"], r["runtime"], r.get("runs")) == key for r in records):
                    continue
                if not get_runtime(runtime).available():
                    console.print(f"[yellow]skip {runtime}: not installed[/]")
                    continue
                console.print(f"{name} ratio {ratio} on {runtime} ...")
                records += measure(name, ratio, runtime, runs)
                save_cache(records)
    console.print(markdown(records))
    if not args.quick:
        write_section("edge_runtimes", markdown([r for r in records if r.get("runs") == runs]))


if __name__ == "__main__":
    main()
