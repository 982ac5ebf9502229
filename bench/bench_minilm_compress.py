"""Real all-MiniLM-L6-v2 compressed to measured latency targets (1.5x, 2x, 3x): heads + FFN + hidden size
(the residual stream, prunekit's direct activation-ranked cut) + layers, then layer-wise distillation from the
dense model on the offline package corpus (:func:`prunekit.models.sentence.package_corpus`). Peer in the same
run: heads + FFN + layers without the stream cut, at the same targets. Each finished row is kept in
``bench/results/minilm_compress.json`` (a rerun with the same settings resumes); writes section
``minilm-compress`` of docs/RESULTS.md (not in ``--quick`` mode).

    .venv/bin/python bench/bench_minilm_compress.py [--quick] [--steps 12] [--fresh] [--no-write]

Shapes: a stream cut of ``k/12`` keeps ``384 (1 - k/12)`` channels, ``12 (1 - k/12)`` heads of 32 and
``1536 (1 - k/12)`` FFN neurons in every layer (``prune(ratio=k/12, stream=True)``, local), so
``hidden_size = heads * 32`` and stock ``BertModel`` rebuilds the model. The configuration per target is
chosen by measured latency: every (k, layers) shape is timed as a randomly initialised BertModel of that
shape (the pruned model's shapes), interleaved with the dense model; among the shapes at or above the target
speedup, within 1.35x of it (and, from 2x on, at most 0.6 of the dense params), the one whose pruned,
undistilled copy stays closest to the dense embeddings of 64 held-out corpus sentences is taken. The peer
(no stream cut) keeps the chosen layer count and takes the smallest heads + FFN ratio ``k/12`` reaching the
target, timed on real pruned copies.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import common_args, finish, machine_line, markdown_table

from prunekit._atomic import write_text
from prunekit.deploy.pretrained import save_sentence_transformer
from prunekit.errors import ExportError
from prunekit.measure.latency import measure_latency
from prunekit.measure.macs import count_macs
from prunekit.models.sentence import (
    SentenceEmbedder,
    add_projection,
    copy_embedder,
    distill_layerwise,
    fidelity,
    load_minilm,
    package_corpus,
    stream_channels,
)
from prunekit.structured import prune
from prunekit.structured.layers import prune_layers

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"
CACHE = HERE / "results" / "minilm_compress.json"
TARGETS = (1.5, 2.0, 3.0)
PARAMS_CAP = 0.6  # the params goal from 2x on
#: published trade-off of smaller sentence models (sbert.net pretrained-models table: average of 14
#: sentence-embedding tasks, encoding speed in sentences/s on a V100, size): context only, not measured here
PUBLISHED = (
    ("all-mpnet-base-v2", 69.57, 2800, "420 MB"),
    ("all-MiniLM-L12-v2", 68.70, 7500, "120 MB"),
    ("all-MiniLM-L6-v2 (the dense model here)", 68.06, 14200, "80 MB"),
    ("paraphrase-albert-small-v2", 64.46, 5000, "43 MB"),
    ("paraphrase-MiniLM-L3-v2", 62.29, 19000, "61 MB"),
)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _latency(model: torch.nn.Module, x: dict, runs: int, threads: int) -> float:
    return measure_latency(model, x, runs=runs, warmup=2, threads=threads).median_ms


def speedup(
    dense: torch.nn.Module, model: torch.nn.Module, x: dict, runs: int, rounds: int, th: int
) -> tuple:
    """(best latency ms of ``model``, best of ``dense``, their ratio), rounds interleaved (shared machine)."""
    best_m, best_d = float("inf"), float("inf")
    for _ in range(rounds):
        best_d = min(best_d, _latency(dense, x, runs, th))
        best_m = min(best_m, _latency(model, x, runs, th))
    return best_m, best_d, best_d / best_m


def shape_model(k: int, layers: int) -> SentenceEmbedder:
    """A random BertModel embedder of the shape a ``k/12`` stream cut and ``layers`` layers leave."""
    from transformers import BertConfig, BertModel

    hidden = 32 * (12 - k)
    cfg = BertConfig(
        hidden_size=hidden, num_attention_heads=12 - k, intermediate_size=128 * (12 - k),
        num_hidden_layers=layers, max_position_embeddings=512, vocab_size=30522,
    )  # fmt: skip
    emb = SentenceEmbedder(BertModel(cfg).eval(), max_length=256)
    emb.projection = torch.nn.Linear(hidden, 384, bias=False)
    return emb.eval()


def search(dense, x, ks, depths, runs, rounds, th) -> list[dict]:
    """Measured speedup and params ratio of every (k, layers) shape."""
    dense_params = params(dense)
    out = []
    for k in ks:
        for n in depths:
            if k == 0 and n == 6:
                continue
            m = shape_model(k, n)
            ms, dms, s = speedup(dense, m, x, runs, rounds, th)
            out.append({"k": k, "layers": n, "speedup": s, "ms": ms, "dense_ms": dms,
                        "params_ratio": params(m) / dense_params})  # fmt: skip
            print(f"shape k={k}/12 layers={n}: {s:.2f}x params {out[-1]['params_ratio']:.2f}", flush=True)
    return out


def candidates(shapes: list[dict], target: float) -> list[dict]:
    """The shapes reaching ``target`` (params capped from 2x on) within 1.35x of it (all of them if none
    is that close; the fastest alone if none reaches it)."""
    cap = PARAMS_CAP if target >= 2 else 1.0
    ok = [s for s in shapes if s["speedup"] >= target and s["params_ratio"] <= cap]
    if not ok:
        return [max(shapes, key=lambda s: s["speedup"])]
    return [s for s in ok if s["speedup"] <= 1.35 * target] or ok


def proxy(dense, x, calib, held: list[str], held_emb: torch.Tensor, k: int, layers: int) -> float:
    """Mean cosine to the dense embeddings of held-out corpus sentences (never the evaluation ones) of the
    pruned, undistilled shape: what picks the shape per target."""
    student = build(dense, x, calib, k, layers, stream=True)[0]
    return fidelity(held_emb, student.embed(held)).cosine_mean


def _calib(dense, texts: list[str]) -> list[dict]:
    return [dense.tokenize(texts[i : i + 16]) for i in range(0, 64, 16)]


def build(dense, x, calib, k: int, layers: int, stream: bool) -> tuple[SentenceEmbedder, object, list[str]]:
    """The pruned copy: heads + FFN (and, with ``stream``, the hidden size) at ratio k/12, then layers."""
    student = copy_embedder(dense)
    channels = None
    if stream:
        add_projection(student)
    if k:
        prune(student, x, ratio=k / 12, stream=True if stream else None, data=calib if stream else None,
              measure=False)  # fmt: skip
    if stream:
        channels = stream_channels(student)
    removed: list[str] = []
    if layers < 6:
        removed = prune_layers(student, x, n=6 - layers, data=calib).removed
    return student, channels, removed


def peer_k(dense, x, calib, layers: int, target: float, runs: int, rounds: int, th: int) -> tuple[int, float]:
    """Smallest heads + FFN ratio k/12 (no stream cut, ``layers`` layers) reaching ``target``, by bisection
    over k in 1..9 on real pruned copies; (k, measured speedup)."""
    lo, hi, found = 1, 9, None
    while lo <= hi:
        k = (lo + hi) // 2
        m, _, _ = build(dense, x, calib, k, layers, stream=False)
        s = speedup(dense, m, x, runs, rounds, th)[2]
        print(f"peer k={k}/12 layers={layers}: {s:.2f}x", flush=True)
        if s >= target:
            found, hi = (k, s), k - 1
        else:
            lo = k + 1
    return found if found is not None else (9, s)


def row(dense, dense_emb, sents, x, texts, calib, target, k, layers, stream, args, th) -> dict:
    t0 = time.perf_counter()
    student, channels, removed = build(dense, x, calib, k, layers, stream)
    prune_s = time.perf_counter() - t0
    before = fidelity(dense_emb, student.embed(sents))
    torch.set_num_threads(args.train_threads)
    t0 = time.perf_counter()
    losses = distill_layerwise(student, dense, texts, steps=args.steps, batch_size=16, lr=args.lr,
                               channels=channels)  # fmt: skip
    distill_s = time.perf_counter() - t0
    torch.set_num_threads(th)
    after = fidelity(dense_emb, student.embed(sents))
    ms, dms, s = speedup(dense, student, x, args.runs, args.rounds, th)
    layer0 = student.encoder.encoder.layer[
        next(i for i in range(6) if f"encoder.encoder.layer.{i}" not in removed)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = save_sentence_transformer(student, Path(tmp) / "st", sentences=sents)
            reload = f"{saved.max_abs_diff:.1e}"
        except ExportError as err:
            reload = "refused: " + str(err).split(": ", 1)[1].split(";")[0]
    return {
        "target": target,
        "variant": "heads+FFN+hidden+layers" if stream else "heads+FFN+layers (no stream cut)",
        "k": k, "layers": layers, "removed": removed,
        "hidden": int(student.encoder.get_input_embeddings().embedding_dim),
        "heads": int(layer0.attention.self.num_attention_heads),
        "ffn": int(layer0.intermediate.dense.out_features),
        "params": params(student), "params_ratio": params(student) / params(dense),
        "macs": count_macs(student, x), "ms": ms, "dense_ms": dms, "speedup": s,
        "before": before.to_dict(), "after": after.to_dict(),
        "steps": args.steps, "prune_s": prune_s, "distill_s": distill_s,
        "loss": [losses[0], losses[-1]] if losses else None, "reload": reload,
    }  # fmt: skip


def _load_cache(mode: str, key: str, fresh: bool) -> dict:
    """The cached run of ``mode`` (``quick`` or ``full``) if its settings ``key`` matches, else a new one."""
    data = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    run = data.get(mode, {})
    return run if run.get("key") == key and not fresh else {"key": key, "mode": mode, "rows": {}}


def _save_cache(run: dict) -> None:
    data = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    data[run["mode"]] = run
    write_text(CACHE, json.dumps(data, indent=1, sort_keys=True) + "\n")


def run(args: argparse.Namespace) -> dict:
    th = args.threads
    torch.set_num_threads(th)
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
    t0 = time.perf_counter()
    texts = package_corpus(exclude=sents)
    corpus_s = time.perf_counter() - t0
    dense = load_minilm()
    tokens = sum(len(t) for t in dense.tokenizer(texts)["input_ids"])
    dense_emb = dense.embed(sents)
    x = dense.tokenize(sents[:8])
    calib = _calib(dense, texts)
    train = texts[128:]  # the first 64 give the activation statistics, the next 64 the shape choice
    targets = (2.0,) if args.quick else TARGETS
    settings = [args.quick, args.lr, args.runs, args.rounds, th, args.train_threads, len(texts)]
    cache = _load_cache("quick" if args.quick else "full", json.dumps(settings), args.fresh)
    if "shapes" not in cache:
        ks, depths = ((0, 4), (6, 4)) if args.quick else ((0, 2, 3, 4, 6), (6, 5, 4, 3, 2))
        cache["shapes"] = search(dense, x, ks, depths, args.search_runs, min(2, args.rounds), th)
        _save_cache(cache)
    held = texts[64:128]  # proxy sentences for the shape choice: the corpus, not the evaluation set
    held_emb = dense.embed(held)
    scores = cache.setdefault("proxy", {})
    for target in targets:
        for c in candidates(cache["shapes"], target):
            name = f"{c['k']},{c['layers']}"
            if name not in scores:
                scores[name] = proxy(dense, x, calib, held, held_emb, c["k"], c["layers"])
                _save_cache(cache)
                print(f"proxy k={c['k']}/12 layers={c['layers']}: cos {scores[name]:.3f}", flush=True)
        pick = max(candidates(cache["shapes"], target), key=lambda c: scores[f"{c['k']},{c['layers']}"])
        cache.setdefault("picks", {})[str(target)] = pick
        for stream in (True, False):
            name = f"{target}/{'stream' if stream else 'peer'}/{args.steps}"
            if name in cache["rows"]:
                continue
            k = pick["k"]
            peers = cache.setdefault("peers", {})
            if not stream and str(target) not in peers:
                found = (
                    (3, 0.0)
                    if args.quick
                    else peer_k(dense, x, calib, pick["layers"], target, args.search_runs, args.rounds, th)
                )
                peers[str(target)] = found[0]
            if not stream:
                k = peers[str(target)]
            r = row(dense, dense_emb, sents, x, train, calib, target, k, pick["layers"], stream, args, th)
            cache["rows"][name] = r
            _save_cache(cache)
            print(f"{name}: {json.dumps(r)}", flush=True)
    cache["env"] = {
        "machine": machine_line(th), "sentences": len(sents), "corpus": len(texts), "tokens": tokens,
        "corpus_s": corpus_s, "dense_params": params(dense), "dense_macs": count_macs(dense, x),
        "dense_ms": speedup(dense, dense, x, args.runs, args.rounds, th)[1],
        "runs": args.runs, "rounds": args.rounds, "lr": args.lr, "train_threads": args.train_threads,
    }  # fmt: skip
    _save_cache(cache)
    return cache


def _proxy_text(cache: dict) -> str:
    """The shape search as text: each candidate's measured speedup, params ratio and proxy cosine."""
    shapes = {f"{s['k']},{s['layers']}": s for s in cache["shapes"]}
    parts = []
    for name, cos in sorted(cache.get("proxy", {}).items()):
        s = shapes[name]
        parts.append(f"k={s['k']}/12, {s['layers']} layers: {s['speedup']:.2f}x, {s['params_ratio']:.2f}, "
                     f"cos {cos:.3f}")  # fmt: skip
    return "candidates: " + "; ".join(parts)


