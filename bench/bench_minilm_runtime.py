"""all-MiniLM-L6-v2's compressed shapes on the deployment runtimes, and dynamic INT8 on top of them.

Section ``minilm-compress`` measures its speedups in eager PyTorch. Here the shapes it picked (the picks in
``bench/results/minilm_compress.json``, run :data:`PICKS_FROM`) are timed again in onnxruntime and OpenVINO
(fp32), and in onnxruntime as a dynamic-INT8 model (``prunekit.quantize_onnx``), each next to the dense model
on the same runtime: the 8-sentence batch of the evaluation set, 1 thread, :data:`ROUNDS` rounds alternating
the two models, each round the median of :data:`RUNS` runs, the best round kept. The weights are the dense
model's cut to the shape (``bench_minilm_compress.build``) and not distilled: latency does not depend on
them. INT8's cost is measured as fidelity (mean / min cosine, Spearman of pairwise similarities) of each
INT8 model to its own fp32 embeddings on the 124 evaluation sentences: for the dense model, what quantizing
instead of pruning costs; for a cut, what quantizing it too costs (on undistilled weights, so a guide only).
Records to ``bench/results/minilm_runtime.json``, section ``minilm-runtime`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_minilm_runtime.py [--quick] [--no-write]   # apt-get install wordnet-base
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import common_args, finish, machine_line, markdown_table
from bench_minilm_compress import CACHE, _calib, _latency, build, params

from prunekit._atomic import write_text
from prunekit.deploy.runtimes import arrays, compare, get_runtime, time_session
from prunekit.models.corpus import package_corpus
from prunekit.models.sentence import fidelity, load_minilm

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"
JSON = HERE / "results" / "minilm_runtime.json"
PICKS_FROM = "full+wordnet+fortunes"  #: the minilm_compress run whose picked shapes are timed
ROUNDS, RUNS = 5, 30  #: alternated rounds per pair, timed runs per round
#: the timed forms: name -> (runtime, INT8 mode); every form races the dense model in its fp32 form of the
#: same runtime (INT8 the dense fp32 onnxruntime model: what cutting and quantizing buy together)
FORMS = {"PyTorch": (None, None), "onnxruntime": ("onnxruntime", None), "OpenVINO": ("openvino", None),
         "onnxruntime INT8": ("onnxruntime", "dynamic")}  # fmt: skip
QUICK_FORMS = ("PyTorch", "onnxruntime INT8")


def picked_shapes(quick: bool) -> dict[str, list[str]]:
    """``"heads,ffn,layers"`` of each pick of :data:`PICKS_FROM` -> the targets that picked it (``quick``: the
    2x pick alone)."""
    picks = json.loads(CACHE.read_text())[PICKS_FROM]["picks"]
    shapes: dict[str, list[str]] = {}
    for target, p in sorted(picks.items()):
        if not quick or target == "2.0":
            shapes.setdefault(f"{p['heads']},{p['ffn']},{p['layers']}", []).append(target)
    return shapes


@dataclass
class Form:
    """One model in one form: the module (eager PyTorch) or its loaded runtime session, and its agreement
    with PyTorch on the timing batch."""

    model: torch.nn.Module
    session: object | None
    agree: dict | None

    def ms(self, x: dict) -> float:
        if self.session is None:
            return _latency(self.model, x, RUNS, 1)
        return time_session(self.session, arrays(x), warmup=3, runs=RUNS, threads=1).median_ms


def load_form(form: str, model: torch.nn.Module, x: dict, folder: Path, name: str) -> Form:
    runtime, int8 = FORMS[form]
    if runtime is None:
        return Form(model, None, None)
    rt = get_runtime(runtime)
    artifact = rt.export(model, x, folder / f"{name}-{runtime}-{int8 or 'fp32'}{rt.suffix}", int8=int8)
    session = rt.load(artifact, threads=1)
    with torch.no_grad():
        want = [model(**x)]
    agree = compare(want, session.run(arrays(x)), int8=int8 is not None, tolerance=rt.tolerance)
    return Form(model, session, agree.to_dict())


def race(dense: Form, model: Form, x: dict) -> dict:
    """Best-round ms of both, the order flipped every round, and the speedup of ``model`` over ``dense``."""
    best = {"dense": float("inf"), "model": float("inf")}
    for r in range(ROUNDS):
        order = [("dense", dense), ("model", model)]
        for who, form in order if r % 2 == 0 else order[::-1]:
            best[who] = min(best[who], form.ms(x))
    return {"ms": best["model"], "dense_ms": best["dense"], "speedup": best["dense"] / best["model"],
            "agree": model.agree}  # fmt: skip


def int8_fidelity(model: torch.nn.Module, sents: list[str], folder: Path, name: str) -> dict:
    """Fidelity of ``model``'s dynamic-INT8 onnxruntime copy to its own fp32 embeddings on ``sents`` (padded
    to the longest of them; the mean pooling's mask leaves the padding out)."""
    enc = dict(model.tokenizer(sents, padding="longest", return_tensors="pt"))
    rt = get_runtime("onnxruntime")
    example = {k: v[:8] for k, v in enc.items()}
    artifact = rt.export(model, example, folder / f"{name}-fidelity.int8{rt.suffix}", int8="dynamic")
    session = rt.load(artifact, threads=1)
    out = [session.run(arrays({k: v[i : i + 8] for k, v in enc.items()}))[0] for i in range(0, len(sents), 8)]
    return fidelity(model.embed(sents), torch.from_numpy(np.concatenate(out))).to_dict()


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
    dense = load_minilm()
    x = dense.tokenize(sents[:8])
    calib = _calib(dense, package_corpus(64, sources=("wordnet",), exclude=sents))
    args = argparse.Namespace(criterion="wanda", stream="output")
    forms = QUICK_FORMS if quick else tuple(FORMS)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-minilm-rt-") as tmp:
        folder = Path(tmp)
        base = {f: load_form(f, dense, x, folder, "dense") for f in forms if FORMS[f][1] is None}
        base["onnxruntime"] = base.get("onnxruntime") or load_form("onnxruntime", dense, x, folder, "dense")
        versus = {f: base["onnxruntime" if FORMS[f][1] else f] for f in forms}
        rows["dense"] = {
            "params_ratio": 1.0,
            "targets": [],
            "int8_fidelity": int8_fidelity(dense, sents, folder, "dense"),
            "onnxruntime INT8": race(
                base["onnxruntime"], load_form("onnxruntime INT8", dense, x, folder, "dense"), x
            ),
        }
        for name, targets in picked_shapes(quick).items():
            heads, ffn, layers = (int(v) for v in name.split(","))
            student = build(dense, x, calib, heads, ffn, layers, args)[0].eval()
            rows[name] = {"targets": targets, "params_ratio": params(student) / params(dense),
                          "int8_fidelity": int8_fidelity(student, sents, folder, name)}  # fmt: skip
            for form in forms:
                rows[name][form] = race(versus[form], load_form(form, student, x, folder, name), x)
                print(f"{name} {form}: {rows[name][form]['speedup']:.2f}x", flush=True)
    env = {
        "machine": machine_line(1),
        "seq": int(x["input_ids"].shape[1]),
        "picks_from": PICKS_FROM,
        "versions": {r: get_runtime(r).version() for r in ("onnxruntime", "openvino")},
    }
    return {"quick": quick, "rows": rows, "env": env}  # fmt: skip


