"""Pruning schedules on the digits CNN: gradual vs one-shot vs iterative at equal budgets; lottery tickets.

Part 1 ("schedules" section). One dense DigitsCNN per seed (the demo's recipe: 15 epochs AdamW, cosine).
From those dense weights, each method gets the SAME post-dense budget of ``--budget`` epochs (AdamW lr 1e-3,
cosine) and reaches the same global unstructured sparsity over all Conv/Linear weights:

  one-shot:  prunekit.schedules.one_shot to s, then the whole budget as fine-tuning (one cosine);
  iterative: prunekit.schedules.iterative_prune, 3 geometric steps, budget/3 epochs (a cosine) after each;
  gradual:   prunekit.schedules.GradualPruner (Zhu & Gupta cubic) from step 0 to 2/3 of the budget, masks
             updated every half epoch or every quarter epoch (two rows), pruner.step() after every optimizer
             step, inside one cosine over the whole budget.

Part 2 ("lottery" section). prunekit.lottery_ticket, 8 rounds pruning 36 % of the remaining weights per
round (remaining 100, 64, 41, 26, 17, 11, 6.9, 4.4, 2.8 %), global magnitude, every run ``--lt-epochs`` epochs
(AdamW lr 3e-3, cosine, the same batch order every run): rewinding to initialisation (with the random
re-initialisation control of each round's mask) and rewinding to iteration k (one epoch).

    .venv/bin/python bench/bench_schedules.py               # writes both sections of docs/RESULTS.md
    .venv/bin/python bench/bench_schedules.py --no-write --seeds 0 --lt-rounds 2   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable

import torch
from _common import common_args, finish, machine_line
from rich.console import Console
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from prunekit.demo.data import load_splits, make_loaders
from prunekit.demo.model import build_model
from prunekit.demo.stages import DemoConfig, DemoContext, train_dense
from prunekit.recover import accuracy
from prunekit.schedules import GradualPruner, TrainRun, iterative_prune, lottery_ticket, one_shot

FT_LR = 1e-3
LT_LR = 3e-3
WEIGHT_DECAY = 1e-4
ITERATIVE_STEPS = 3
LT_RATE = 0.36
GRADUAL_EVERY = {"gradual, every 1/2 epoch": 2, "gradual, every 1/4 epoch": 4}  # label -> updates per epoch
METHODS = ("one-shot", "iterative", *GRADUAL_EVERY)


def fit(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    seed: int,
    on_step: Callable[[], object] | None = None,
) -> None:
    """AdamW + cosine over ``epochs`` (as prunekit.recover.train), calling ``on_step()`` after each step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if on_step is not None:
                    on_step()


def train_loader(splits, seed: int) -> DataLoader:
    return make_loaders(splits, batch_size=64, seed=seed)[0]


