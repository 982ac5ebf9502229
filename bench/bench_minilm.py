"""Real pretrained all-MiniLM-L6-v2: heads + FFN pruned 30% / 50% (and 50% unstructured, 2:4), fidelity of the
embeddings to the dense model on the sentences in ``bench/data/sentences.txt``, recovery by distillation from
the dense model on unlabeled text, params, MACs and CPU latency. Writes section ``minilm-structured`` of
docs/RESULTS.md.

    .venv/bin/python bench/bench_minilm.py [--steps 300] [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import common_args, finish, machine_line

from prunekit.measure.latency import measure_latency
from prunekit.measure.macs import count_macs
from prunekit.models.corpus import unlabeled_text
from prunekit.models.sentence import copy_embedder, distill, fidelity, load_minilm
from prunekit.sparse import remove_masks, sparsify
from prunekit.structured import prune
from prunekit.structured.target import Target

SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero(model: torch.nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def row(name: str, model, dense_emb, sents, x, runs: int, extra: dict) -> dict:
    fid = fidelity(dense_emb, model.embed(sents))
    return {
        "name": name,
        "model": model,
        "params": params(model),
        "nonzero": nonzero(model),
        "macs": count_macs(model, x),
        "cos": fid.cosine_mean,
        "cos_min": fid.cosine_min,
        "spearman": fid.spearman,
        **extra,
    }


METHODS = {  # name -> prune() arguments; the BERT pooler is never read by the mean-pooled embedding
    "L2, local": {"criterion": "l2", "scope": "local"},
    "activation, global, same MACs": {
        "criterion": "activation",
        "scope": "global",
        "ignore": ["encoder.pooler"],
    },
}


def _widths(student) -> tuple[str, str]:
    heads = [layer.attention.self.num_attention_heads for layer in student.encoder.encoder.layer]
    ffn = [layer.intermediate.dense.out_features for layer in student.encoder.encoder.layer]
    return (
        "-".join(map(str, heads)) if len(set(heads)) > 1 else str(heads[0]),
        "-".join(map(str, ffn)) if len(set(ffn)) > 1 else str(ffn[0]),
    )


def run(steps: int, runs: int, rounds: int, lr: float) -> tuple[list[dict], dict]:
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
    texts = unlabeled_text()
    dense = load_minilm()
    dense_emb = dense.embed(sents)
    x = dense.tokenize(sents[:8])  # latency input: a batch of 8 real sentences, padded
    calib = [dense.tokenize(texts[-128:][i : i + 16]) for i in range(0, 128, 16)]  # activation statistics
    rows = [row("dense", dense, dense_emb, sents, x, runs, {})]
    dense_macs = count_macs(dense, x)
    for ratio in (0.3, 0.5):
        macs_kept = None
        for method, kwargs in METHODS.items():
            student = copy_embedder(dense)
            t0 = time.perf_counter()
            if macs_kept is None:  # L2/local at this ratio sets the MACs budget
                prune(student, x, ratio=ratio, measure=False, data=calib, **kwargs)
                macs_kept = count_macs(student, x) / dense_macs
            else:  # the same MACs, allocated by the global activation ranking
                prune(student, x, target=Target(macs=macs_kept), data=calib, **kwargs)
            prune_s = time.perf_counter() - t0
            before = fidelity(dense_emb, student.embed(sents))
            t0 = time.perf_counter()
            losses = distill(student, dense, texts, steps=steps, batch_size=16, lr=lr, layers=True)
            distill_s = time.perf_counter() - t0
            heads, ffn = _widths(student)
            extra = {
                "cos_before": before.cosine_mean,
                "spearman_before": before.spearman,
                "heads": heads,
                "ffn": ffn,
                "prune_s": prune_s,
                "distill_s": distill_s,
                "loss": (losses[0], losses[-1]),
                "config_heads": student.encoder.config.num_attention_heads,
            }
            name = f"structured {int(ratio * 100)}% heads+FFN, {method}"
            rows.append(row(name, student, dense_emb, sents, x, runs, extra))
    for pattern, sparsity in (("unstructured", 0.5), ("2:4", None)):
        student = copy_embedder(dense)
        sparsify(student, sparsity, pattern=pattern, include="encoder.encoder.*")
        remove_masks(student)
        label = "50% unstructured" if pattern == "unstructured" else "2:4"
        rows.append(row(f"{label} (encoder Linear, no recovery)", student, dense_emb, sents, x, runs, {}))
    # latency last, round-robin over all models (min of the per-round medians): the machine is shared
    best = [float("inf")] * len(rows)
    for _ in range(rounds):
        for i, r in enumerate(rows):
            lat = measure_latency(r["model"], x, runs=runs, warmup=3, threads=torch.get_num_threads())
            best[i] = min(best[i], lat.median_ms)
    for r, ms in zip(rows, best, strict=True):
        r["latency_ms"] = ms
        del r["model"]
    env = {
        "rounds": rounds,
        "runs": runs,
        "machine": machine_line(torch.get_num_threads()),
        "sentences": len(sents),
        "texts": len(texts),
        "steps": steps,
        "lr": lr,
    }
    return rows, env


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "## all-MiniLM-L6-v2 (real pretrained weights): structured heads + FFN pruning",
        "",
        f"`bench/bench_minilm.py`. {env['machine']} Fidelity = embeddings of the pruned model vs the dense "
        f"model on the {env['sentences']} "
        "sentences of `bench/data/sentences.txt`: mean / min cosine per sentence, and Spearman "
        "correlation of all pairwise similarities. Recovery: distillation from the dense model "
        f"on {env['texts']} unlabeled sentences (Python standard-library docstrings and reference manual, "
        "disjoint from the evaluation sentences; the last 128 also give the activation statistics), "
        f"{env['steps']} steps of 16 (several passes), AdamW lr {env['lr']:g}, cosine schedule; loss "
        "1 - cos of the embeddings plus the MSE of every layer's output (the residual stream, unpruned). "
        f"Latency: median of {env['runs']} runs on a batch of 8 padded sentences, best of {env['rounds']} "
        "round-robin rounds over all models (the machine is shared). Structured pruning: "
        "`prunekit.prune(ratio, criterion, scope)`: *L2, local* removes the same share of heads and FFN "
        "neurons in every layer; *activation, global, same MACs* ranks heads and neurons of all layers "
        "together by mean |activation| on 128 sentences and prunes to the MACs the L2/local row kept "
        "(`Target(macs=...)`; per-layer widths differ, the plan records them). Heads are removed whole, the "
        "384-wide residual stream stays (LayerNorm).",
        "",
        "| model | heads / FFN per layer (layer 1-6) | params | non-zero | MACs | latency ms | "
        "cos (no recovery) | "
        "cos after distill | min cos | Spearman (no recovery) | Spearman after distill |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovered = "cos_before" in r
        shape = f"{r['heads']} / {r['ffn']}" if recovered else "12 / 1536"
        cos_before = r["cos_before"] if recovered else r["cos"]
        sp_before = r["spearman_before"] if recovered else r["spearman"]
        cos_after = f"{r['cos']:.3f}" if recovered else "—"
        sp_after = f"{r['spearman']:.3f}" if recovered else "—"
        lines.append(
            f"| {r['name']} | {shape} | {r['params'] / 1e6:.2f} M | {r['nonzero'] / 1e6:.2f} M | "
            f"{r['macs'] / 1e9:.3f} G | {r['latency_ms']:.1f} | {cos_before:.3f} | {cos_after} | "
            f"{r['cos_min']:.3f} | {sp_before:.3f} | {sp_after} |"
        )
    notes = [r for r in rows if "cos_before" in r]
    lines += [""] + [
        f"- {r['name']}: pruning took {r['prune_s']:.1f} s, distillation {r['distill_s']:.0f} s (loss "
        f"{r['loss'][0]:.3f} → {r['loss'][1]:.3f}); `config.num_attention_heads` = {r['config_heads']}"
        + (" (every layer kept the same count)." if "-" not in r["heads"] else " (layers differ: unchanged).")
        for r in notes
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds over all models (min is kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, env = run(args.steps, args.runs, args.rounds, args.lr)
    finish("minilm-structured", markdown(rows, env), args)


if __name__ == "__main__":
    main()
