"""How much the yaml-trainable prune (``prune_yolo(..., stock_modules=False)``, whose ``model.yaml``
ultralytics' ``train()`` rebuilds through ``Prunekit<Layer>`` rows) gives up against the free prune
(``trainable=False``): MACs and params kept per model and ratio, random weights, 80 classes, and the layers
whose groups it keeps whole with the reason; also the default ``stock_modules=True`` (a yaml naming only
ultralytics' modules). Writes section ``yolo-yaml`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_yolo_yaml.py [--imgsz 320] [--threads 1] [--no-write] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import common_args, finish, machine_line, markdown_table

MODELS = ("yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml")
RATIOS = (0.3, 0.5, 0.7)


def one(cfg: str, ratio: float, imgsz: int) -> dict:
    from prunekit.models.ultralytics import load_yolo, prune_yolo

    t0 = time.perf_counter()
    free = prune_yolo(load_yolo(cfg), ratio=ratio, imgsz=imgsz, trainable=False)
    model = load_yolo(cfg)
    yaml = prune_yolo(model, ratio=ratio, imgsz=imgsz, stock_modules=False)
    stock = prune_yolo(load_yolo(cfg), ratio=ratio, imgsz=imgsz, stock_modules=True)
    stated = [row[2] for row in model.yaml["backbone"] + model.yaml["head"] if row[2].startswith("Prunekit")]
    why = yaml.plan.meta["ultralytics"]["kept_for_yaml_why"]
    return {
        "model": cfg.removesuffix(".yaml"),
        "ratio": ratio,
        "free_macs": free.macs_ratio,
        "yaml_macs": yaml.macs_ratio,
        "free_params": free.params_ratio,
        "yaml_params": yaml.params_ratio,
        "stock_macs": stock.macs_ratio,
        "stock_recut": len(stock.plan.meta["ultralytics"]["recut_for_yaml"]),
        "stock_kept": len(stock.plan.meta["ultralytics"]["kept_for_yaml"]),
        "kept": len(yaml.plan.meta["ultralytics"]["kept_for_yaml"]),
        "stated": ", ".join(sorted(set(stated))),
        "why": "; ".join(sorted(set(why.values()))) or "—",
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(parents=[common_args(quick="yolov8n at ratio 0.5 only, imgsz 128")])
    ap.add_argument("--imgsz", type=int, default=320)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models, ratios, imgsz = (MODELS[:1], (0.5,), 128) if args.quick else (MODELS, RATIOS, args.imgsz)
    rows = []
    for cfg in models:
        for ratio in ratios:
            rows.append(one(cfg, ratio, imgsz))
            print(rows[-1], flush=True)
    header = ["model", "ratio", "MACs free", "MACs yaml", "yaml / free", "MACs stock-modules yaml"]
    header += ["stock-modules groups re-cut / kept", "params free / yaml", "groups kept", "stated rows"]
    header += ["kept because"]
    table = markdown_table(
        header,
        [
            [
                r["model"],
                r["ratio"],
                f"{r['free_macs']:.3f}",
                f"{r['yaml_macs']:.3f}",
                f"{r['yaml_macs'] / r['free_macs']:.2f}",
                f"{r['stock_macs']:.3f}",
                f"{r['stock_recut']} / {r['stock_kept']}",
                f"{r['free_params']:.3f} / {r['yaml_params']:.3f}",
                r["kept"],
                r["stated"],
                r["why"],
            ]
            for r in rows
        ],
        align="lrrrrrrrrll",
    )
    import ultralytics

    text = "\n".join(
        [
            "## YOLO: yaml-trainable prune vs free prune",
            "",
            f"Random weights, 80 classes, imgsz {imgsz}, L2 criterion, local scope; MACs kept (after/before)."
            " *free*: `prune_yolo(..., trainable=False)`; *yaml*: `stock_modules=False`, whose checkpoint "
            "ultralytics' `train()` rebuilds once `prunekit.models.yolo_modules.register()` ran (every "
            "width, derived ones and widths that are not multiples of 8 included, stated through "
            "`Prunekit<Layer>` rows, C2f/C2PSA hidden widths `c` too); *stock-modules*: the default "
            "`stock_modules=True`, a yaml naming only ultralytics' modules (widths rounded to multiples of "
            "8), which `yolo train` rebuilds in a process without prunekit; *re-cut / kept*: its groups cut "
            "again to a width ultralytics derives (a C3k2 bottleneck's is half its block's) / left whole. "
            "*groups kept*: groups the `stock_modules=False` yaml could not state and so left whole; "
            "*kept because*: the layer and reason "
            "(`plan.meta['ultralytics']['kept_for_yaml_why']`). `bench/bench_yolo_yaml.py`.",
            "",
            *table,
            "",
            machine_line(args.threads, ultralytics=ultralytics.__version__),
        ]
    )
    finish("yolo-yaml", text, args, write=not args.quick)


if __name__ == "__main__":
    main()
