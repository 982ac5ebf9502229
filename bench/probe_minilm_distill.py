"""Distillation budget probe for bench_minilm_compress: one (heads, FFN, layers) shape of all-MiniLM-L6-v2,
cut as the bench cuts it, distilled for each (steps, lr) given; prints one JSON line per run (seconds,
held-out and evaluation fidelity, first and last loss).

    .venv/bin/python bench/probe_minilm_distill.py --shape 12,768,6 --steps 50 --lr 2e-4,5e-4,1e-3
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_minilm_compress import SENTENCES, _calib, build

from prunekit.models.corpus import package_corpus
from prunekit.models.sentence import distill_layerwise, fidelity, load_minilm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="12,768,6", help="heads,FFN,layers")
    parser.add_argument("--steps", default="50", help="comma-separated step counts")
    parser.add_argument("--lr", default="5e-4", help="comma-separated learning rates")
    parser.add_argument("--criterion", default="wanda")
    parser.add_argument("--stream", default="output")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--corpus", default="packages", help="comma-separated corpus sources")
    args = parser.parse_args()
    torch.set_num_threads(args.train_threads)
    heads, ffn, layers = (int(v) for v in args.shape.split(","))
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
    texts = package_corpus(exclude=sents, sources=args.corpus.split(","))
    dense = load_minilm()
    x, calib = dense.tokenize(sents[:8]), _calib(dense, texts)
    held = texts[64:128]
    dense_emb, held_emb = dense.embed(sents), dense.embed(held)
    for steps in (int(v) for v in args.steps.split(",")):
        for lr in (float(v) for v in args.lr.split(",")):
            student, channels, _ = build(dense, x, calib, heads, ffn, layers, args)
            t0 = time.perf_counter()
            losses = distill_layerwise(student, dense, texts[128:], steps=steps, batch_size=16, lr=lr,
                                       channels=channels)  # fmt: skip
            seconds = time.perf_counter() - t0
            ev, ho = fidelity(dense_emb, student.embed(sents)), fidelity(held_emb, student.embed(held))
            record = {"shape": args.shape, "corpus": args.corpus, "steps": steps, "lr": lr, "s": seconds,
                      "held_cos": ho.cosine_mean, "ev_cos": ev.cosine_mean, "ev_min": ev.cosine_min,
                      "ev_sp": ev.spearman, "loss": [losses[0], losses[-1]]}  # fmt: skip
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
