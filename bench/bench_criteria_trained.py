"""Structured criteria on a trained digits CNN: seeds, ratios, scopes, with and without BN recalibration and
a short fine-tune, next to Torch-Pruning's importances in the same run.

Protocol, per seed: train :class:`prunekit.demo.model.DigitsCNN` to convergence (AdamW, cosine, the global
RNG seeded so dropout is reproducible); draw the calibration set (``--calib-batches`` labelled training
batches of 64, the same for every criterion and both libraries); then for every criterion, ratio and scope
prune a copy and measure test accuracy three ways: *one-shot* (eval mode, the BN running statistics as
trained), *BN recal* (running statistics re-estimated on the training images, nothing trained) and
*fine-tune* (BN recal, then ``--ft-epochs`` epochs of AdamW 1e-3). The random criterion is seeded by the
seed. Data-driven criteria use cross-entropy on the labelled calibration batches. Results: the mean +- std
over seeds, a RESULTS section and a JSON file.

Run: ``python bench/bench_criteria_trained.py --jobs 3 --tp-path DIR`` (``DIR``: where ``pip install
--target`` put torch-pruning; without it the peer rows are left out). ``--quick``: one seed, 50%, local.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ROOT, common_args, finish, machine_line, markdown_table

import prunekit.structured as st
from prunekit._atomic import write_text
from prunekit.criteria import ScoreContext
from prunekit.criteria._data import per_batch_grads, per_sample_grads
from prunekit.criteria.random import RandomScore
from prunekit.demo.data import load_splits
from prunekit.demo.model import build_model
from prunekit.measure.macs import count_macs

OURS = ["l1", "l2", "bn_scale", "random", "taylor", "taylor_batch", "hessian", "hessian_batch"]
OURS += ["taylor T=20", "hessian T=20"]  # the same criteria, loss_fn = cross-entropy of logits / 20
TEMPERATURE = 20.0
PEERS = ["l1", "random", "taylor", "hessian"]
JSON_PATH = ROOT / "bench" / "results" / "criteria_trained.json"


def soft_ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits divided by ``TEMPERATURE``: a loss whose per-sample gradients do not vanish
    on a model that fits its data with near-certain predictions."""
    return F.cross_entropy(out / TEMPERATURE, target)


def fit(model, x, y, epochs: int, lr: float, seed: int) -> float:
    """Train in place (AdamW, cosine, batches of 64); the mean loss of the last epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = (len(x) + 63) // 64
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    last = 0.0
    for _ in range(epochs):
        idx, total = torch.randperm(len(x), generator=gen), 0.0
        for i in range(0, len(x), 64):
            b = idx[i : i + 64]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(b)
        last = total / len(x)
    model.eval()
    return last


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def recalibrate(model, x) -> None:
    """Re-estimate every BatchNorm's running statistics on ``x`` (cumulative average), weights untouched."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for i in range(0, len(x), 256):
        model(x[i : i + 256])
    model.eval()


def tp_prune(model, x1, name: str, ratio: float, scope: str, calib, seed: int) -> None:
    """Torch-Pruning's corresponding importance, its documented gradient loops, the fc2 outputs kept."""
    import torch_pruning as tp

    imp = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "random": lambda: tp.importance.RandomImportance(),
        "taylor": lambda: tp.importance.TaylorImportance(),
        "hessian": lambda: tp.importance.HessianImportance(),
    }[name]()
    torch.manual_seed(seed)
    pruner = tp.pruner.MetaPruner(
        model,
        x1,
        importance=imp,
        pruning_ratio=ratio,
        global_pruning=scope == "global",
        ignored_layers=[model.fc2],
    )
    model.eval()
    if name == "taylor":
        model.zero_grad()
        for xb, yb in calib:
            F.cross_entropy(model(xb), yb).backward()
    elif name == "hessian":
        imp.zero_grad()
        for xb, yb in calib:
            for i in range(len(xb)):
                model.zero_grad()
                F.cross_entropy(model(xb[i : i + 1]), yb[i : i + 1]).backward()
                imp.accumulate_grad(model)
    pruner.step()
    model.zero_grad()


