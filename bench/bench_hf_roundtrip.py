"""Stock round trip of pruned transformers: prune heads + FFN (ratio 0.5) and one layer, write with
``prunekit.save_pretrained`` (``save_sentence_transformer`` for the real all-MiniLM-L6-v2), load the directory
in a fresh process that never imports prunekit (``AutoModel`` / ``AutoModelForCausalLM`` /
``SentenceTransformer``) and compare its output with the pruned model's; causal LMs also compare 4 greedy
tokens of ``generate()``. Where the config cannot state the pruned heads the refusal is the row, and a second
row prunes FFN neurons and layers only. Writes section ``hf-roundtrip`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_hf_roundtrip.py [--no-write] [--only bert llama ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import check_each, common_args, finish, machine_line, markdown_table
from bench_hf import CASES, inputs

import prunekit.structured as ps
from prunekit.deploy.pretrained import save_pretrained, save_sentence_transformer, stock_outputs
from prunekit.errors import ExportError
from prunekit.models.hf import load_hf
from prunekit.structured.layers import prune_layers
from prunekit.structured.randomize import randomize

# model type -> (stock class that loads the directory, the config field holding the layer count)
MODELS = {
    "bert": ("AutoModel", "num_hidden_layers"),
    "roberta": ("AutoModel", "num_hidden_layers"),
    "distilbert": ("AutoModel", "n_layers"),
    "vit": ("AutoModel", "num_hidden_layers"),
    "llama": ("AutoModelForCausalLM", "num_hidden_layers"),
    "qwen2": ("AutoModelForCausalLM", "num_hidden_layers"),
    "mistral": ("AutoModelForCausalLM", "num_hidden_layers"),
    "gpt2": ("AutoModelForCausalLM", "n_layer"),
}
MINILM = "all-MiniLM-L6-v2"
FIELDS = ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "num_hidden_layers")
SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"


def _heads_owners(model: torch.nn.Module) -> list[str]:
    """The outermost attention modules (ignored to keep their heads in the FFN-only variant)."""
    names = [n for n, m in model.named_modules() if type(m).__name__.endswith("Attention")]
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _random_weights(model: torch.nn.Module) -> torch.nn.Module:
    """:func:`randomize` for what a checkpoint stores: non-persistent buffers (rotary ``inv_freq``), which
    ``from_pretrained`` recomputes, keep their values."""
    kept = {(m, n): b.clone() for m in model.modules() for n, b in m._buffers.items()
            if b is not None and n in m._non_persistent_buffers_set}  # fmt: skip
    randomize(model)
    with torch.no_grad():
        for (m, n), b in kept.items():
            m._buffers[n].copy_(b)
    return model


def _prune(model: torch.nn.Module, x: dict, heads: bool, ignore: list[str]) -> None:
    keep = ignore + ([] if heads else _heads_owners(model))
    ps.prune(model, x, 0.5, ignore=keep or None, measure=False)
    prune_layers(model, x, n=1)


def _row(name: str, variant: str, t0: float, **fields: object) -> dict:
    return {"name": name, "variant": variant, "seconds": time.perf_counter() - t0, **fields}


def _hf_case(model_type: str, heads: bool) -> dict:
    auto, layers_field = MODELS[model_type]
    t0 = time.perf_counter()
    cfg = {"model_type": model_type, **CASES[model_type][1], layers_field: 3}
    model = _random_weights(load_hf(json.dumps(cfg)))
    x = inputs(model_type)
    variant = "heads + FFN + 1 layer" if heads else "FFN + 1 layer (heads kept)"
    _prune(model, x, heads, [])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = save_pretrained(model, Path(tmp) / "hf", example_inputs=x)
        except ExportError as err:
            return _row(model_type, variant, t0, status="refused", why=str(err).split(": ", 1)[1])
        gen = 4 if auto == "AutoModelForCausalLM" else 0
        out = stock_outputs(Path(tmp) / "hf", x, auto_class=auto, generate=gen)
    with torch.no_grad():
        ref = model(**x)[0]
    diff = float((out["output"] - ref).abs().max())
    clean = int(out["prunekit_imported"]) == 0
    row = _row(model_type, variant, t0, status="stock-loaded", config=saved.config, diff=diff, clean=clean)
    if gen:
        here = model.generate(x["input_ids"][:1], max_new_tokens=gen, do_sample=False)
        row["generate"] = bool(torch.equal(out["generated"], here))
    return row


def _minilm_case(heads: bool) -> dict:
    from prunekit.models.sentence import load_minilm

    t0 = time.perf_counter()
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()][:16]
    emb = load_minilm()
    x = emb.tokenize(sents[:4])
    variant = "heads + FFN + 1 layer" if heads else "FFN + 1 layer (heads kept)"
    _prune(emb, x, heads, ["encoder.pooler"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = save_sentence_transformer(emb, Path(tmp) / "st", sentences=sents)
        except ExportError as err:
            return _row(MINILM, variant, t0, status="refused", why=str(err).split(": ", 1)[1])
        out = stock_outputs(Path(tmp) / "st", sents)
    diff = float((out["output"] - emb.embed(sents)).abs().max())
    return _row(MINILM, variant, t0, status="stock-loaded", config=saved.config, diff=diff,
                clean=int(out["prunekit_imported"]) == 0)  # fmt: skip


def one(name: str) -> list[dict]:
    case = _minilm_case if name == MINILM else lambda heads: _hf_case(name, heads)
    rows = [case(True)]
    if rows[0]["status"] == "refused":
        rows.append(case(False))
    return rows


def markdown(rows: list[dict], machine: str) -> str:
    loaded = [r for r in rows if r["status"] == "stock-loaded"]
    lines = [
        "## Stock round trip of pruned transformers (save_pretrained / sentence-transformers)",
        "",
        f"`bench/bench_hf_roundtrip.py`. {machine} Tiny configs (3 layers, width 32, 4 heads, weights "
        f"randomised) and the real {MINILM}: heads and FFN neurons pruned at ratio 0.5 (L2, local), then one "
        "layer removed (`prune_layers`), written with `prunekit.save_pretrained` "
        "(`save_sentence_transformer` for MiniLM) and loaded in a fresh process that never imports prunekit "
        "(`AutoModel` / `AutoModelForCausalLM.from_pretrained`, `SentenceTransformer(dir).encode`). "
        "*max abs diff*: that output (last hidden state, logits, embeddings) against the pruned model's; "
        "*generate*: 4 greedy tokens equal. Classes that size a head as `hidden_size / num_attention_heads` "
        "(no `head_dim` field; transformers 5 has no `pruned_heads`) cannot state pruned heads: that refusal "
        f"is the row, and the next row keeps the heads. **{len(loaded)}/{len(rows)} rows load stock.**",
        "",
    ]
    header = ["model", "pruned", "status", "written config (heads / kv / head_dim / FFN / layers)",
              "max abs diff", "generate", "why refused"]  # fmt: skip
    cells = []
    for r in rows:
        c = r.get("config", {})
        fields = "/".join(str(c.get(k, "—")) for k in FIELDS)
        diff = f"{r['diff']:.1e}" if "diff" in r else "—"
        gen = {True: "equal", False: "DIFFERS"}.get(r.get("generate"), "—")
        status = r["status"] if r.get("clean", True) else "loaded, but prunekit was imported"
        cells.append([r["name"], r["variant"], status, fields if c else "—", diff, gen, r.get("why", "—")])
    return "\n".join(lines + markdown_table(header, cells, align="llllrll"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    names = args.only or [*MODELS, MINILM]
    rows = [r for group in check_each(names, lambda n: {"rows": one(n), "name": n, "status": "done"})
            for r in group["rows"]]  # fmt: skip
    machine = machine_line(torch.get_num_threads(), transformers=transformers.__version__)
    finish("hf-roundtrip", markdown(rows, machine), args, write=not args.only)


if __name__ == "__main__":
    main()
