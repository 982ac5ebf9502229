"""Vocabulary pruning of the real all-MiniLM-L6-v2 against cutting its residual stream to the same size.

Half of MiniLM's parameters are its 30,522 token embeddings. Each *vocab* row cuts them with
:func:`prunekit.prune_vocab` on one text source (the tokens it uses, with every one-character piece and
the special tokens) and nothing else: no training. Each *stream* row is the peer that shrinks the same
matrix the other way, by narrowing every row: the residual stream cut to ``32 * heads`` channels (with the
heads, so stock ``BertModel`` rebuilds it; :func:`bench_minilm_compress.build`, the ranking that bench
uses), undistilled too. Per row: tokens kept, params, fidelity to the dense embeddings of the 124
evaluation sentences (mean / min cosine, Spearman of pairwise similarities), how many of them keep every
token (so embed exactly as before), the share of the source's own texts that do, the seconds of the cut,
and the max difference of ``SentenceTransformer(dir).encode`` after
:func:`prunekit.save_sentence_transformer`.
Records to ``bench/results/minilm_vocab.json``, section ``minilm-vocab`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_minilm_vocab.py [--quick] [--no-write]
        # needs: apt-get install wordnet-base fortunes (the quick mode: wordnet-base)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import common_args, finish, machine_line, markdown_table
from bench_minilm_compress import _calib, _latency, build

from prunekit._atomic import write_text
from prunekit.deploy.pretrained import save_sentence_transformer
from prunekit.models.corpus import package_corpus, wordnet_lemmas
from prunekit.models.sentence import copy_embedder, fidelity, load_minilm
from prunekit.models.vocab import prune_vocab

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"
JSON = HERE / "results" / "minilm_vocab.json"
#: vocab rows: name -> (corpus sources, add WordNet's word list, min_count)
VOCABS = {
    "wordnet+fortunes sentences": (("wordnet", "fortunes"), False, 1),
    "wordnet+fortunes sentences, tokens seen 3+ times": (("wordnet", "fortunes"), False, 3),
    "wordnet+fortunes sentences + WordNet's 153k words": (("wordnet", "fortunes"), True, 1),
    "packages+wordnet+fortunes sentences + WordNet's words": (("packages", "wordnet", "fortunes"), True, 1),
}
QUICK = {"2,000 wordnet sentences": (("wordnet",), False, 1), "+ WordNet's words": (("wordnet",), True, 1)}
STREAMS = (11, 10)  #: heads of the stream-cut peers (streams of 352 and 320 channels)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _texts(sources: tuple[str, ...], words: bool, eval_sents: list[str], limit: int | None) -> list[str]:
    texts = package_corpus(limit, sources=sources, exclude=eval_sents)
    return texts + wordnet_lemmas() if words else texts


ROUNDS, RUNS = 5, 30  #: interleaved latency rounds, timed runs per round


def _speed(dense, student, sents: list[str]) -> tuple[float, float, int]:
    """(best ms of ``student`` on 8 sentences, dense ms / that, the padded batch's tokens per sentence),
    rounds interleaved; each model gets the tokens of its own tokenizer."""
    xd, xs = dense.tokenize(sents[:8]), student.tokenize(sents[:8])
    best_d = best_s = float("inf")
    for _ in range(ROUNDS):
        best_d = min(best_d, _latency(dense, xd, RUNS, 1))
        best_s = min(best_s, _latency(student, xs, RUNS, 1))
    return best_s, best_d / best_s, int(xs["input_ids"].shape[1])


def _row(student, dense, dense_emb, sents: list[str], seconds: float) -> dict:
    ms, speedup, seq = _speed(dense, student, sents)
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-vocab-") as tmp:
        reload = save_sentence_transformer(student, Path(tmp) / "st", sentences=sents[:16]).max_abs_diff
    f = fidelity(dense_emb, student.embed(sents))
    rows = student.encoder.get_input_embeddings()
    return {"params": _params(student), "params_ratio": _params(student) / _params(dense),
            "tokens": rows.num_embeddings, "width": rows.embedding_dim, "fidelity": f.to_dict(),
            "seconds": seconds, "reload": reload, "ms": ms, "speedup": speedup, "seq": seq}  # fmt: skip


def vocab_row(dense, dense_emb, sents, sources, words, min_count, limit) -> dict:
    texts = _texts(sources, words, sents, limit)
    student = copy_embedder(dense)
    t0 = time.perf_counter()
    cut, _ = prune_vocab(student, texts, min_count=min_count)
    seconds = time.perf_counter() - t0
    kept = set(cut.kept_ids())
    ids = dense.tokenizer(sents)["input_ids"]
    dropped = sorted({dense.tokenizer.convert_ids_to_tokens(i) for s in ids for i in s if i not in kept})
    return {"kind": "vocab", "texts": len(texts), "sources": list(sources), "words": words,
            "min_count": min_count, "texts_covered": cut.texts_covered,
            "eval_exact": sum(set(s) <= kept for s in ids), "eval_dropped": dropped,
            **_row(student, dense, dense_emb, sents, seconds)}  # fmt: skip


def stream_row(dense, dense_emb, sents, heads: int, calib_texts: list[str]) -> dict:
    args = argparse.Namespace(criterion="wanda", stream="output")
    x = dense.tokenize(sents[:8])
    t0 = time.perf_counter()
    student = build(dense, x, _calib(dense, calib_texts), heads, 1536, 6, args)[0]
    seconds = time.perf_counter() - t0
    return {"kind": "stream", "heads": heads,
            **_row(student, dense, dense_emb, sents, seconds)}  # fmt: skip


HEADER = ("cut", "embedding rows x width", "params", "params ratio", "speedup (tokens)", "mean cos",
          "min cos", "Spearman", "exact", "texts", "cut s", "reload")  # fmt: skip


def dense_row(env: dict) -> list[str]:
    return ["dense", "30,522 x 384", f"{env['dense_params'] / 1e6:.2f} M", "1.000", f"1.00x ({env['seq']})",
            "1.000", "1.000", "1.000", "124 / 124", "—", "—", "—"]  # fmt: skip


def markdown(rec: dict) -> str:
    env, rows = rec["env"], rec["rows"]
    table = []
    for name, r in rows.items():
        f = r["fidelity"]
        how = (f"{r['texts']:,} texts, {r['texts_covered']:.3f} covered" if r["kind"] == "vocab"
               else "stream cut, undistilled")  # fmt: skip
        exact = f"{r['eval_exact']} / {f['sentences']}" if r["kind"] == "vocab" else "—"
        table.append([name, f"{r['tokens']:,} x {r['width']}", f"{r['params'] / 1e6:.2f} M",
                      f"{r['params_ratio']:.3f}", f"{r['speedup']:.2f}x ({r['seq']})",
                      f"{f['cosine_mean']:.3f}", f"{f['cosine_min']:.3f}", f"{f['spearman']:.3f}", exact, how,
                      f"{r['seconds']:.1f}", f"{r['reload']:.1e}"])  # fmt: skip
    lines = [
        "## all-MiniLM-L6-v2: vocabulary pruning vs a narrower stream, no training",
        "",
        env["machine"] + " `bench/bench_minilm_vocab.py`" + (" --quick" if rec["quick"] else "") + ". "
        "*vocab*: `prunekit.prune_vocab(embedder, texts)` keeps the tokens the tokenizer makes of `texts` "
        "(seen at least *min count* times), every one-character piece and the special tokens; the "
        "embedding rows of the rest go, and the tokenizer is rebuilt without them. *stream*: the peer, "
        "every embedding row narrowed instead (the residual stream cut to 32 x heads channels with the "
        "heads, "
        "ranked as in `bench_minilm_compress.py`: wanda heads, output-ranked stream), FFN and layers kept. "
        "Fidelity to the dense model on the 124 evaluation sentences (never in any corpus); *exact*: those "
        "whose tokens were all kept, which embed bit-identically; *covered*: the share of the cut's own "
        "texts that are. *reload*: `SentenceTransformer(dir).encode` after `save_sentence_transformer`, max "
        "|diff| to the pruned embedder. *speedup*: dense ms / pruned ms on 8 sentences, 1 thread, best of 5 "
        "interleaved rounds of 30 runs, each model on its own tokenizer's ids (*tokens*: the padded batch's "
        "length, longer where a removed piece is re-split).",
        "",
        *markdown_table(HEADER, [dense_row(env), *table]),
    ]
    vocab = [r for r in rows.values() if r["kind"] == "vocab"]
    for v in vocab:
        gone = v["eval_dropped"]
        if gone:
            more = f" (and {len(gone) - 12} more)" if len(gone) > 12 else ""
            lines.append(f"- {v['tokens']:,} tokens: the evaluation sentences' removed pieces, each re-split "
                         f"into smaller ones: {', '.join(gone[:12])}{more}.")  # fmt: skip
    stream = [r for r in rows.values() if r["kind"] == "stream"]
    for v in vocab:
        peer = min(stream, key=lambda s: abs(s["params"] - v["params"]), default=None)
        if peer is None:
            continue
        lines.append(
            f"- {v['tokens']:,} tokens ({v['params_ratio']:.3f} of the params): mean cos "
            f"{v['fidelity']['cosine_mean']:.3f}, Spearman {v['fidelity']['spearman']:.3f}; the stream peer "
            f"nearest in size ({peer['heads']} heads, {peer['params_ratio']:.3f}): "
            f"{peer['fidelity']['cosine_mean']:.3f} / {peer['fidelity']['spearman']:.3f}."
        )
    return "\n".join(lines)


def main() -> None:
    quick = "two vocab rows on 2,000 WordNet sentences, one peer"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(1, quick)])
    ap.add_argument("--json", default=str(JSON), help="records file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
    dense = load_minilm()
    dense_emb = dense.embed(sents)
    limit = 2000 if args.quick else None
    rows: dict[str, dict] = {}
    for name, (sources, words, min_count) in (QUICK if args.quick else VOCABS).items():
        rows[name] = vocab_row(dense, dense_emb, sents, sources, words, min_count, limit)
        print(name, json.dumps(rows[name]["fidelity"]), rows[name]["params_ratio"], flush=True)
    calib_texts = package_corpus(64, sources=("wordnet",), exclude=sents)
    for heads in STREAMS[-1:] if args.quick else STREAMS:
        rows[f"stream {32 * heads} ({heads} heads)"] = stream_row(dense, dense_emb, sents, heads, calib_texts)
    rec = {"quick": args.quick, "rows": rows,
           "env": {"machine": machine_line(args.threads), "dense_params": _params(dense),
                   "seq": int(dense.tokenize(sents[:8])["input_ids"].shape[1])}}  # fmt: skip
    if not args.quick and not args.no_write:
        write_text(Path(args.json), json.dumps(rec, indent=1, sort_keys=True) + "\n")
    finish("minilm-vocab", markdown(rec), args, write=not args.quick)


if __name__ == "__main__":
    main()
