"""Where OpenVINO spends a model's time, by layer type, dense and cut to the bone: what its floor is made of.

Exports a model of ``bench/bench_edge.py``'s zoo dense and pruned at ``--ratio`` (default 0.9:
bench_edge's yaml cut, which keeps 0.36 of YOLO11n's MACs there) to OpenVINO through prunekit's runtime
seam, compiles both with ``PERF_COUNT`` on (1 thread, f32) and after a warm-up runs each ``--runs`` times,
alternated. OpenVINO's own per-node profile of the last run, summed by executed kernel and operation type,
is printed with each one's share of the model's time. A kernel whose milliseconds hardly change between the
dense and the pruned model is part of the floor that ``bench/edge_floor.py`` fits.

    python bench/probe_openvino_floor.py --model yolo11n@320 [--ratio 0.9] [--runs 50] [--json out.json]

A probe: it writes no RESULTS section (quote its output in a hand-written note).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_edge import build, parse_model

from prunekit.deploy.runtimes import arrays, get_runtime
from prunekit.measure.macs import count_macs


def profile(xml: str, x: np.ndarray, runs: int) -> tuple[float, dict[str, float]]:
    """(median ms of ``runs`` calls, ms per executed kernel and operation type in the last call)."""
    import openvino as ov

    compiled = ov.Core().compile_model(
        xml, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
    )
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer([x])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer([x])
        times.append((time.perf_counter() - t0) * 1e3)
    by_type: dict[str, float] = defaultdict(float)
    for node in request.get_profiling_info():
        if str(node.status).endswith("EXECUTED"):  # kernel (operation): "brgconv_avx512_f32 (Convolution)"
            by_type[f"{node.exec_type} ({node.node_type})"] += node.real_time.total_seconds() * 1e3
    return statistics.median(times), dict(by_type)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolo11n@320", help="NAME@SIZE of bench_edge's zoo")
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    name, size = parse_model(args.model)
    dense, pruned, x = build(name, args.ratio, size)
    runtime = get_runtime("openvino")
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in (("dense", dense), ("pruned", pruned)):
            art = runtime.export(model, x, Path(tmp) / f"{label}.xml")
            out[label] = {"xml": art.path, "macs": count_macs(model, x)}
        xs = arrays(x)[0]
        for _ in range(2):  # alternated, the second pass kept
            for label in ("dense", "pruned"):
                ms, by_type = profile(out[label]["xml"], xs, args.runs)
                out[label].update(ms=ms, by_type=by_type)
    d, p = out["dense"], out["pruned"]
    kept, share = p["macs"] / d["macs"], p["ms"] / d["ms"]
    print(f"{args.model}, ratio {args.ratio}: MACs kept {kept:.3f}; median {d['ms']:.2f} ms dense, "
          f"{p['ms']:.2f} ms pruned ({share:.3f} of dense)")  # fmt: skip
    types = sorted(set(d["by_type"]) | set(p["by_type"]), key=lambda t: -d["by_type"].get(t, 0.0))
    total_d, total_p = sum(d["by_type"].values()), sum(p["by_type"].values())
    header = f"{'dense ms':>10}{'share':>8}{'pruned ms':>11}{'share':>8}{'pruned/dense':>14}"
    print(f"{'kernel (operation)':<48}{header}")
    for t in types:
        a, b = d["by_type"].get(t, 0.0), p["by_type"].get(t, 0.0)
        print(f"{t:<48}{a:>10.3f}{a / total_d:>8.1%}{b:>11.3f}{b / total_p:>8.1%}"
              f"{(b / a if a else float('nan')):>14.2f}")  # fmt: skip
    print(f"{'sum of the profile':<48}{total_d:>10.3f}{'':>8}{total_p:>11.3f}")
    if args.json:
        keep = {k: {"ms": v["ms"], "macs": v["macs"], "by_type": v["by_type"]} for k, v in out.items()}
        Path(args.json).write_text(json.dumps({"model": args.model, "ratio": args.ratio, **keep}, indent=1))


if __name__ == "__main__":
    main()
