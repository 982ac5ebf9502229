"""Every model yaml that ships with ultralytics (YOLOv3 to YOLO26, YOLO-World, YOLOE, RT-DETR; detect,
segment, pose, obb, classify, semantic, depth), at its first scale, random weights: prunekit's exactness
check and free prune at ratio 0.5, the yaml-trainable prune, and Torch-Pruning's ``MetaPruner`` on the same
model in the same process. Writes section ``yolo-zoo`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_yolo_zoo.py [--imgsz 128] [--threads 1] [--no-write] [--only STEM ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _peers import metapruner  # noqa: E402
from _results import write_section  # noqa: E402


def yamls() -> list[Path]:
    import ultralytics

    return sorted((Path(ultralytics.__file__).parent / "cfg" / "models").glob("*/*.yaml"))


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:110]


def run_prunekit(path: Path, imgsz: int) -> dict:
    from prunekit.models.ultralytics import check_yolo, load_yolo, prune_yolo

    model = load_yolo(str(path))
    rep = check_yolo(model, ratio=0.5, imgsz=imgsz)
    res = prune_yolo(model, ratio=0.5, imgsz=imgsz, trainable=False)
    row = {
        "task": getattr(model, "task", None) or type(model).__name__,
        "exact": bool(rep.ok and not rep.rule_errors),
        "max_abs_err": rep.max_abs_err,
        "replayed": len(rep.replayed),
        "macs": res.macs_after / res.macs_before,
        "params": res.params_ratio,
        "seconds": res.seconds["plan"] + res.seconds["apply"],
    }
    try:
        row["yaml_macs"] = prune_yolo(load_yolo(str(path)), ratio=0.5, imgsz=imgsz).macs_ratio
    except Exception as exc:  # a model whose yaml cannot state its pruned widths: reported, not fatal
        row["yaml_macs"] = None
        row["yaml_why"] = _first_line(exc)
    return row


def run_tp(path: Path, imgsz: int, timeout: int) -> dict:
    """Torch-Pruning as its YOLOv8 recipe uses it: the detection/classification head left out."""
    from prunekit.models.ultralytics import HeadOutputs, example_inputs, load_yolo
    from prunekit.structured.oracle import run_outputs

    detector = load_yolo(str(path))
    view, x = HeadOutputs(detector), example_inputs(detector, imgsz)
    shapes = [o.shape for o in run_outputs(view, x)]
    res = metapruner(view, x, [detector.model[-1]], timeout)
    if res["status"] != "ok":
        return res
    try:
        after = [o.shape for o in run_outputs(view, x)]
    except Exception as exc:
        return {"status": "broken forward: " + _first_line(exc)}
    return res if after == shapes else {"status": "output shapes changed"}


def worker(path: Path, imgsz: int, threads: int, tp_timeout: int) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    row: dict = {"model": path.stem, "family": path.parent.name}
    try:
        row["pk"] = run_prunekit(path, imgsz)
    except Exception as exc:
        row["pk"] = {"error": _first_line(exc)}
    try:
        row["tp"] = run_tp(path, imgsz, tp_timeout)
    except Exception as exc:  # building the model failed before Torch-Pruning ran
        row["tp"] = {"status": "not run: " + _first_line(exc)}
    print("ROW " + json.dumps(row), flush=True)


def zoo(paths: list[Path], imgsz: int, threads: int, tp_timeout: int) -> list[dict]:
    rows = []
    for path in paths:
        cmd = [sys.executable, __file__, "--worker", str(path), "--imgsz", str(imgsz)]
        cmd += ["--threads", str(threads), "--tp-timeout", str(tp_timeout)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=tp_timeout + 600, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:100]
            row = json.loads(line[4:]) if line else {"model": path.stem, "pk": {"error": f"died: {err}"}}
        except subprocess.TimeoutExpired:
            row = {"model": path.stem, "pk": {"error": "worker killed (timeout)"}}
        row.setdefault("family", path.parent.name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    import torch_pruning as tp
    import ultralytics

    pk_ok = [r for r in rows if r["pk"].get("exact")]
    built = [r for r in rows if "error" not in r["pk"]]
    tp_ok = [r for r in rows if r.get("tp", {}).get("status") == "ok"]
    both = [r for r in tp_ok if r["pk"].get("exact")]
    speed = [r["tp"]["seconds"] / r["pk"]["seconds"] for r in both]
    lines = [
        "## Ultralytics model zoo: every shipped yaml",
        "",
        f"`bench/bench_yolo_zoo.py`, {datetime.date.today()}; {platform.machine()}, "
        f"{args.threads} torch thread(s), torch {torch.__version__}, ultralytics {ultralytics.__version__}, "
        f"torch-pruning {tp.__version__}; {seconds / 60:.0f} min. Each yaml of `ultralytics/cfg/models` at "
        f"its first scale (ultralytics' default when the name gives none), random weights, {args.imgsz} px, "
        "each in its own process. *exact*: `check_yolo(model, 0.5)` — the pruned copy equals the masked "
        "reference on every head output (near-ties in top-k replayed: *replayed*). *MACs / params*: kept "
        "fractions after `prune_yolo(ratio=0.5, trainable=False)`; *yaml MACs*: the default, yaml-trainable "
        "prune (widths ultralytics' own `train()` rebuilds). *s*: planning + cutting (prunekit, includes its "
        "verification forward) vs `MetaPruner` construction + `step()` with the head in `ignored_layers` "
        "(Torch-Pruning's YOLOv8 recipe) on the same model; Torch-Pruning *ok* = no error, forward works, "
        "head outputs keep their shapes.",
        "",
        f"- prunekit: **{len(pk_ok)}/{len(rows)} exact**; {len(rows) - len(built)} could not be built here "
        "(errors in the table).",
        f"- Torch-Pruning: {len(tp_ok)}/{len(rows)} ok.",
    ]
    if speed:
        lines.append(
            f"- On the {len(both)} both prune: Torch-Pruning time / prunekit time median "
            f"{statistics.median(speed):.1f}x (min {min(speed):.1f}x, max {max(speed):.1f}x)."
        )
    lines += [
        "",
        "| family | model | task | exact | max abs err | replayed | MACs | params | yaml MACs | prunekit s "
        "| Torch-Pruning |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        pk, tpr = r["pk"], r.get("tp", {})
        tp_cell = f"{tpr['seconds']:.2f} s" if tpr.get("status") == "ok" else tpr.get("status", "—")
        if "error" in pk:
            cells = f"| {r['family']} | {r['model']} | — | error: {pk['error']} |"
            lines.append(cells + f" | | | | | | {tp_cell} |")
            continue
        yaml = f"{pk['yaml_macs']:.2f}" if pk.get("yaml_macs") is not None else "no (see --free)"
        lines.append(
            f"| {r['family']} | {r['model']} | {pk['task']} | {'yes' if pk['exact'] else '**no**'} | "
            f"{pk['max_abs_err']:.1e} | {pk['replayed']} | {pk['macs']:.2f} | {pk['params']:.2f} | {yaml} | "
            f"{pk['seconds']:.2f} | {tp_cell} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tp-timeout", type=int, default=60)
    ap.add_argument("--only", nargs="*", help="yaml stems to run (default: all)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker), args.imgsz, args.threads, args.tp_timeout)
        return
    paths = [p for p in yamls() if not args.only or p.stem in args.only]
    t0 = time.perf_counter()
    rows = zoo(paths, args.imgsz, args.threads, args.tp_timeout)
    text = markdown(rows, args, time.perf_counter() - t0)
    if args.no_write:
        print(text)
    else:
        print(f"wrote {write_section('yolo-zoo', text)}")


if __name__ == "__main__":
    main()
