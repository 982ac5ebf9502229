"""Unstructured global magnitude pruning on the digits CNN: prunekit against torch.nn.utils.prune, same run.

One dense DigitsCNN is trained per seed with the demo's recipe. For each sparsity (90 %, 95 %) two copies of
the same dense weights are pruned over the same layers (every Conv2d/Linear weight), globally by magnitude:

  prunekit: ``prunekit.sparse.sparsify(model, s, scope="global")``   (masks via torch.nn.utils.parametrize)
  torch:    ``torch.nn.utils.prune.global_unstructured(layers, pruning_method=L1Unstructured, amount=s)``

and fine-tuned with the same budget, optimizer, schedule and seed. Reported: accuracy (dense, pruned before
fine-tune, after), the drop in points, achieved global sparsity, how many mask entries the two agree on, the
wall time of the pruning call itself and of one masked training step (medians, methods alternating), and
the prunekit/torch time ratios. Targets: dense >= 97 %, drop <= 0.5 points at 90 %, <= 1 point at 95 %.

    .venv/bin/python bench/bench_unstructured.py     # writes the "unstructured" section of docs/RESULTS.md
    .venv/bin/python bench/bench_unstructured.py --seeds 0 --no-write   # one seed, print only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch
from _common import common_args, finish, machine_line
from rich.console import Console
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from prunekit.demo.data import load_splits
from prunekit.demo.model import build_model
from prunekit.demo.stages import DemoConfig, DemoContext, train_dense
from prunekit.recover import accuracy, train
from prunekit.sparse import get_mask, sparsify

SPARSITIES = (0.9, 0.95)
MAX_DROP = {0.9: 0.5, 0.95: 1.0}  # points
MIN_DENSE = 0.97
TIMING_REPEATS = 9
STEPS_PER_REPEAT = 5


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_prunekit(model: nn.Module, sparsity: float) -> None:
    sparsify(model, sparsity, scope="global")


def prune_torch(model: nn.Module, sparsity: float) -> None:
    layers = [(m, "weight") for _, m in prunable(model)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)


PRUNERS = {"prunekit": prune_prunekit, "torch": prune_torch}


def keep_masks(model: nn.Module, method: str) -> list[torch.Tensor]:
    if method == "prunekit":
        return [get_mask(m).bool() for _, m in prunable(model)]
    return [m.weight_mask.bool() for _, m in prunable(model)]


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight.detach() for _, m in prunable(model)]  # effective (masked) weights for both methods
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def time_interleaved(dense: nn.Module, sparsity: float, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Median wall times (ms) per method, the methods alternating so that load from other jobs hits both.

    ``prune_ms``: the pruning call on a fresh copy of ``dense``. ``step_ms``: one masked training step
    (forward, backward, AdamW step) on a fixed batch: parametrize (prunekit) vs a forward pre-hook (torch).
    """
    times: dict[str, dict[str, list[float]]] = {m: {"prune_ms": [], "step_ms": []} for m in PRUNERS}
    models, optims = {}, {}
    for method, fn in PRUNERS.items():
        models[method] = copy.deepcopy(dense)
        fn(models[method], sparsity)
        optims[method] = torch.optim.AdamW(models[method].parameters(), lr=1e-4)
    for _ in range(TIMING_REPEATS):
        for method, fn in PRUNERS.items():
            fresh = copy.deepcopy(dense)
            start = time.perf_counter()
            fn(fresh, sparsity)
            times[method]["prune_ms"].append((time.perf_counter() - start) * 1000)
            for _ in range(STEPS_PER_REPEAT):
                start = time.perf_counter()
                loss = F.cross_entropy(models[method](batch[0]), batch[1])
                optims[method].zero_grad(set_to_none=True)
                loss.backward()
                optims[method].step()
                times[method]["step_ms"].append((time.perf_counter() - start) * 1000)
    return {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}


def run_seed(seed: int, config: DemoConfig, console: Console) -> dict:
    config = dataclasses.replace(config, seed=seed)  # init, batch order and fine-tune all follow the seed
    splits = load_splits()
    ctx = DemoContext(config, splits, console, progress=False)
    t0 = time.perf_counter()
    dense = train_dense(build_model(seed), ctx)
    dense_s = time.perf_counter() - t0
    dense_acc = accuracy(dense, ctx.test_loader())
    print(f"seed {seed}: dense {100 * dense_acc:.2f}% ({dense_s:.1f} s)", flush=True)
    out = {"seed": seed, "dense_accuracy": dense_acc, "dense_train_s": dense_s, "sparsities": {}}
    for sparsity in SPARSITIES:
        per_method, masks = {}, {}
        timings = time_interleaved(dense, sparsity, next(iter(ctx.train_loader())))
        for method, fn in PRUNERS.items():
            model = copy.deepcopy(dense)
            fn(model, sparsity)
            masks[method] = keep_masks(model, method)
            before = accuracy(model, ctx.test_loader())
            train(
                model,
                ctx.train_loader(),
                epochs=config.finetune_epochs,
                lr=config.finetune_lr,
                schedule="cosine",
                progress=False,
                seed=config.seed,
            )
            after = accuracy(model, ctx.test_loader())
            per_method[method] = {
                "accuracy_pruned": before,
                "accuracy_finetuned": after,
                "drop_points": 100 * (dense_acc - after),
                "sparsity": weight_sparsity(model),
                **timings[method],
            }
            print(
                f"  {sparsity:.0%} {method:8s}: pruned {100 * before:.2f}% -> fine-tuned {100 * after:.2f}% "
                f"(drop {100 * (dense_acc - after):+.2f} pt), prune {per_method[method]['prune_ms']:.2f} ms",
                flush=True,
            )
        same = sum(int((a == b).sum()) for a, b in zip(masks["prunekit"], masks["torch"], strict=True))
        total = sum(a.numel() for a in masks["prunekit"])
        per_method["mask_agreement"] = same / total
        out["sparsities"][sparsity] = per_method
    return out


