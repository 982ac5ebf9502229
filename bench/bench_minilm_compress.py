"""Real all-MiniLM-L6-v2 compressed to measured latency targets (1.5x, 2x, 3x): heads + FFN + hidden size
(the residual stream, prunekit's direct cut) + layers, then layer-wise distillation from the dense model on
an offline corpus (:func:`prunekit.models.corpus.package_corpus`, ``--corpus``). Each finished row is kept in
``bench/results/minilm_compress.json`` (a rerun with the same settings resumes); writes section
``minilm-compress`` of docs/RESULTS.md (not in ``--quick`` mode), with the previous method's run (uniform
k/12 cuts, kept in the JSON as ``full-uniform``) as the before.

    .venv/bin/python bench/bench_minilm_compress.py [--quick] [--steps 300] [--lr 5e-4] [--fresh] [--no-write]
        [--corpus wordnet,fortunes]   # needs: apt-get install wordnet-base fortunes
        [--pair-weight W] [--vocab]   # distillation's pairwise term; a vocabulary cut after it

Shapes: ``(heads, FFN, layers)`` from :data:`SHAPES`; a shape keeps ``heads`` heads of 32, a stream of
``32 * heads`` channels (12 heads: the stream is not cut) and ``ffn`` FFN neurons in every layer, so stock
``BertModel`` rebuilds it, cut through prunekit's road with the units per group given by kind
(:func:`cut_widths`: heads and FFN by ``--criterion``, the stream by ``--stream``), then
:func:`prunekit.prune_layers`. The shape per target is chosen by measured latency: every shape is timed as
a randomly initialised BertModel of that shape, interleaved with the dense model; among the shapes at or
above the target speedup, within 1.35x of it (and, from 2x on, at most 0.6 of the dense params), the one
whose pruned, undistilled copy stays closest to the dense embeddings of 64 held-out corpus sentences is
taken. The held-out fidelity is also measured at :data:`CURVE` fractions of the distillation (the curve).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import common_args, finish, machine_line, markdown_table

from prunekit._atomic import write_text
from prunekit.config import PruneConfig
from prunekit.deploy.pretrained import save_sentence_transformer
from prunekit.errors import ExportError
from prunekit.measure.latency import measure_latency
from prunekit.measure.macs import count_macs
from prunekit.models.corpus import package_corpus, wordnet_lemmas
from prunekit.models.sentence import (
    SentenceEmbedder,
    add_projection,
    copy_embedder,
    distill_layerwise,
    fidelity,
    load_minilm,
    stream_channels,
)
from prunekit.models.vocab import prune_vocab
from prunekit.structured import pipeline
from prunekit.structured.cut import apply
from prunekit.structured.layers import prune_layers

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"
CACHE = HERE / "results" / "minilm_compress.json"
PREVIOUS = "full-uniform"  # the cache's record of the previous method's run (uniform k/12 cuts)
TARGETS = (1.5, 2.0, 3.0)
PARAMS_CAP = 0.6  # the params goal from 2x on
HEAD = 32  # MiniLM's head width: a head-pruned stream keeps HEAD * heads channels
DENSE = (12, 1536, 6)  # heads, FFN neurons, layers of all-MiniLM-L6-v2
#: the searched (heads, FFN, layers) shapes: FFN cut at full depth and heads, FFN with heads and the
#: stream, layers dropped, and their mixes (dense is 12, 1536, 6)
SHAPES = (
    (12, 1024, 6), (12, 768, 6), (12, 512, 6), (12, 384, 6), (12, 256, 6), (12, 128, 6),
    (12, 1024, 5), (12, 768, 5), (12, 512, 5), (12, 768, 4), (12, 512, 4),
    (11, 1024, 6), (11, 768, 6), (11, 512, 6), (10, 1024, 6), (10, 768, 6), (10, 512, 6), (10, 256, 6),
    (10, 1024, 5), (10, 512, 5), (10, 384, 4),
    (9, 768, 6), (9, 512, 6), (9, 384, 6), (9, 256, 6), (9, 768, 5), (9, 512, 5), (9, 512, 4),
    (8, 768, 6), (8, 512, 6), (8, 384, 6), (8, 512, 5), (8, 384, 5), (8, 768, 4), (8, 512, 4),
)  # fmt: skip
QUICK_SHAPES = ((12, 768, 6), (9, 512, 6), (8, 512, 4))
#: heads/FFN criteria and stream importances compared (undistilled) on each picked shape
CRITERIA = ("l2", "activation", "wanda")
STREAMS = ("activation", "output", "weighted", "random")
#: fractions of the distillation steps at which the held-out fidelity is measured (the curve)
CURVE = (0.125, 0.25, 0.5, 1.0)
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
    dense: torch.nn.Module, model: torch.nn.Module, x: dict, runs: int, rounds: int, th: int,
    x_model: dict | None = None,
) -> tuple:  # fmt: skip
    """(best latency ms of ``model``, best of ``dense``, their ratio), rounds interleaved (shared machine);
    ``x_model``: the model's own inputs (its tokenizer's ids, after a vocabulary cut), else ``x``."""
    best_m, best_d = float("inf"), float("inf")
    for _ in range(rounds):
        best_d = min(best_d, _latency(dense, x, runs, th))
        best_m = min(best_m, _latency(model, x if x_model is None else x_model, runs, th))
    return best_m, best_d, best_d / best_m


def shape_model(heads: int, ffn: int, layers: int) -> SentenceEmbedder:
    """A random BertModel embedder of a pruned shape: ``heads`` heads of 32 (hidden ``32 * heads``, the
    stream cut with them, so stock ``BertModel`` rebuilds it), ``ffn`` FFN neurons, ``layers`` layers."""
    from transformers import BertConfig, BertModel

    hidden = HEAD * heads
    cfg = BertConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
        num_hidden_layers=layers, max_position_embeddings=512, vocab_size=30522,
    )  # fmt: skip
    emb = SentenceEmbedder(BertModel(cfg).eval(), max_length=256)
    if hidden < DENSE[0] * HEAD:
        emb.projection = torch.nn.Linear(hidden, DENSE[0] * HEAD, bias=False)
    return emb.eval()


def search(dense, x, shapes, runs, rounds, th) -> list[dict]:
    """Measured speedup and params ratio of every (heads, FFN, layers) shape."""
    dense_params = params(dense)
    out = []
    for heads, ffn, n in shapes:
        m = shape_model(heads, ffn, n)
        ms, dms, s = speedup(dense, m, x, runs, rounds, th)
        out.append({"heads": heads, "ffn": ffn, "layers": n, "speedup": s, "ms": ms, "dense_ms": dms,
                    "params_ratio": params(m) / dense_params})  # fmt: skip
        print(f"shape {_name(out[-1])}: {s:.2f}x params {out[-1]['params_ratio']:.2f}", flush=True)
    return out


def _name(shape: dict) -> str:
    return f"{shape['heads']},{shape['ffn']},{shape['layers']}"


def candidates(shapes: list[dict], target: float) -> list[dict]:
    """The shapes reaching ``target`` (params capped from 2x on) within 1.35x of it (all of them if none
    is that close; the fastest alone if none reaches it)."""
    cap = PARAMS_CAP if target >= 2 else 1.0
    ok = [s for s in shapes if s["speedup"] >= target and s["params_ratio"] <= cap]
    if not ok:
        return [max(shapes, key=lambda s: s["speedup"])]
    return [s for s in ok if s["speedup"] <= 1.35 * target] or ok


def proxy(dense, x, calib, held: list[str], held_emb: torch.Tensor, shape: dict, args) -> float:
    """Mean cosine to the dense embeddings of held-out corpus sentences (never the evaluation ones) of the
    pruned, undistilled shape: what picks the shape per target."""
    student = build(dense, x, calib, shape["heads"], shape["ffn"], shape["layers"], args)[0]
    return fidelity(held_emb, student.embed(held)).cosine_mean


def _calib(dense, texts: list[str]) -> list[dict]:
    return [dense.tokenize(texts[i : i + 16]) for i in range(0, 64, 16)]


def cut_widths(student, x, calib, heads: int, ffn: int, args) -> None:
    """Cut ``student`` (dense MiniLM widths) to ``heads`` heads per layer, ``ffn`` FFN neurons per layer and
    a stream of ``32 * heads`` channels, in place: prunekit's road (trace, score, plan, apply) with the
    units per group given by kind instead of one ratio. Heads and FFN neurons are ranked by
    ``args.criterion``, the stream by ``stream=args.stream`` on ``calib``."""
    hidden = HEAD * heads
    cut_stream = hidden < DENSE[0] * HEAD
    cfg = PruneConfig(ratio=0.5, criterion=args.criterion, stream=args.stream if cut_stream else None,
                      data=calib, measure=False)  # fmt: skip
    scored = pipeline.traced(student, x, cfg)
    removed = {}
    for g in scored.report.prunable_groups:
        if g.width == DENSE[0] * HEAD:  # the stream, and BERT's pooler (unused; stock BERT sizes it so)
            k = DENSE[0] * HEAD - hidden
        elif g.width == DENSE[0]:
            k = DENSE[0] - heads
        elif g.width == DENSE[1]:
            k = DENSE[1] - ffn
        else:
            continue
        order = np.argsort(scored.scores[g.id].numpy(), kind="stable")
        order = order[~g.unit_pinned[order]]
        if k > 0:
            removed[g.id] = sorted(int(u) for u in order[:k])
    if removed:
        apply(student, pipeline.plan_of_units(scored, removed, 0.5, "local", None, 0.9), x)


def build(
    dense, x, calib, heads: int, ffn: int, layers: int, args
) -> tuple[SentenceEmbedder, object, list[str]]:
    """The pruned copy: heads, FFN and (with fewer than 12 heads) the hidden size, then layers."""
    student = copy_embedder(dense)
    cut_stream = heads < DENSE[0]
    if cut_stream:
        add_projection(student)
    cut_widths(student, x, calib, heads, ffn, args)
    channels = stream_channels(student) if cut_stream else None
    removed: list[str] = []
    if layers < DENSE[2]:
        removed = prune_layers(student, x, n=DENSE[2] - layers, data=calib).removed
    return student, channels, removed


def ablation(dense, x, calib, held, held_emb, picks: dict, args) -> dict:
    """Undistilled held-out mean cosine of the picked shapes under other rankings: the heads/FFN criterion
    (:data:`CRITERIA`, the stream as ``args.stream``) and, where the stream is cut, the stream importance
    (:data:`STREAMS`, heads/FFN as ``args.criterion``)."""
    out: dict[str, dict[str, float]] = {}
    for pick in picks.values():
        name = _name(pick)
        if name in out:
            continue
        out[name] = {}
        kinds = [("criterion", c) for c in CRITERIA]
        if pick["heads"] < DENSE[0]:
            kinds += [("stream", k) for k in STREAMS]
        for option, value in kinds:
            probe = argparse.Namespace(**{**vars(args), option: value})
            student = build(dense, x, calib, pick["heads"], pick["ffn"], pick["layers"], probe)[0]
            out[name][f"{option}={value}"] = fidelity(held_emb, student.embed(held)).cosine_mean
            print(f"ablation {name} {option}={value}: cos {out[name][f'{option}={value}']:.3f}", flush=True)
    return out


def reinitialise(student: SentenceEmbedder, seed: int = 0) -> None:
    """Every weight of ``student`` drawn afresh as BERT initialises a new model (linears and embeddings
    N(0, 0.02), biases 0, LayerNorms 1 / 0): the same shape, trained from scratch (the peer)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.weight.normal_(0.0, 0.02)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
            bias = getattr(m, "bias", None)
            if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm)) and bias is not None:
                bias.zero_()


