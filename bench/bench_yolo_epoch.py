"""What the full budget of ``bench/bench_yolo_pareto.py`` costs, measured instead of run: one training epoch
of each model it trains at the full budget's settings (320 px, batch 16, its optimizer and warm-up, CPU,
``workers=0``) on a subset of the scenes set, scaled to the full set's 2,000 images; one validation pass
scaled to its 400 val images; then the hours the full row list implies (dense rows ``E`` epochs, pruned rows
``R`` epochs plus one validation per epoch, scratch rows ``E + R`` epochs). Writes section ``yolo-epoch`` of
docs/RESULTS.md.

    .venv/bin/python bench/bench_yolo_epoch.py [--n-train 200] [--threads 2] [--models yolo11n,yolov8s]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from _common import common_args, finish, machine_line, markdown_table
from bench_yolo_pareto import FULL, _train_args, random_init

from prunekit.measure import count_macs


def epoch_seconds(cfg: str, data: Path, work: Path) -> dict:
    """Seconds of one training epoch (its batches: ``on_train_epoch_start`` to ``on_train_epoch_end``), of
    the whole ``train()`` call (setup and the final validation too) and of one validation loop
    (``on_val_start`` to ``on_val_end``), for ``cfg`` at the full budget's settings."""
    from ultralytics import YOLO

    from prunekit.models.ultralytics import example_inputs, save_yolo
    from prunekit.models.yolo_train import finetune_yolo

    model = random_init(f"{cfg}.yaml", FULL.seed)
    macs = count_macs(model, example_inputs(model, FULL.imgsz))
    init = save_yolo(model, work / "init" / f"{cfg}.pt")
    marks: dict[str, float] = {}

    def mark(name: str) -> Any:
        def note(_owner: Any) -> None:
            marks[name] = time.perf_counter()
            marks[name + "_cpu"] = time.process_time()

        return note

    yolo = YOLO(str(init))
    for event in ("on_train_epoch_start", "on_train_epoch_end"):
        yolo.add_callback(event, mark(event))
    t0 = time.perf_counter()
    trained = finetune_yolo(
        yolo, data=str(data), epochs=1, name=cfg, val=False, **_train_args(FULL, work / "train")
    )
    run_s = time.perf_counter() - t0
    val = YOLO(str(trained.trainer.last))
    for event in ("on_val_start", "on_val_end"):
        val.add_callback(event, mark(event))
    val.val(
        data=str(data), imgsz=FULL.imgsz, batch=FULL.batch, device="cpu", workers=0, plots=False,
        verbose=False, project=str((work / "val").resolve()), name=cfg, exist_ok=True,
    )  # fmt: skip
    epoch_s = marks["on_train_epoch_end"] - marks["on_train_epoch_start"]
    epoch_cpu = marks["on_train_epoch_end_cpu"] - marks["on_train_epoch_start_cpu"]
    return {"model": cfg, "macs": macs, "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu,
            "setup_s": run_s - epoch_s, "val_s": marks["on_val_end"] - marks["on_val_start"]}  # fmt: skip


def full_hours(rows: dict[str, dict], train_scale: float, val_scale: float) -> dict[str, float]:
    """Hours of the full budget's rows: dense ``E`` epochs (no per-epoch validation, as the bench trains
    them), pruned ``R`` epochs with a validation per epoch (the recipe's stages validate) in two ``train()``
    calls, scratch ``E + R`` epochs for each distinct pruned width set (:func:`scratch_rows`); each
    ``train()`` call adds its setup and final validation. A pruned model's epoch is costed as its dense
    model's (an upper bound: it has fewer MACs); a KD row's teacher forward is not counted."""
    e, r = FULL.dense_epochs, FULL.recovery_epochs

    def cost(model: str, epochs: int, calls: int, val: bool) -> float:
        row = rows[model]
        per_epoch = row["epoch_s"] * train_scale + (row["val_s"] * val_scale if val else 0.0)
        return epochs * per_epoch + calls * row["setup_s"]

    pruned_models = [m for m, _target, _method, _kd in FULL.pruned]
    return {
        "dense": sum(cost(m, e, 1, False) for m in FULL.dense) / 3600,
        "pruned": sum(cost(m, r, 2, True) for m in pruned_models) / 3600,
        "scratch": sum(cost(m, e + r, 1, False) for m, _target in scratch_rows()) / 3600,
    }