def _cell(r: dict | None) -> str:
    return "—" if r is None else f"{r['speedup']:.2f}x ({r['ms']:.1f} ms)"


def _distilled(rows: dict, target: str) -> tuple[str, dict] | None:
    """The minilm-compress row (of ``rows``) distilled longest, with no pairwise term and not the scratch
    peer, for ``target``, a key of its picks (``2.0``, or ``2.0/vocab`` for the rows with the vocabulary
    cut)."""
    base, _, tag = target.partition("/")
    found = [(int(k.split("/")[1]), k) for k in rows
             if k.split("/")[0] == base and k.split("/")[2:] == ([tag] if tag else [])]  # fmt: skip
    return (max(found)[1], rows[max(found)[1]]) if found else None


def _dense_cell(rows: dict, form: str) -> str:
    ms = [r[form]["dense_ms"] for r in rows.values() if form in r and "dense_ms" in r[form]]
    return f"1.00x ({min(ms):.1f} ms)" if ms else "1.00x"


def _target(key: str) -> str:
    base, _, tag = key.partition("/")
    return f"{base}x" + (" (with the vocabulary cut)" if tag == "vocab" else "")


def markdown(rec: dict) -> str:
    env, rows = rec["env"], rec["rows"]
    forms = [f for f in FORMS if any(f in r for r in rows.values())]
    header = [
        "shape (heads, FFN, layers)",
        "targets",
        "params",
        *forms,
        "INT8 vs own fp32: mean / min cos, Spearman",
    ]
    table = []
    for name, r in rows.items():
        f = r["int8_fidelity"]
        cells = [_cell(r.get(form)) if name != "dense" or FORMS[form][1] else _dense_cell(rows, form)
                 for form in forms]  # fmt: skip
        targets = ", ".join(_target(t) for t in r["targets"]) or "—"
        table.append([name, targets, f"{r['params_ratio']:.3f}", *cells,
                      f"{f['cosine_mean']:.4f} / {f['cosine_min']:.4f}, {f['spearman']:.4f}"])  # fmt: skip
    lines = [
        "## all-MiniLM-L6-v2's compressed shapes on onnxruntime and OpenVINO, and dynamic INT8",
        "",
        f"{env['machine']} {', '.join(dict.fromkeys(', '.join(env['versions'].values()).split(', ')))}. "
        "`bench/bench_minilm_runtime.py`" + (" --quick" if rec["quick"] else "") + ". The shapes "
        f"`bench_minilm_compress.py` picked for its targets (run `{env['picks_from']}`), cut from the dense "
        "model and not distilled (latency does not depend on the weights). Each cell: speedup over the dense "
        "model in the same runtime's fp32 form (ms of the shape), 8 evaluation sentences padded to "
        f"{env['seq']} tokens, 1 thread, best of {ROUNDS} rounds of {RUNS} runs alternating the two models; "
        "*onnxruntime INT8*: `quantize_onnx(mode='dynamic')` of the shape against the dense fp32 "
        "onnxruntime model (what cutting and quantizing buy together; the dense row: quantizing alone). "
        "*INT8 vs own fp32*: the INT8 model's embeddings of the 124 evaluation sentences against its fp32 "
        "ones (for a cut: undistilled weights, a guide only). A pick with the vocabulary cut is timed "
        "without it (the cut saves no time: section minilm-vocab).",
        "",
        *markdown_table(header, table),
        "",
    ]
    fp32 = [f for f in forms if FORMS[f][0] and not FORMS[f][1]]
    bad = [
        f"{n} {form}" for n, r in rows.items() for form in fp32 if form in r and not r[form]["agree"]["ok"]
    ]
    ok = "- Every fp32 runtime model matched PyTorch within its tolerance on the timing batch."
    lines.append(ok if not bad else f"- Outside the runtime's fp32 tolerance of PyTorch: {', '.join(bad)}.")
    dense = rows["dense"]
    q = dense["onnxruntime INT8"]
    lines.append(f"- Quantizing alone: the dense INT8 model runs {q['speedup']:.2f}x the dense fp32 one in "
                 f"onnxruntime at mean cos {dense['int8_fidelity']['cosine_mean']:.4f}, Spearman "
                 f"{dense['int8_fidelity']['spearman']:.4f} to it.")  # fmt: skip
    distilled = json.loads(CACHE.read_text())[PICKS_FROM]["rows"]
    for name, r in rows.items():
        speeds = ", ".join(f"{form} {r[form]['speedup']:.2f}x" for form in forms if form in r)
        for target in r["targets"]:
            found = _distilled(distilled, target)
            if found is not None:
                key, d = found
                lines.append(f"- {name}, the {_target(target)} pick: {speeds}; distilled (row `{key}` of "
                             f"minilm-compress) it keeps mean cos {d['after']['cosine_mean']:.3f}, Spearman "
                             f"{d['after']['spearman']:.3f} to the dense model.")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    quick = "the 2x pick alone, PyTorch and onnxruntime INT8"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(1, quick)])
    ap.add_argument("--json", default=str(JSON), help="records file")
    args = ap.parse_args()
    rec = run(args.quick)
    if not args.quick:
        write_text(Path(args.json), json.dumps(rec, indent=1, sort_keys=True) + "\n")
    finish("minilm-runtime", markdown(rec), args, write=not args.quick)


if __name__ == "__main__":
    main()