def check_targets(runs: list[dict]) -> list[tuple[str, bool, str]]:
    checks = []
    worst_dense = min(r["dense_accuracy"] for r in runs)
    checks.append(
        (f"dense accuracy >= {MIN_DENSE:.0%}", worst_dense >= MIN_DENSE, f"{100 * worst_dense:.2f}%")
    )
    for sparsity, limit in MAX_DROP.items():
        worst = max(r["sparsities"][sparsity]["prunekit"]["drop_points"] for r in runs)
        checks.append((f"{sparsity:.0%} + fine-tune: drop <= {limit} pt", worst <= limit, f"{worst:+.2f} pt"))
    return checks


def markdown(runs: list[dict], config: DemoConfig, machine: str, checks: list) -> str:
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [
        "## Unstructured global magnitude pruning: prunekit vs torch.nn.utils.prune (digits CNN)",
        "",
        f"`bench/bench_unstructured.py`. {machine} "
        "Machine shared with other jobs: wall times are indicative.",
        "",
        f"Data: scikit-learn digits, 1,347 train / 450 test images (1 image = 0.22 pt). Model: DigitsCNN, "
        f"160,074 parameters, 159,264 prunable (all Conv2d/Linear weights). "
        f"Dense: {config.epochs} epochs AdamW lr {config.lr:g}, wd {config.weight_decay:g}, cosine. "
        "Fine-tune (both methods identical): "
        f"{config.finetune_epochs} epochs AdamW lr {config.finetune_lr:g}, cosine, same batches. "
        f"Seeds (init, batch order): {seeds}.",
        "",
        "| seed | sparsity | method | dense | pruned, no FT | after FT | drop (pt) | achieved sparsity "
        "| prune call (ms) | masked train step (ms) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        for sparsity, res in r["sparsities"].items():
            for method in ("prunekit", "torch"):
                m = res[method]
                lines.append(
                    f"| {r['seed']} | {sparsity:.0%} | {method} | {100 * r['dense_accuracy']:.2f}% "
                    f"| {100 * m['accuracy_pruned']:.2f}% | {100 * m['accuracy_finetuned']:.2f}% "
                    f"| {m['drop_points']:+.2f} | {100 * m['sparsity']:.3f}% | {m['prune_ms']:.2f} "
                    f"| {m['step_ms']:.2f} |"
                )
    lines += [
        "",
        f"prunekit / torch, same run. Times: medians of {TIMING_REPEATS} pruning calls and "
        f"{TIMING_REPEATS * STEPS_PER_REPEAT} training steps (batch 64) per method, the two methods "
        "alternating. Mask agreement: share of the 159,264 mask entries that are equal.",
        "",
    ]
    lines += [
        "| seed | sparsity | mask agreement | prune-call time ratio | train-step time ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        for sparsity, res in r["sparsities"].items():
            p, t = res["prunekit"], res["torch"]
            lines.append(
                f"| {r['seed']} | {sparsity:.0%} | {100 * res['mask_agreement']:.3f}% "
                f"| {p['prune_ms'] / t['prune_ms']:.2f}x | {p['step_ms'] / t['step_ms']:.2f}x |"
            )
    if all(res["mask_agreement"] == 1.0 for r in runs for res in r["sparsities"].values()):
        lines += [
            "",
            "Both methods mask exactly the same weights and the fine-tune is the same computation, so their "
            "accuracies match image for image: the comparison is of the pruning call's speed and of the "
            "training-step cost of a parametrization against a forward pre-hook.",
        ]
    lines += ["", "| target | result | measured (worst seed) |", "|---|---|---:|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |" for name, ok, value in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    console = Console()
    config = DemoConfig(threads=args.threads)
    runs = [run_seed(seed, config, console) for seed in args.seeds]
    checks = check_targets(runs)
    text = markdown(runs, config, machine_line(args.threads), checks)
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    finish("unstructured", text, args)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