def gradient_spread(model, calib) -> dict:
    """How the calibration rows share the gradient: rows holding 90 % of the per-sample ``|g_i|²`` (plain and
    temperature-softened loss) and the squared batch-mean gradient over the mean per-sample one."""
    out = {}
    for label, loss in (("ce", None), ("ce_T20", soft_ce)):
        ctx = ScoreContext.of(model, None, data=calib, loss_fn=loss)
        energy = [
            sum(g.pow(2).flatten(1).sum(1) for g in grads.values()) for grads in per_sample_grads(ctx, "x")
        ]
        e = torch.cat(energy).double().sort(descending=True).values
        out[f"rows_for_90pct_{label}"] = int((e.cumsum(0) < 0.9 * e.sum()).sum()) + 1
        if loss is None:
            batch = [sum(g.pow(2).sum() for g in grads.values()) for grads, _ in per_batch_grads(ctx, "x")]
            out["batch_over_sample_energy"] = float(sum(batch) / len(batch) / e.mean())
    out["calib_rows"] = len(e)
    return out


def run_seed(job: tuple) -> dict:
    """Every (library, criterion, ratio, scope) row of one seed."""
    seed, ratios, scopes, epochs, ft_epochs, calib_batches, tp_path = job
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    have_tp = False
    if tp_path:
        sys.path.insert(0, tp_path)
        try:
            import torch_pruning  # noqa: F401

            have_tp = True
        except ImportError:
            pass
    s = load_splits()
    xtr, ytr, xte, yte = s.x_train, s.y_train, s.x_test, s.y_test
    torch.manual_seed(seed)
    t = time.perf_counter()
    dense = build_model(seed)
    last_loss = fit(dense, xtr, ytr, epochs, 3e-3, seed)
    with torch.no_grad():
        train_loss = float(F.cross_entropy(dense(xtr), ytr))
    info = {
        "seed": seed,
        "test_acc": accuracy(dense, xte, yte),
        "train_acc": accuracy(dense, xtr, ytr),
        "train_loss_eval": train_loss,
        "last_epoch_loss": last_loss,
        "train_seconds": time.perf_counter() - t,
    }
    gen = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randperm(len(xtr), generator=gen)[: 64 * calib_batches]
    calib = [(xtr[idx[i : i + 64]], ytr[idx[i : i + 64]]) for i in range(0, len(idx), 64)]
    with torch.no_grad():
        info["calib_loss"] = float(F.cross_entropy(dense(xtr[idx]), ytr[idx]))
        info["calib_loss_median"] = float(
            F.cross_entropy(dense(xtr[idx]), ytr[idx], reduction="none").median()
        )
    info |= gradient_spread(dense, calib)
    print(f"seed {seed}: dense {info}", flush=True)
    x1 = xtr[:1]
    macs0 = count_macs(dense, x1)
    rows = []
    jobs = [("prunekit", c) for c in OURS] + ([("torch-pruning", c) for c in PEERS] if have_tp else [])
    for ratio in ratios:
        for scope in scopes:
            for lib, name in jobs:
                m = copy.deepcopy(dense).eval()
                t = time.perf_counter()
                if lib == "prunekit":
                    crit = RandomScore(seed=seed) if name == "random" else name.split()[0]
                    loss = soft_ce if name.endswith("T=20") else None
                    st.prune(
                        m, x1, ratio=ratio, criterion=crit, scope=scope, data=calib, loss_fn=loss,
                        measure=False,
                    )  # fmt: skip
                else:
                    tp_prune(m, x1, name, ratio, scope, calib, seed)
                secs = time.perf_counter() - t
                row = {"library": lib, "criterion": name, "ratio": ratio, "scope": scope, "seed": seed}
                row["macs"] = count_macs(m, x1) / macs0
                row["widths"] = [m.conv1.out_channels, m.conv2.out_channels, m.conv3.out_channels]
                row["widths"].append(m.fc1.out_features)
                row["oneshot"] = accuracy(m, xte, yte)
                recalibrate(m, xtr)
                row["recal"] = accuracy(m, xte, yte)
                fit(m, xtr, ytr, ft_epochs, 1e-3, seed + 7)
                row["finetune"] = accuracy(m, xte, yte)
                row["seconds"] = secs
                rows.append(row)
                print(
                    f"seed {seed} {ratio:.0%} {scope} {lib} {name}: one-shot {row['oneshot']:.3f} recal "
                    f"{row['recal']:.3f} ft {row['finetune']:.3f} macs {row['macs']:.3f}",
                    flush=True,
                )
    return {"dense": info, "rows": rows}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> dict:
    """``{(library, criterion, ratio, scope): {measure: (mean, std)}}`` over seeds."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["library"], r["criterion"], r["ratio"], r["scope"]), []).append(r)
    return {
        k: {m: mean_std([r[m] for r in v]) for m in ("oneshot", "recal", "finetune", "macs")} | {"n": len(v)}
        for k, v in out.items()
    }


def section(results: list[dict], args: argparse.Namespace, ratios, scopes) -> str:
    rows = [r for res in results for r in res["rows"]]
    dense = [res["dense"] for res in results]
    summ = summarise(rows)
    seeds = [d["seed"] for d in dense]
    acc = mean_std([d["test_acc"] for d in dense])
    labels = list(dict.fromkeys((r["library"], r["criterion"]) for r in rows))
    cols = [(ratio, scope) for ratio in ratios for scope in scopes]
    energy = ", ".join(f"{d['batch_over_sample_energy']:.4f}" for d in dense)
    text = [
        "## Structured criteria on digits: trained DigitsCNN, "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}, vs Torch-Pruning",
        "",
        f"{machine_line(1)} Shared 2-core machine (other jobs running; no timings are compared here). "
        f"`bench/bench_criteria_trained.py`: DigitsCNN (8x8 digits, 160 k params), seeds {seeds}, trained "
        f"{args.epochs} epochs (AdamW 3e-3, cosine) to test accuracy {acc[0] * 100:.2f} +- "
        f"{acc[1] * 100:.2f} % "
        f"(450 test images; training accuracy {min(d['train_acc'] for d in dense) * 100:.1f} %, training "
        f"cross-entropy <= {max(d['train_loss_eval'] for d in dense):.1e}: converged). Calibration: "
        f"{args.calib_batches} labelled training batches of 64 per seed (calibration cross-entropy <= "
        f"{max(d['calib_loss'] for d in dense):.1e}, per-row median <= "
        f"{max(d['calib_loss_median'] for d in dense):.1e}), the same for every criterion and both "
        "libraries. "
        "Rows of the calibration set holding 90 % of the per-sample gradient energy, per seed: "
        f"{', '.join(str(d['rows_for_90pct_ce']) for d in dense)} of {dense[0]['calib_rows']} with "
        "cross-entropy, "
        f"{', '.join(str(d['rows_for_90pct_ce_T20']) for d in dense)} with cross-entropy of logits / 20; "
        "squared batch-mean gradient / mean squared per-sample gradient: "
        f"{energy} (1/64 = 0.0156: what averaging 64 independent noise vectors gives). "
        "Every conv/fc1 group pruned at the ratio (local: the same share of each group; global: ranked "
        "together, prunekit divides by each group's mean score), fc2 outputs kept. *One-shot*: test accuracy "
        "right after the cut (BN running statistics as trained); *BN recal*: running statistics re-estimated "
        "on the training images, no training; *fine-tune*: BN recal then "
        f"{args.ft_epochs} epoch(s) AdamW 1e-3. "
        "Mean +- std over seeds, in %. `taylor`/`hessian` = per-sample gradients (the default now); "
        "`taylor_batch`/`hessian_batch` = the batch-mean gradient (the old default); `T=20`: the same "
        "per-sample criteria with `loss_fn` = cross-entropy of logits / 20. Torch-Pruning "
        "1.6.1 rows use its documented loops (Taylor: summed batch-mean gradients; Hessian: per-sample).",
    ]
    for measure, title in (("recal", "BN recal"), ("oneshot", "one-shot"), ("finetune", "fine-tune")):
        body = []
        for lib, name in labels:
            cells = [name if lib == "prunekit" else f"{name} (Torch-Pruning)"]
            for ratio, scope in cols:
                s = summ.get((lib, name, ratio, scope))
                cells.append("—" if s is None else f"{s[measure][0] * 100:.1f} +- {s[measure][1] * 100:.1f}")
            body.append(cells)
        header = ["criterion"] + [f"{ratio:.0%} {scope}" for ratio, scope in cols]
        text += ["", f"Test accuracy, {title}:", "", *markdown_table(header, body, "l" + "r" * len(cols))]
    macs = {
        (ratio, scope, lib): summ[(lib, "l1", ratio, scope)]["macs"][0]
        for ratio, scope in cols
        for lib in ("prunekit", "torch-pruning")
        if (lib, "l1", ratio, scope) in summ
    }
    text += [
        "",
        "MACs pruned/dense (l1 rows): "
        + ", ".join(f"{ratio:.0%} {scope} {lib} {v:.3f}" for (ratio, scope, lib), v in macs.items())
        + ".",
    ]
    text += ["", *ranking(summ, cols)]
    return "\n".join(text)


def ranking(summ: dict, cols) -> list[str]:
    """One line per column: prunekit criteria by mean BN-recal accuracy, and where random falls."""
    out = []
    for ratio, scope in cols:
        items = sorted(
            (
                (v["recal"][0], name)
                for (lib, name, r, s), v in summ.items()
                if lib == "prunekit" and r == ratio and s == scope
            ),
            reverse=True,
        )
        out.append(
            f"- {ratio:.0%} {scope}, BN recal: "
            + " > ".join(f"{name} {a * 100:.1f}" for a, name in items)
            + "."
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_args(threads=1, quick="one seed, 50%, local")]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--scopes", nargs="+", default=["local", "global"], choices=["local", "global"])
    parser.add_argument("--epochs", type=int, default=30, help="dense training epochs")
    parser.add_argument("--ft-epochs", type=int, default=1)
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes")
    parser.add_argument("--tp-path", default="", help="directory holding torch_pruning (pip --target)")
    parser.add_argument("--json", default=str(JSON_PATH), help="per-row results (JSON)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.ratios, args.scopes = args.seeds[:1], [0.5], ["local"]
    jobs = [
        (s, args.ratios, args.scopes, args.epochs, args.ft_epochs, args.calib_batches, args.tp_path)
        for s in args.seeds
    ]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.map(run_seed, jobs, chunksize=1)
    else:
        results = [run_seed(j) for j in jobs]
    text = section(results, args, args.ratios, args.scopes)
    finish("criteria-digits", text, args, write=not args.quick)
    if not args.quick and not args.no_write:
        payload = {
            "bench": "bench/bench_criteria_trained.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": machine_line(1),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "json", "no_write")},
            "dense": [r["dense"] for r in results],
            "rows": [r for res in results for r in res["rows"]],
            "summary": [
                {"library": k[0], "criterion": k[1], "ratio": k[2], "scope": k[3]}
                | {m: {"mean": v[m][0], "std": v[m][1]} for m in ("oneshot", "recal", "finetune", "macs")}
                | {"seeds": v["n"]}
                for k, v in summarise([r for res in results for r in res["rows"]]).items()
            ],
        }
        write_text(Path(args.json), json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