def _stock(row: dict) -> str:
    refused = row["reload"].startswith("refused")
    return "stock save refused (BERT sizes a head as hidden / heads)" if refused else "reloads in stock ST"


def markdown(cache: dict) -> str:
    env = cache["env"]
    rows = sorted(
        cache["rows"].values(), key=lambda r: (r["target"], "no stream" in r["variant"], r["steps"])
    )
    table = [["dense", "384 / 12 / 1536 / 6", f"{env['dense_params'] / 1e6:.2f} M", "1.00",
              f"{env['dense_macs'] / 1e9:.3f} G", f"{env['dense_ms']:.0f}", "1.00x", "1.000 / 1.000",
              "1.000 / 1.000", "1.000 / 1.000", "—", "—"]]  # fmt: skip
    for r in rows:
        b, a = r["before"], r["after"]
        table.append([
            f"{r['target']}x: {r['variant']}", f"{r['hidden']} / {r['heads']} / {r['ffn']} / {r['layers']}",
            f"{r['params'] / 1e6:.2f} M", f"{r['params_ratio']:.2f}", f"{r['macs'] / 1e9:.3f} G",
            f"{r['ms']:.0f}", f"{r['speedup']:.2f}x", f"{b['cosine_mean']:.3f} / {a['cosine_mean']:.3f}",
            f"{b['cosine_min']:.3f} / {a['cosine_min']:.3f}", f"{b['spearman']:.3f} / {a['spearman']:.3f}",
            f"{r['steps']} steps, {r['distill_s'] / 60:.1f} min", r["reload"],
        ])  # fmt: skip
    lines = [
        "## all-MiniLM-L6-v2 compressed to latency targets: heads + FFN + hidden size + layers, distilled",
        "",
        f"`bench/bench_minilm_compress.py`. {env['machine']} Timings were taken on a shared 2-core machine "
        "loaded by other engineers' jobs (latency: median of "
        f"{env['runs']} runs on a batch of the first 8 evaluation sentences, padded, best of {env['rounds']} "
        "rounds interleaved with the dense model; speedup = dense / pruned in those rounds). Fidelity: "
        f"the {env['sentences']} sentences of `bench/data/sentences.txt` against the dense embeddings, "
        "before / after distillation (mean and min cosine, Spearman of all pairwise similarities).",
        "",
        f"Corpus: `package_corpus()`, {env['corpus']:,} sentences ({env['tokens'] / 1e6:.2f} M word-piece "
        "tokens with [CLS]/[SEP]) from the prose of the installed packages (docstrings of every Python file "
        "in site-packages, .rst/.md/.txt documents, licences, METADATA descriptions) and the standard "
        "library's docstrings and reference manual; deduplicated, every exact or near-exact (word Jaccard "
        "≥ 0.8) copy of an evaluation sentence removed, shuffled with seed 0, cached ("
        + (
            f"built in {env['corpus_s']:.0f} s in this run"
            if env["corpus_s"] > 5
            else "read from its cache in this run; a build takes about 65 s here"
        )
        + "). The first 64 sentences give the "
        "activation statistics of the stream cut and the layer scores, the next 64 pick the shape per "
        "target, the rest are distilled on.",
        "",
        "Compression: `add_projection` (an identity `Dense` after pooling, so the embedding keeps 384 dims "
        "while the stream is cut), `prune(ratio=k/12, stream=True, data=...)` (the direct cut, ranked by "
        "mean x² at every LayerNorm input; SliceGPT's invariant transform does not follow post-norm BERT "
        "in prunekit and is refused), `prune_layers(n, data=...)` (cosine-scored). The shape per target: "
        "of the (k, layers) shapes timed at or above the target (within 1.35x of it, params ≤ 0.6 from 2x "
        "on), the one whose undistilled copy keeps the highest mean cosine on 64 held-out corpus sentences "
        f"({_proxy_text(cache)}). Distillation: `distill_layerwise`, batches of 16, "
        f"AdamW lr {env['lr']:g}, warm-up + cosine, {env['train_threads']} threads; loss = 1 - cos of the "
        "embeddings + mean over kept layers of MSE + (1 - cos) per token against the dense layer of the same "
        "index, on the kept channels. Stock reload: `save_sentence_transformer` then "
        "`SentenceTransformer(dir).encode` on the 124 sentences, max |diff| to the pruned embedder.",
        "",
        *markdown_table(
            [
                "model",
                "hidden / heads / FFN / layers",
                "params",
                "params ratio",
                "MACs (8 sent.)",
                "latency ms",
                "speedup",
                "mean cos before / after",
                "min cos before / after",
                "Spearman before / after",
                "distillation",
                "stock reload max diff",
            ],
            table,
        ),
        "",
    ]
    goals = {1.5: 0.95, 2.0: 0.90}
    longest = max(r["steps"] for r in rows)
    lines.append(
        f"- Budget: {longest} steps of 16 sentences per model is {16 * longest:,} of the {env['corpus']:,} "
        "corpus sentences (the corpus is far from used up; the time per model is in the table). The dense "
        "row's latency is a separate final measurement; each speedup comes from the rounds interleaved with "
        "that row, and differs from the search's timing of the same shape on this shared machine."
    )
    by = {(r["target"], "no stream" in r["variant"], r["steps"]): r for r in rows}
    for t in sorted({r["target"] for r in rows}):
        ours, peer = by.get((t, False, longest)), by.get((t, True, longest))
        if ours and peer:
            lines.append(
                f"- {t}x, {longest} steps: with the stream cut mean cos {ours['after']['cosine_mean']:.3f}, "
                f"Spearman {ours['after']['spearman']:.3f}, params {ours['params_ratio']:.2f} "
                f"({ours['speedup']:.2f}x), {_stock(ours)}; heads + FFN only: "
                f"{peer['after']['cosine_mean']:.3f}, {peer['after']['spearman']:.3f}, params "
                f"{peer['params_ratio']:.2f} ({peer['speedup']:.2f}x), {_stock(peer)}."
            )
    for r in rows:
        if "no stream" in r["variant"] or r["target"] not in goals or r["steps"] != longest:
            continue
        g, a = goals[r["target"]], r["after"]
        miss = [f"{n} {a[f]:.3f} vs {g} ({a[f] - g:+.3f})" for n, f in (("mean cos", "cosine_mean"),
                ("Spearman", "spearman")) if a[f] < g]  # fmt: skip
        if r["target"] >= 2 and r["params_ratio"] > PARAMS_CAP:
            miss.append(f"params {r['params_ratio']:.2f} vs {PARAMS_CAP}")
        if r["speedup"] < r["target"]:
            miss.append(f"measured speedup {r['speedup']:.2f}x vs {r['target']}x")
        state = "met" if not miss else "missed: " + "; ".join(miss)
        lines.append(f"- Goal at {r['target']}x (≥ {g} mean cos and Spearman"
                     + (", params ≤ 0.6" if r["target"] >= 2 else "") + f"): {state}.")  # fmt: skip
    lines += [
        "",
        "Published trade-off of smaller sentence models, as context only (sbert.net pretrained-models "
        "table: average over 14 sentence-embedding tasks, sentences/s on a V100 GPU; not measured here, "
        "and not comparable with the fidelity columns above, which measure closeness to all-MiniLM-L6-v2):",
        "",
        *markdown_table(
            ["model", "avg. 14 tasks", "sentences/s", "size"],
            [[n, f"{s:.2f}", str(v), z] for n, s, v, z in PUBLISHED],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    quick = "one target (2x), 3 distillation steps, a 4-shape search, the peer at k=3/12: checks the pipeline"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(1, quick)])
    parser.add_argument("--steps", type=int, default=None, help="distillation steps per model (default 12)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--runs", type=int, default=10, help="latency runs per round")
    parser.add_argument("--search-runs", type=int, default=5, help="latency runs per round in the search")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (min is kept)")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore the cached rows")
    parser.add_argument("--report", action="store_true", help="write the section from the cached rows only")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 3 if args.quick else 12
    if args.quick:
        args.runs, args.rounds = 3, 1
    if args.report:
        cache = json.loads(CACHE.read_text())["quick" if args.quick else "full"]
    else:
        cache = run(args)
    finish("minilm-compress", markdown(cache), args, write=not args.quick)


if __name__ == "__main__":
    main()