def row(dense, dense_emb, sents, x, texts, calib, held, held_emb, target, shape, args, th,
        scratch: bool = False, vocab_texts: list[str] | None = None) -> dict:  # fmt: skip
    """One compressed model at ``shape``, distilled; ``scratch``: the same shape from random init;
    ``vocab_texts``: then its vocabulary cut to the tokens of these texts (:func:`prunekit.prune_vocab`)."""
    t0 = time.perf_counter()
    student, channels, removed = build(dense, x, calib, shape["heads"], shape["ffn"], shape["layers"], args)
    if scratch:
        reinitialise(student)
    prune_s = time.perf_counter() - t0
    before = fidelity(dense_emb, student.embed(sents))
    checkpoints = {max(1, round(args.steps * f)) for f in CURVE}
    curve: list[dict] = []
    t_eval = [0.0]

    def measure(step: int, loss: float) -> None:
        if step in checkpoints:
            t = time.perf_counter()
            f = fidelity(held_emb, student.embed(held))
            curve.append({"step": step, "held_cos": f.cosine_mean, "held_spearman": f.spearman, "loss": loss})
            t_eval[0] += time.perf_counter() - t
            print(f"  step {step}: held-out cos {f.cosine_mean:.3f} Spearman {f.spearman:.3f}", flush=True)

    torch.set_num_threads(args.train_threads)
    t0 = time.perf_counter()
    losses = distill_layerwise(student, dense, texts, steps=args.steps, batch_size=16, lr=args.lr,
                               channels=channels, pair_weight=args.pair_weight, on_step=measure)  # fmt: skip
    distill_s = time.perf_counter() - t0 - t_eval[0]
    torch.set_num_threads(th)
    vocab = None
    if vocab_texts is not None:
        cut, _ = prune_vocab(student, vocab_texts)
        vocab = {"kept": cut.kept, "dropped": cut.dropped, "texts": len(vocab_texts)}
    xs = student.tokenize(sents[:8])
    after = fidelity(dense_emb, student.embed(sents))
    ms, dms, s = speedup(dense, student, x, args.runs, args.rounds, th, x_model=xs)
    layer0 = student.encoder.encoder.layer[
        next(i for i in range(DENSE[2]) if f"encoder.encoder.layer.{i}" not in removed)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = save_sentence_transformer(student, Path(tmp) / "st", sentences=sents)
            reload = f"{saved.max_abs_diff:.1e}"
        except ExportError as err:
            reload = "refused: " + str(err).split(": ", 1)[1].split(";")[0]
    return {
        "target": target, "shape": _name(shape), "removed": removed,
        "variant": "the same shape from random init (peer)" if scratch
        else "heads+FFN+hidden+layers" if shape["heads"] < DENSE[0] else "FFN+layers (no stream cut)",
        "scratch": scratch,
        "hidden": int(student.encoder.get_input_embeddings().embedding_dim),
        "heads": int(layer0.attention.self.num_attention_heads),
        "ffn": int(layer0.intermediate.dense.out_features), "layers": shape["layers"],
        "params": params(student), "params_ratio": params(student) / params(dense),
        "macs": count_macs(student, xs), "ms": ms, "vocab": vocab, "dense_ms": dms, "speedup": s,
        "before": before.to_dict(), "after": after.to_dict(), "curve": curve,
        "steps": args.steps, "pair_weight": args.pair_weight, "prune_s": prune_s, "distill_s": distill_s,
        "loss": [losses[0], losses[-1]] if losses else None, "reload": reload, "machine": machine_line(th),
    }  # fmt: skip


def row_name(target: float, args: argparse.Namespace) -> str:
    """A row's key in the cache: ``TARGET/STEPS``, then ``/pairW`` with a pairwise-similarity term and
    ``/vocab`` with a vocabulary cut."""
    return (f"{target}/{args.steps}" + (f"/pair{args.pair_weight:g}" if args.pair_weight else "")
            + ("/vocab" if args.vocab else ""))  # fmt: skip


def vocab_shapes(shapes: list[dict], kept: int, dense_params: int) -> list[dict]:
    """``shapes`` with each params ratio less the embedding rows a vocabulary cut to ``kept`` tokens removes
    (``30522 - kept`` rows of the shape's ``32 * heads`` channels).

    >>> shape = vocab_shapes([{"heads": 10, "params_ratio": 0.6}], 30522 - 1000, 3_200_000)[0]
    >>> round(shape["params_ratio"], 3)
    0.5
    """
    return [dict(s, params_ratio=s["params_ratio"] - (30522 - kept) * HEAD * s["heads"] / dense_params)
            for s in shapes]  # fmt: skip


def mode_of(args: argparse.Namespace) -> str:
    """The cached run's name: ``quick`` or ``full``, then ``+SOURCE`` for each corpus source but the default
    ``packages`` (so runs on other corpora sit beside the packages-only run)."""
    extra = [s for s in args.corpus if s != "packages"]
    return ("quick" if args.quick else "full") + "".join(f"+{s}" for s in extra)


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
    texts = package_corpus(exclude=sents, sources=args.corpus)
    corpus_s = time.perf_counter() - t0
    dense = load_minilm()
    tokens = sum(len(t) for t in dense.tokenizer(texts)["input_ids"])
    dense_emb = dense.embed(sents)
    x = dense.tokenize(sents[:8])
    calib = _calib(dense, texts)
    train = texts[128:]  # the first 64 give the activation statistics, the next 64 the shape choice
    targets = (2.0,) if args.quick else args.targets
    settings = [args.quick, args.lr, args.runs, args.rounds, th, args.train_threads, len(texts),
                args.criterion, args.stream, SHAPES]  # fmt: skip
    cache = _load_cache(mode_of(args), json.dumps(settings), args.fresh)
    if "shapes" not in cache:
        grid = QUICK_SHAPES if args.quick else SHAPES
        cache["shapes"] = search(dense, x, grid, args.search_runs, args.rounds, th)
        _save_cache(cache)
    held = texts[64:128]  # proxy sentences for the shape choice: the corpus, not the evaluation set
    held_emb = dense.embed(held)
    scores = cache.setdefault("proxy", {})
    shapes, vocab_texts, tag = cache["shapes"], None, ""
    if args.vocab:  # the params cap counts the vocabulary cut the rows will get
        vocab_texts, tag = texts + wordnet_lemmas(), "/vocab"
        kept = prune_vocab(copy_embedder(dense), vocab_texts)[0].kept
        shapes = vocab_shapes(shapes, kept, params(dense))
    for target in targets:
        for c in candidates(shapes, target):
            if _name(c) not in scores:
                scores[_name(c)] = proxy(dense, x, calib, held, held_emb, c, args)
                _save_cache(cache)
                print(f"proxy {_name(c)}: cos {scores[_name(c)]:.3f}", flush=True)
        pick = max(candidates(shapes, target), key=lambda c: scores[_name(c)])
        cache.setdefault("picks", {})[f"{target}{tag}"] = pick
        name = row_name(target, args)
        if name in cache["rows"]:
            continue
        r = row(dense, dense_emb, sents, x, train, calib, held, held_emb, target, pick, args, th,
                vocab_texts=vocab_texts)  # fmt: skip
        cache["rows"][name] = r
        _save_cache(cache)
        print(f"{name}: {json.dumps(r)}", flush=True)
    for target in targets if args.peer else ():
        name = row_name(target, args) + "/scratch"
        if name not in cache["rows"]:
            pick = cache["picks"][f"{target}{tag}"]
            cache["rows"][name] = row(dense, dense_emb, sents, x, train, calib, held, held_emb, target, pick,
                                      args, th, scratch=True, vocab_texts=vocab_texts)  # fmt: skip
            _save_cache(cache)
            print(f"{name}: {json.dumps(cache['rows'][name])}", flush=True)
    if not args.quick and "ablation" not in cache:
        picks = {t: p for t, p in cache["picks"].items() if not t.endswith("/vocab")}
        cache["ablation"] = ablation(dense, x, calib, held, held_emb, picks, args)
        _save_cache(cache)
    # the dense model as the run that started this cache measured it; each row names its own machine
    cache.setdefault("env", {
        "machine": machine_line(th), "sentences": len(sents), "corpus": len(texts), "tokens": tokens,
        "corpus_s": corpus_s, "dense_params": params(dense), "dense_macs": count_macs(dense, x),
        "dense_ms": speedup(dense, dense, x, args.runs, args.rounds, th)[1],
        "runs": args.runs, "rounds": args.rounds, "lr": args.lr, "train_threads": args.train_threads,
        "criterion": args.criterion, "stream": args.stream, "sources": list(args.corpus),
    })  # fmt: skip
    _save_cache(cache)
    return cache


def _proxy_text(cache: dict, target: float, kept: int | None = None) -> str:
    """The candidates of ``target`` as text: each one's measured speedup, params ratio and proxy cosine;
    ``kept``: with the params of a vocabulary cut to that many tokens."""
    shapes = (
        cache["shapes"] if kept is None else vocab_shapes(cache["shapes"], kept, cache["env"]["dense_params"])
    )
    parts = []
    for c in sorted(candidates(shapes, target), key=lambda c: -cache["proxy"][_name(c)]):
        parts.append(f"{c['heads']}/{c['ffn']}/{c['layers']}: {c['speedup']:.2f}x, {c['params_ratio']:.2f}, "
                     f"cos {cache['proxy'][_name(c)]:.3f}")  # fmt: skip
    return "; ".join(parts)


def steps_to(curve: list[dict], goal: float, key: str = "held_cos") -> float | None:
    """Steps at which the held-out ``key`` (mean cosine, or ``held_spearman``) would reach ``goal``,
    extrapolating the run's curve: a power law ``1 - value = a * step**b`` through its last three points
    (None if it does not fall)."""
    pts = [(c["step"], 1 - c[key]) for c in curve[-3:] if c[key] < 1]
    if len(pts) < 2:
        return None
    b, a = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
    if b >= 0:
        return None
    return float(np.exp((np.log(1 - goal) - a) / b))


def _before_rows(previous: dict | None) -> list[str]:
    """The previous run's stream rows (uniform k/12 cuts, input-energy stream, L2 heads/FFN) as text."""
    if not previous:
        return []
    rows = [r for r in previous["rows"].values() if "no stream" not in r["variant"]]
    longest = max(r["steps"] for r in rows)
    out = []
    for r in sorted((r for r in rows if r["steps"] == longest), key=lambda r: r["target"]):
        a = r["after"]
        shape = f"{r['hidden']}/{r['heads']}/{r['ffn']}/{r['layers']}"
        out.append(f"{r['target']}x {shape} ({r['speedup']:.2f}x, "
                   f"params {r['params_ratio']:.2f}): undistilled mean cos {r['before']['cosine_mean']:.3f}, "
                   f"after {longest} steps {a['cosine_mean']:.3f}, Spearman {a['spearman']:.3f}")  # fmt: skip
    return out


#: how the section describes each corpus source
SOURCE_TEXT = {
    "packages": "the prose of the installed packages (docstrings of every Python file in site-packages, "
    ".rst/.md/.txt documents, licences, METADATA descriptions) and the standard library's docstrings and "
    "reference manual",
    "wordnet": "the usage examples of WordNet 3.0's glosses (Debian `wordnet-base`: everyday sentences "
    "such as 'These pictures bring back sad memories.')",
    "fortunes": "the epigrams, quotations and jokes of Debian's `fortunes` package",
}


def _other_corpus_rows(other: dict | None) -> list[str]:
    """The packages-corpus run's rows (the longest distillation per target) as text."""
    if not other or not other.get("rows"):
        return []
    best: dict[float, dict] = {}
    for r in other["rows"].values():
        if r["steps"] >= best.get(r["target"], {"steps": -1})["steps"]:
            best[r["target"]] = r
    return [f"{t}x {r['hidden']}/{r['heads']}/{r['ffn']}/{r['layers']}, {r['steps']} steps: mean cos "
            f"{r['after']['cosine_mean']:.3f}, Spearman {r['after']['spearman']:.3f}"
            for t, r in sorted(best.items())]  # fmt: skip


def _pair_text(r: dict) -> str:
    """``, pairwise W`` for a row distilled with the pairwise-similarity term, ``, vocab N tokens`` for one
    whose vocabulary was cut, else nothing."""
    vocab = f", vocab {r['vocab']['kept']:,} tokens" if r.get("vocab") else ""
    return (f", pairwise {r['pair_weight']:g}" if r.get("pair_weight") else "") + vocab


def markdown(cache: dict, previous: dict | None = None, packages: dict | None = None) -> str:
    env = cache["env"]
    sources = env.get("sources", ["packages"])
    rows = sorted(cache["rows"].values(), key=lambda r: (r["target"], r["steps"], r.get("pair_weight", 0),
                                                           bool(r.get("vocab"))))  # fmt: skip
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
            f"{r['steps']} steps{_pair_text(r)}, {r['distill_s'] / 60:.1f} min", r["reload"],
        ])  # fmt: skip
    lines = [
        "## all-MiniLM-L6-v2 compressed to latency targets: heads + FFN + hidden size + layers, distilled",
        "",
        f"`bench/bench_minilm_compress.py`. {env['machine']} Timings were taken on a shared 2-core machine, "
        "where other work makes them noisy (latency: median of "
        f"{env['runs']} runs on a batch of the first 8 evaluation sentences, padded, best of {env['rounds']} "
        "rounds interleaved with the dense model; speedup = dense / pruned in those rounds). Fidelity: "
        f"the {env['sentences']} sentences of `bench/data/sentences.txt` against the dense embeddings, "
        "before / after distillation (mean and min cosine, Spearman of all pairwise similarities).",
        "",
        f"Corpus: `package_corpus(sources={tuple(sources)})`, {env['corpus']:,} sentences "
        f"({env['tokens'] / 1e6:.2f} M word-piece tokens with [CLS]/[SEP]) from "
        + "; ".join(SOURCE_TEXT[s] for s in sources)
        + "; deduplicated, every exact or near-exact (word Jaccard "
        "≥ 0.8) copy of an evaluation sentence removed, shuffled with seed 0, cached ("
        + (
            f"built in {env['corpus_s']:.0f} s in this run"
            if env["corpus_s"] > 5
            else "read from its cache in this run; a build of the packages source takes about 65 s here"
        )
        + "). The first 64 sentences give the "
        "activation statistics of the stream cut and the layer scores, the next 64 (*held-out*) pick the "
        "shape per target and give the distillation curve, the rest are distilled on.",
        "",
        "Compression: heads, FFN neurons and the residual stream are cut with widths per kind (not one "
        "ratio): `add_projection` (an identity `Dense` after pooling, so the embedding keeps 384 dims while "
        "the stream is cut), then prunekit's road (`pipeline.traced` with "
        f"`criterion={env['criterion']!r}` for heads and FFN, `stream={env['stream']!r}` for the stream; "
        "`plan_of_units`; `apply`) keeping `heads` heads of 32 and a stream of `32 * heads` channels (so "
        "stock `BertModel` rebuilds it; 12 heads: no stream cut) and `ffn` neurons per layer, then "
        "`prune_layers(n, data=...)` (cosine-scored). The shape per target: of the "
        f"{len(cache['shapes'])} (heads, FFN, layers) shapes timed as random BertModels at or above the "
        "target (within 1.35x of it, params ≤ 0.6 from 2x on), the one whose undistilled copy keeps the "
        "highest mean cosine on the held-out sentences. Distillation: `distill_layerwise`, batches of 16, "
        f"AdamW lr {env['lr']:g}, warm-up + cosine, {env['train_threads']} threads; loss = 1 - cos of the "
        "embeddings + mean over kept layers of MSE + (1 - cos) per token against the dense layer of the same "
        "index, on the kept channels; *pairwise w* adds w times the mean squared gap between the student's "
        "and the dense model's cosine similarities of every pair of sentences in the batch. Stock reload: "
        "`save_sentence_transformer` then `SentenceTransformer(dir).encode` on the 124 sentences, max "
        "|diff| to the pruned embedder.",
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
    for r in {r["target"]: r for r in rows}.values():
        lines.append(f"- {r['target']}x candidates (heads/FFN/layers: search speedup, params ratio, "
                     f"undistilled held-out cos): {_proxy_text(cache, r['target'])}.")  # fmt: skip
    for r in {r["target"]: r for r in rows if r.get("vocab")}.values():
        kept = r["vocab"]["kept"]
        lines.append(f"- {r['target']}x candidates with the vocabulary cut to {kept:,} tokens (its params "
                     f"counted): {_proxy_text(cache, r['target'], kept)}.")  # fmt: skip
    for r in rows:
        pts = ", ".join(f"{c['step']}: {c['held_cos']:.3f} / {c['held_spearman']:.3f}" for c in r["curve"])
        peer = " (the same shape from random init)" if r.get("scratch") else ""
        lines.append(f"- {r['target']}x{peer}, {r['steps']} steps{_pair_text(r)}, distillation curve "
                     f"(step: held-out mean cos / Spearman): {pts}; at the end held-out "
                     f"{r['curve'][-1]['held_cos']:.3f} vs the evaluation sentences' "
                     f"{r['after']['cosine_mean']:.3f}"
                     + (" (the corpus is the packages' technical prose, the evaluation set everyday "
                        "sentences)." if sources == ["packages"] else "."))  # fmt: skip
    for name, scores in sorted(cache.get("ablation", {}).items()):
        h, f, n = name.split(",")
        parts = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
        lines.append(
            f"- Rankings compared on {32 * int(h)}/{h}/{f}/{n} (undistilled held-out mean cos): {parts}."
        )
    cpu = env["machine"].split(",")[0]
    for r in rows:
        if r.get("machine", env["machine"]).split(",")[0] != cpu:
            where = r["machine"].removeprefix("Machine: ").rstrip(".")
            lines.append(f"- {r['target']}x, {r['steps']} steps{_pair_text(r)} was measured on another "
                         f"machine, {where} (its latency and speedup against that machine's dense "
                         "model).")  # fmt: skip
    before = _before_rows(previous)
    if before:
        lines.append("- Before (the previous run of this bench: uniform k/12 cuts of heads, FFN and stream, "
                     "L2-ranked heads/FFN, input-energy stream ranking): "
                     + "; ".join(before) + ".")  # fmt: skip
    other = _other_corpus_rows(packages) if sources != ["packages"] else []
    if other:
        lines.append("- The same bench on the packages corpus alone (`--corpus packages`, an earlier run): "
                     + "; ".join(other) + ".")  # fmt: skip
    for peer in (r for r in rows if r.get("scratch")):
        ours = next((r for r in rows if not r.get("scratch") and r["target"] == peer["target"]
                     and r["steps"] == peer["steps"] and _pair_text(r) == _pair_text(peer)),
                    None)  # fmt: skip
        if ours is not None:
            a, b = ours["after"], peer["after"]
            lines.append(
                f"- Peer at {peer['target']}x ({peer['shape']}, {peer['steps']} steps each, the same loss, "
                f"corpus and schedule): pruned from the dense model and distilled, mean cos "
                f"{a['cosine_mean']:.3f} / Spearman {a['spearman']:.3f}; the same shape from random init, "
                f"{b['cosine_mean']:.3f} / {b['spearman']:.3f} ({a['cosine_mean'] - b['cosine_mean']:+.3f} "
                "mean cos for pruning)."
            )
    for pair in (r for r in rows if r.get("pair_weight") and not r.get("scratch")):
        plain = next((r for r in rows if not r.get("scratch") and not r.get("pair_weight")
                      and not r.get("vocab") and r["target"] == pair["target"]
                      and r["steps"] == pair["steps"]), None)  # fmt: skip
        if plain is not None:
            a, b = pair["after"], plain["after"]
            lines.append(
                f"- Pairwise term at {pair['target']}x ({pair['shape']}, {pair['steps']} steps each): with "
                f"weight {pair['pair_weight']:g}, mean cos {a['cosine_mean']:.3f} / Spearman "
                f"{a['spearman']:.3f}; without, {b['cosine_mean']:.3f} / {b['spearman']:.3f} "
                f"({a['cosine_mean'] - b['cosine_mean']:+.3f} / {a['spearman'] - b['spearman']:+.3f})."
            )
    goals = {1.5: 0.95, 2.0: 0.90}
    for r in rows:
        if r["target"] not in goals or r.get("scratch"):
            continue
        g, a = goals[r["target"]], r["after"]
        miss = [f"{n} {a[f]:.3f} vs {g} ({a[f] - g:+.3f})" for n, f in (("mean cos", "cosine_mean"),
                ("Spearman", "spearman")) if a[f] < g]  # fmt: skip
        if r["target"] >= 2 and r["params_ratio"] > PARAMS_CAP:
            miss.append(f"params {r['params_ratio']:.2f} vs {PARAMS_CAP}")
        if r["speedup"] < r["target"]:
            miss.append(f"measured speedup {r['speedup']:.2f}x vs {r['target']}x")
        state = "met" if not miss else "missed: " + "; ".join(miss)
        short = [(n, k) for n, f, k in (("cos", "cosine_mean", "held_cos"), ("Spearman", "spearman",
                 "held_spearman")) if a[f] < g]  # fmt: skip
        for label, key in short if len(r["curve"]) == len(CURVE) else ():
            need = steps_to(r["curve"], g, key)
            if need is None or need > 100 * r["steps"]:
                state += f"; the held-out {label} curve does not reach {g} within 100x the steps"
                continue
            per = r["distill_s"] / r["steps"]
            state += (f"; the curve's power law (last three points) reaches held-out {label} {g} at about "
                      f"{need:,.0f} steps ({need * 16:,.0f} sentences, ~{need * per / 3600:.1f} h at this "
                      "run's pace), an extrapolation and a lower bound for the evaluation sentences, "
                      "which trail the held-out ones")  # fmt: skip
        lines.append(f"- Goal at {r['target']}x, {r['steps']} steps{_pair_text(r)} (≥ {g} mean cos and "
                     "Spearman" + (", params ≤ 0.6" if r["target"] >= 2 else "")
                     + f", measured speedup ≥ {r['target']}x): {state}.")  # fmt: skip
    for t in sorted({r["target"] for r in rows}):
        runs = [r for r in rows if r["target"] == t and not r.get("scratch") and not r.get("pair_weight")
                and not r.get("vocab")]  # fmt: skip
        if len(runs) < 2 or t not in goals:
            continue
        a, b = runs[0], runs[-1]
        pts = [(r["steps"], 1 - r["after"]["cosine_mean"]) for r in (a, b)]
        slope = float(np.log(pts[1][1] / pts[0][1]) / np.log(pts[1][0] / pts[0][0]))
        text = (f"- {t}x on the evaluation sentences: mean cos {a['after']['cosine_mean']:.3f} after "
                f"{a['steps']} steps, {b['after']['cosine_mean']:.3f} after {b['steps']}")  # fmt: skip
        if b["after"]["cosine_mean"] >= goals[t]:
            text += f" (the {goals[t]} goal met)"
        elif slope < 0:
            need = pts[1][0] * ((1 - goals[t]) / pts[1][1]) ** (1 / slope)
            text += (
                f"; a power law through these two reaches {goals[t]} at about {need:,.0f} steps "
                f"({need * 16:,.0f} sentences, {need * 16 / env['corpus']:.0f}x the corpus)"
            )
        lines.append(text + ".")
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
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="distillation steps per model (default 300: about 23 min at 1.5x, 10 min at 2x and 3x "
        "measured on the shared 2-core machine)",
    )
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--pair-weight",
        type=float,
        default=0.0,
        help="weight of distill_layerwise's pairwise-similarity term (default 0: off); its rows sit beside "
        "the others as TARGET/STEPS/pairW",
    )
    parser.add_argument(
        "--vocab",
        action="store_true",
        help="cut each distilled row's vocabulary to the corpus's tokens and WordNet's words "
        "(prunekit.prune_vocab; the params cap counts it); its rows sit beside the others as .../vocab",
    )
    parser.add_argument("--runs", type=int, default=10, help="latency runs per round")
    parser.add_argument("--search-runs", type=int, default=5, help="latency runs per round in the search")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (min is kept)")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--targets", default=TARGETS, type=lambda t: tuple(float(v) for v in t.split(",")),
                        help="speedup targets, comma-separated (default 1.5,2,3)")  # fmt: skip
    parser.add_argument("--criterion", default="wanda", help="heads/FFN criterion (default wanda)")
    parser.add_argument("--stream", default="output", help="stream importance (default output)")
    parser.add_argument(
        "--corpus",
        default=("packages",),
        type=lambda t: tuple(t.split(",")),
        help="comma-separated corpus sources (packages, wordnet, fortunes; default packages)",
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also distil each target's shape from random init with the same steps (the scratch peer)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore the cached rows")
    parser.add_argument("--report", action="store_true", help="write the section from the cached rows only")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 3 if args.quick else 300
    if args.quick:
        args.runs, args.rounds = 3, 1
    if args.report:
        cache = json.loads(CACHE.read_text())[mode_of(args)]
    else:
        cache = run(args)
    data = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    packages = data.get("quick" if args.quick else "full")
    finish("minilm-compress", markdown(cache, data.get(PREVIOUS), packages), args, write=not args.quick)


if __name__ == "__main__":
    main()
