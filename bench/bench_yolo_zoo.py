"""Every model yaml that ships with ultralytics (YOLOv3 to YOLO26, YOLO-World, YOLOE, RT-DETR; detect,
segment, pose, obb, classify, semantic, depth), at its first scale, random weights: prunekit's exactness
check and free prune at ratio 0.5, the yaml-trainable prune, and Torch-Pruning's ``MetaPruner`` on the same
model in the same process. Writes section ``yolo-zoo`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_yolo_zoo.py [--imgsz 128] [--threads 1] [--no-write] [--only STEM ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
from _common import common_args, finish, machine_line, run_in_workers, worker_row
from _peers import metapruner


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
    worker_row(row)


def zoo(paths: list[Path], imgsz: int, threads: int, tp_timeout: int) -> list[dict]:
    def command(path: Path) -> list[str]:
        return [__file__, "--worker", str(path), "--imgsz", str(imgsz), "--threads", str(threads),
                "--tp-timeout", str(tp_timeout)]  # fmt: skip

    def dead(path: Path, why: str, timed_out: bool) -> dict:
        return {"model": path.stem, "pk": {"error": why}}

    rows = run_in_workers(paths, command, tp_timeout + 600, dead)
    for row, path in zip(rows, paths, strict=True):
        row.setdefault("family", path.parent.name)
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
        f"`bench/bench_yolo_zoo.py`, {seconds / 60:.0f} min. "
        + machine_line(args.threads, ultralytics=ultralytics.__version__, torch_pruning=tp.__version__)
        + " Each yaml of `ultralytics/cfg/models` at "
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--tp-timeout", type=int, default=60)
    ap.add_argument("--only", nargs="*", help="yaml stems to run (default: all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker), args.imgsz, args.threads, args.tp_timeout)
        return
    paths = [p for p in yamls() if not args.only or p.stem in args.only]
    t0 = time.perf_counter()
    rows = zoo(paths, args.imgsz, args.threads, args.tp_timeout)
    finish("yolo-zoo", markdown(rows, args, time.perf_counter() - t0), args, write=not args.only)


if __name__ == "__main__":
    main()