def scratch_rows() -> list[tuple[str, str]]:
    """``(model, target)`` of each scratch row the full budget trains: rows of one target cut at one local
    ratio have the same widths and share one (oneshot and sparsity, with and without KD), each gradual
    row (a global ranking on its own training run) has its own.

    >>> len(scratch_rows())
    9
    """
    rows, shared = [], set()
    for model, target, method, _kd in FULL.pruned:
        if method == "gradual":
            rows.append((model, target))
        elif (model, target) not in shared:
            shared.add((model, target))
            rows.append((model, target))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(parents=[common_args(threads=2, quick="yolo11n only, 64 train images")])
    ap.add_argument("--n-train", type=int, default=200, help="training images timed (scaled to 2,000)")
    ap.add_argument("--n-val", type=int, default=40, help="val images timed (scaled to 400)")
    ap.add_argument("--models", default=",".join(FULL.dense), help="models to time (comma-separated)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from prunekit.models.yolo_scenes import make_scenes_dataset

    models = ["yolo11n"] if args.quick else args.models.split(",")
    n_train = 64 if args.quick else args.n_train
    with tempfile.TemporaryDirectory(prefix="yolo_epoch_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data = make_scenes_dataset(work / "scenes", n_train=n_train, n_val=args.n_val, imgsz=FULL.imgsz,
                                   seed=FULL.seed)  # fmt: skip
        gen_s = time.perf_counter() - t0
        rows = []
        for cfg in models:
            rows.append(epoch_seconds(cfg, data, work))
            print(rows[-1], flush=True)
    train_scale, val_scale = FULL.n_train / n_train, FULL.n_val / args.n_val
    per_epoch = {r["model"]: r["epoch_s"] * train_scale for r in rows}
    val_epoch = {r["model"]: r["val_s"] * val_scale for r in rows}
    table = markdown_table(
        ["model", "GMACs @320", f"epoch s ({n_train} img)", "train() setup + final val s",
         f"val loop s ({args.n_val} img)", "s / full epoch (2,000 img)", "s / full val (400 img)",
         "CPU s / full epoch"],
        [[r["model"], f"{r['macs'] / 1e9:.2f}", f"{r['epoch_s']:.1f}", f"{r['setup_s']:.1f}",
          f"{r['val_s']:.1f}", f"{per_epoch[r['model']]:.0f}", f"{val_epoch[r['model']]:.0f}",
          f"{r['epoch_cpu_s'] * train_scale:.0f}"] for r in rows],
        align="lrrrrrrr",
    )  # fmt: skip
    lines = [
        "## YOLO Pareto: what the full budget costs (one epoch measured, then scaled)",
        "",
        "`bench/bench_yolo_epoch.py`: one training epoch of each model at the full Pareto budget's settings"
        f" (imgsz {FULL.imgsz}, batch {FULL.batch}, optimizer {FULL.optimizer}, CPU, workers 0, random"
        f" init) on {n_train} scenes images, its batches timed (ultralytics' epoch start/end callbacks)"
        f" and scaled linearly to {FULL.n_train:,}; one validation loop on {args.n_val} val images scaled"
        f" to {FULL.n_val}; a `train()` call's setup and final validation are shown apart (paid once per"
        f" call). Generating the {n_train + args.n_val} images took {gen_s:.0f} s. Timings were taken on a"
        f" shared 2-core machine (other jobs running; load average {os.getloadavg()[0]:.0f} at the end),"
        " so wall times are an upper-side estimate for an idle one; *CPU s* is the process's CPU time"
        f" (all {args.threads} threads), which the other jobs do not inflate: an idle machine's wall time"
        f" lies between it / {args.threads} and it. A 1-epoch run closes mosaic at once (`close_mosaic`),"
        " so the timed epoch loads plain images; with workers 0 mosaic adds a little data-loading time.",
        "",
        *table,
        "",
    ]
    if set(FULL.dense) <= set(per_epoch):
        hours = full_hours({r["model"]: r for r in rows}, train_scale, val_scale)
        total = sum(hours.values())
        cpu_rows = {r["model"]: {**r, "epoch_s": r["epoch_cpu_s"]} for r in rows}
        cpu_total = sum(full_hours(cpu_rows, train_scale, val_scale).values())
        lines += [
            f"Implied hours of the full row list ({len(FULL.dense)} dense rows x {FULL.dense_epochs}"
            f" epochs, {len(FULL.pruned)} pruned rows x {FULL.recovery_epochs} epochs with validation,"
            f" {len(scratch_rows())} scratch rows (one per distinct width set) x"
            f" {FULL.dense_epochs + FULL.recovery_epochs} epochs; a"
            " pruned model's epoch costed as its dense model's, an upper bound; KD's teacher not"
            f" counted): dense {hours['dense']:.1f} h, pruned {hours['pruned']:.1f} h, scratch"
            f" {hours['scratch']:.1f} h, **total {total:.1f} h** ({total / 24:.1f} days) at the wall times"
            f" measured; at the CPU times (an idle machine, threads not overlapping) {cpu_total:.1f} h, at"
            f" half of them (perfect 2-thread overlap) {cpu_total / 2:.1f} h.",
            "",
        ]
    import ultralytics

    lines.append(machine_line(args.threads, ultralytics=ultralytics.__version__))
    finish("yolo-epoch", "\n".join(lines), args, write=not args.quick)


if __name__ == "__main__":
    main()
