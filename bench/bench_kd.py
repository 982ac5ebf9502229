"""Fine-tuning a 95 %-sparse digits CNN with and without knowledge distillation from its dense model.

One dense DigitsCNN is trained per seed with the demo's recipe (15 epochs, AdamW 3e-3, cosine). For each
sparsity, copies of it are masked globally by magnitude (``prunekit.sparse.sparsify``) and fine-tuned with
``prunekit.finetune`` on the same batches with the same budget (AdamW 1e-3, cosine, ``epochs`` epochs, seed),
once per setting: no KD, and logit KD from the dense model (``kd_alpha``, ``kd_temperature``). No early
stopping and no checkpoint selection: the test accuracy of the final weights is reported (450 test images,
1 image = 0.22 points). KD runs the teacher forward too, so a KD step costs more; the step time is reported.

    .venv/bin/python bench/bench_kd.py --no-write            # print only
    .venv/bin/python bench/bench_kd.py                       # also writes the "kd" section of docs/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _common import common_args, finish, machine_line

from prunekit.demo.data import load_splits, make_loaders
from prunekit.demo.model import build_model
from prunekit.recover import accuracy, finetune, train
from prunekit.sparse import sparsify

SETTINGS = {"no KD": None, "KD a=0.5 T=4": (0.5, 4.0), "KD a=0.9 T=4": (0.9, 4.0)}


def run_seed(seed: int, sparsities: list[float], budgets: list[int]) -> list[dict]:
    splits = load_splits()
    train_loader, test_loader = make_loaders(splits, batch_size=64, seed=seed)
    dense = build_model(seed)
    train(
        dense,
        train_loader,
        epochs=15,
        lr=3e-3,
        weight_decay=1e-4,
        schedule="cosine",
        seed=seed,
        progress=False,
    )
    dense_acc = accuracy(dense, test_loader)
    rows = []
    for sparsity in sparsities:
        for epochs in budgets:
            for name, kd in SETTINGS.items():
                model = copy.deepcopy(dense)
                sparsify(model, sparsity, scope="global")
                before = accuracy(model, test_loader)
                loader = make_loaders(splits, batch_size=64, seed=seed)[0]  # the same batches for every run
                extra = {} if kd is None else {"teacher": dense, "kd_alpha": kd[0], "kd_temperature": kd[1]}
                res = finetune(model, loader, epochs=epochs, lr=1e-3, schedule="cosine", seed=seed,
                               progress=False, **extra)  # fmt: skip
                rows.append(
                    {
                        "seed": seed,
                        "sparsity": sparsity,
                        "epochs": epochs,
                        "setting": name,
                        "dense": dense_acc,
                        "before": before,
                        "after": accuracy(model, test_loader),
                        "step_ms": 1000 * res.wall_seconds / res.steps,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], machine: str) -> str:
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "## Fine-tuning with knowledge distillation (digits CNN, global magnitude masks)",
        "",
        f"`bench/bench_kd.py`. {machine} Seeds {', '.join(map(str, seeds))}. Fine-tune: AdamW "
        "lr 1e-3, cosine, batch 64, same batches for every setting, final weights (no checkpoint selection). "
        "Test set: 450 "
        "images (1 image = 0.22 pt).",
        "",
        "| sparsity | FT epochs | setting | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | mean drop vs dense (pt) | step (ms) |",
        "|---:|---:|---|" + "---:|" * (len(seeds) + 3),
    ]
    keys = sorted({(r["sparsity"], r["epochs"]) for r in rows})
    for sparsity, epochs in keys:
        for name in SETTINGS:
            sel = [r for r in rows if (r["sparsity"], r["epochs"], r["setting"]) == (sparsity, epochs, name)]
            accs = [r["after"] for r in sorted(sel, key=lambda r: r["seed"])]
            drop = statistics.mean(r["dense"] - r["after"] for r in sel) * 100
            step = statistics.median(r["step_ms"] for r in sel)
            cells = " | ".join(f"{a:.2%}" for a in accs)
            lines.append(
                f"| {sparsity:.0%} | {epochs} | {name} | {cells} | {statistics.mean(accs):.2%} | "
                f"{drop:+.2f} | {step:.1f} |"
            )
    dense = {r["seed"]: r["dense"] for r in rows}
    before = {(r["seed"], r["sparsity"]): r["before"] for r in rows}
    lines += [
        "",
        "Dense: " + ", ".join(f"seed {s} {a:.2%}" for s, a in sorted(dense.items())) + ". Before fine-tune: "
        + ", ".join(f"seed {s} at {sp:.0%}: {a:.2%}" for (s, sp), a in sorted(before.items())) + ".",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.95, 0.98])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 5], help="fine-tune epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for seed in args.seeds for row in run_seed(seed, args.sparsities, args.budgets)]
    finish("kd", markdown(rows, machine_line(args.threads)), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