def run_method(method: str, dense: nn.Module, sparsity: float, budget: int, splits, seed: int, test) -> dict:
    model = copy.deepcopy(dense)
    loader = train_loader(splits, seed)
    start = time.perf_counter()
    if method == "one-shot":
        res = one_shot(model, sparsity, train_fn=lambda m: fit(m, loader, epochs=budget, lr=FT_LR, seed=seed))
        achieved = res.sparsity
    elif method == "iterative":
        per_step = budget // ITERATIVE_STEPS
        res = iterative_prune(
            model,
            lambda m: fit(m, loader, epochs=per_step, lr=FT_LR, seed=seed),
            final_sparsity=sparsity,
            steps=ITERATIVE_STEPS,
        )
        achieved = res.sparsity
    else:
        steps_per_epoch = len(loader)
        frequency = steps_per_epoch // GRADUAL_EVERY[method]
        end = (2 * budget * steps_per_epoch // 3) // frequency * frequency
        pruner = GradualPruner(model, sparsity, start_step=0, end_step=end, frequency=frequency)
        fit(model, loader, epochs=budget, lr=FT_LR, seed=seed, on_step=pruner.step)
        achieved = pruner.sparsity()
    seconds = time.perf_counter() - start
    return {"accuracy": accuracy(model, test), "sparsity": achieved, "seconds": seconds}


def part_schedules(args, splits, test, console: Console) -> dict:
    runs = []
    for seed in args.seeds:
        ctx = DemoContext(DemoConfig(seed=seed), splits, console, progress=False)
        dense = train_dense(build_model(seed), ctx)
        dense_acc = accuracy(dense, test)
        print(f"seed {seed}: dense {100 * dense_acc:.2f}%", flush=True)
        row = {"seed": seed, "dense": dense_acc, "results": {}}
        for sparsity in args.sparsities:
            for method in METHODS:
                out = run_method(method, dense, sparsity, args.budget, splits, seed, test)
                row["results"][(sparsity, method)] = out
                print(
                    f"  {sparsity:.0%} {method:9s} {100 * out['accuracy']:.2f}% "
                    f"(sparsity {100 * out['sparsity']:.3f}%, {out['seconds']:.1f} s)",
                    flush=True,
                )
        runs.append(row)
    return {"runs": runs, "steps_per_epoch": len(train_loader(splits, 0))}


def part_lottery(args, splits, test) -> dict:
    k = len(train_loader(splits, args.lt_seed))  # rewind point for late rewinding: after one epoch

    def train_fn(model: nn.Module, run: TrainRun) -> None:
        loader = train_loader(splits, args.lt_seed)  # a fresh loader: the same batch order every run
        fit(model, loader, epochs=args.lt_epochs, lr=LT_LR, seed=args.lt_seed, on_step=run.step)

    def eval_fn(model: nn.Module) -> float:
        return accuracy(model, test)

    out = {"k": k}
    for name, rewind, control in (("init", "init", True), ("late", k, False)):
        start = time.perf_counter()
        res = lottery_ticket(
            build_model(args.lt_seed),
            train_fn,
            rounds=args.lt_rounds,
            rate=LT_RATE,
            rewind=rewind,
            eval_fn=eval_fn,
            random_reinit_control=control,
            seed=1000,
        )
        out[name] = res
        out[f"{name}_seconds"] = time.perf_counter() - start
        for r in res.rounds:
            ctrl = "" if r.control_metric is None else f", random re-init {100 * r.control_metric:.2f}%"
            print(
                f"  lottery rewind={rewind}: {100 * r.remaining:6.2f}% left -> {100 * r.metric:.2f}%{ctrl}",
                flush=True,
            )
    return out


def header(machine: str, seconds: tuple[float, float], what: str) -> list[str]:
    took = f" This part took {seconds[0] / 60:.1f} min of the script's {seconds[1] / 60:.1f} min."
    return [
        f"`bench/bench_schedules.py`. {machine} Machine shared with other jobs.{took}",
        "",
        f"Data: scikit-learn digits, 1,347 train / 450 test images (1 image = 0.22 pt). {what}",
    ]


def schedules_markdown(data: dict, args, machine: str, seconds: tuple[float, float]) -> str:
    runs = data["runs"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    gradual_end = f"2/3 of the budget ({2 * args.budget // 3} epochs)"
    spe = data["steps_per_epoch"]
    gradual_desc = []
    for per_epoch in GRADUAL_EVERY.values():
        frequency = spe // per_epoch
        n = (2 * args.budget * spe // 3) // frequency
        gradual_desc.append(f"every {frequency} steps (1/{per_epoch} epoch, n = {n} pruning steps)")
    lines = [
        "## Gradual vs one-shot vs iterative pruning at equal budgets (digits CNN, global unstructured)",
        "",
        *header(
            machine,
            seconds,
            "Model: DigitsCNN, 159,264 prunable weights (all Conv2d/Linear), dense: the demo recipe "
            f"(15 epochs AdamW lr 3e-3, cosine). Seeds: {seeds}.",
        ),
        "",
        f"Every method starts from the same dense weights and trains for the same {args.budget} epochs "
        f"after them (AdamW lr {FT_LR:g}, wd {WEIGHT_DECAY:g}, cosine). One-shot: prune, then "
        f"{args.budget} epochs. Iterative: {ITERATIVE_STEPS} geometric steps, "
        f"{args.budget // ITERATIVE_STEPS} epochs (a cosine each) after each. "
        f"Gradual: `GradualPruner` (cubic, Zhu & Gupta) from step 0 to {gradual_end}, masks updated "
        + " or ".join(gradual_desc)
        + ", inside one cosine run over the budget (the 1/4-epoch row because, on these seeds, the "
        "1/2-epoch schedule is unstable at 98%).",
        "",
        "| sparsity | method | "
        + " | ".join(f"seed {r['seed']}" for r in runs)
        + " | mean | achieved sparsity |",
        "|---:|---|" + "---:|" * len(runs) + "---:|---:|",
        "| 0% | dense | "
        + " | ".join(f"{100 * r['dense']:.2f}%" for r in runs)
        + f" | {100 * sum(r['dense'] for r in runs) / len(runs):.2f}% | 0% |",
    ]
    for sparsity in args.sparsities:
        for method in METHODS:
            accs = [r["results"][(sparsity, method)]["accuracy"] for r in runs]
            achieved = {r["results"][(sparsity, method)]["sparsity"] for r in runs}
            lines.append(
                f"| {sparsity:.0%} | {method} | "
                + " | ".join(f"{100 * a:.2f}%" for a in accs)
                + f" | {100 * sum(accs) / len(accs):.2f}% | "
                + ", ".join(f"{100 * a:.3f}%" for a in sorted(achieved))
                + " |"
            )
    return "\n".join(lines) + "\n"


def lottery_markdown(data: dict, args, machine: str, seconds: tuple[float, float]) -> str:
    init, late = data["init"], data["late"]
    lines = [
        "## Lottery tickets: accuracy vs weights remaining, rewinding vs random re-init (digits CNN)",
        "",
        *header(
            machine,
            seconds,
            f"Model: DigitsCNN (seed {args.lt_seed}), 159,264 prunable weights. `prunekit.lottery_ticket`: "
            f"{args.lt_rounds} rounds, each pruning {LT_RATE:.0%} of the remaining weights by global "
            f"magnitude of the trained weights; every training run is {args.lt_epochs} epochs AdamW "
            f"lr {LT_LR:g}, wd "
            f"{WEIGHT_DECAY:g}, cosine, same batch order. Rewound tickets restart from the weights at "
            f"initialisation or at iteration k = {data['k']} (one epoch) with the mask applied; the control "
            "trains the rewind-to-init ticket's mask from a fresh random initialisation (new seed per "
            "round).",
        ),
        "",
        "| round | weights remaining | ticket, rewind to init | random re-init, same mask | "
        f"ticket, rewind to iteration {data['k']} | weights remaining (k series) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(init.rounds, late.rounds, strict=True):
        ctrl = "—" if a.control_metric is None else f"{100 * a.control_metric:.2f}%"
        lines.append(
            f"| {a.round} | {100 * a.remaining:.2f}% | {100 * a.metric:.2f}% | {ctrl} "
            f"| {100 * b.metric:.2f}% | {100 * b.remaining:.2f}% |"
        )
    dense = init.rounds[0].metric
    drops = [
        f"{100 * r.remaining:.1f}% left: {100 * (dense - r.metric):+.2f} / "
        f"{100 * (dense - r.control_metric):+.2f}"
        for r in init.rounds[1:]
        if r.remaining < 0.2
    ]
    lines += [
        "",
        f"Drop from dense ({100 * dense:.2f}%) in points, ticket rewound to init / random re-init of its "
        f"mask, below 20% remaining: {'; '.join(drops)}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="part 1 seeds (default: 0 1 2)"
    )
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.98])
    parser.add_argument("--budget", type=int, default=6, help="post-dense epochs per method (default: 6)")
    parser.add_argument("--lt-rounds", type=int, default=8)
    parser.add_argument("--lt-epochs", type=int, default=8)
    parser.add_argument("--lt-seed", type=int, default=0)
    parser.add_argument("--skip", choices=("schedules", "lottery"), default=None, help="skip one part")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)  # default 1: the machine is shared
    console = Console()
    splits = load_splits()
    test = make_loaders(splits)[1]
    machine = machine_line(args.threads)
    t0 = time.perf_counter()
    parts = {}
    if args.skip != "schedules":
        parts["schedules"] = (part_schedules(args, splits, test, console), time.perf_counter() - t0)
    t1 = time.perf_counter()
    if args.skip != "lottery":
        parts["lottery"] = (part_lottery(args, splits, test), time.perf_counter() - t1)
    total = time.perf_counter() - t0
    print(f"total {total / 60:.1f} min")
    render = {"schedules": schedules_markdown, "lottery": lottery_markdown}
    texts = {name: render[name](data, args, machine, (took, total)) for name, (data, took) in parts.items()}
    for name, text in texts.items():
        finish(name, text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
