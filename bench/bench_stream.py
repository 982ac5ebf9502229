"""Coverage of the residual-stream cut: params kept at ratio 0.5 and the relative output error, per model
and method, against Torch-Pruning's ViT hidden-dim pruning in the same run.

Methods (each on a fresh copy of the same randomly initialised model, every weight randomised by
``prunekit.structured.randomize`` so no zero-initialised head or layer scale hides an error):

- ``pinned``: ``prune(model, x, ratio=0.5)``, the default: every norm pins its stream (exact plan);
- ``direct``: ``stream="direct"`` (``stream=True``), the approximate cut: stream channels ranked by mean x² at
  every norm input over the calibration batches, each norm's statistics over the kept channels;
- ``slicegpt``: ``stream="slicegpt"``, SliceGPT's invariant transform (norms folded, stream rotated by the
  PCA of the calibration activations) then the same cut, where the transform follows the model;
- ``torch-pruning``: Torch-Pruning's ``BasePruner`` as its ViT example runs it (L2 group magnitude, uniform
  ratio 0.5, every LayerNorm/Linear channel of the stream grouped, heads kept with a narrower head dim,
  classifier ignored), on the two ViTs.

The error is ``max|y - y0| / max|y0|`` of the pruned model against the unpruned one on one fixed random
input (batch 1) at the main output (HF logits; YOLO's decoded boxes and scores); the calibration data
are 2 other batches of 2 random inputs. Writes ``bench/results/stream_coverage.json`` (one record per
model x method) and section ``stream`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_stream.py [--tp-path DIR] [--no-write] [--only NAME ...] [--from-json]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import common_args, finish, machine_line, markdown_table

import prunekit as pk
from prunekit._atomic import write_text
from prunekit.errors import PruneError
from prunekit.structured.randomize import randomize

JSON_OUT = Path(__file__).parent / "results" / "stream_coverage.json"


@dataclass
class Case:
    """One model of the zoo: a builder, its fixed input, its calibration batches and the peers that run."""

    build: Callable[[], torch.nn.Module]
    inputs: Callable[..., Any]  # (batch size, seed) -> a seeded random input
    tp: Callable[[torch.nn.Module, Any], None] | None = None  # Torch-Pruning's cut, in place
    notes: dict[str, str] = field(default_factory=dict)


def _images(px: int) -> Callable[[int], torch.Tensor]:
    def make(batch: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(seed))

    return make


def _tokens(vocab: int, seq: int = 16) -> Callable[[int], dict[str, torch.Tensor]]:
    def make(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return make


def _tp_pruner(model: torch.nn.Module, x: torch.Tensor, num_heads: dict, ignored: list, **kw: Any) -> None:
    import torch_pruning as tp

    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=ignored,
        num_heads=num_heads,
        round_to=1,
        **kw,
    )
    for group in pruner.step(interactive=True):
        group.prune()


def _tp_timm_vit(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Torch-Pruning's ``examples/transformers/prune_timm_vit.py``: the attention's output reshape made
    width-free (``reshape(B, N, -1)``), heads declared, head dims pruned, then ``num_heads``/``head_dim``
    set from the pruned qkv."""
    import torch.nn.functional as F
    from timm.models.vision_transformer import Attention

    def forward(self: Attention, x: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:  # masks unused
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(b, n, -1))))

    heads = {}
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = forward.__get__(m, Attention)
            heads[m.qkv] = m.num_heads
    _tp_pruner(model, x, heads, [model.head], prune_head_dims=True, prune_num_heads=False)
    for m in model.modules():
        if isinstance(m, Attention):
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)


def _tp_torchvision_vit(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Torch-Pruning on torchvision's ViT as its readme runs it: ``nn.MultiheadAttention`` declared by its
    heads, the class token and position embedding as unwrapped parameters pruned along the stream
    (dim 2), the classifier ignored; ``hidden_dim`` set from the pruned stream afterwards."""
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    unwrapped = [(model.class_token, 2), (model.encoder.pos_embedding, 2)]
    _tp_pruner(model, x, heads, [model.heads], unwrapped_parameters=unwrapped)
    model.hidden_dim = model.class_token.shape[-1]


def _vit() -> torch.nn.Module:
    from torchvision.models import vit_b_16

    return vit_b_16(image_size=64)


def _tv(name: str) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, name)()

    return make


def _deit() -> torch.nn.Module:
    import timm

    return timm.create_model("deit_small_patch16_224", img_size=64, pretrained=False)


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig())  # the bert-base-uncased sizes


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config())  # the gpt2 (124 M) sizes, lm_head tied to the token embedding


LLAMA = {  # TinyLlama-1.1B's proportions at a quarter of its width: h 512, FFN 2.75 h, 8:1 GQA, 32 k vocab
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "vocab_size": 32000,
}


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**LLAMA, use_cache=False))


def _yolo() -> torch.nn.Module:
    from prunekit.models.ultralytics import load_yolo

    return load_yolo("yolo11n.yaml")


MODELS: dict[str, Case] = {
    "torchvision vit_b_16 (64 px)": Case(_vit, _images(64), _tp_torchvision_vit),
    "torchvision swin_t (64 px)": Case(_tv("swin_t"), _images(64)),
    "torchvision swin_v2_t (64 px)": Case(_tv("swin_v2_t"), _images(64)),
    "torchvision maxvit_t (224 px)": Case(_tv("maxvit_t"), _images(224)),
    "torchvision convnext_tiny (64 px)": Case(_tv("convnext_tiny"), _images(64)),
    "timm deit_small_patch16_224 (64 px)": Case(_deit, _images(64), _tp_timm_vit),
    "BERT-base config (seq 16)": Case(_bert, _tokens(30522)),
    "GPT-2 config (seq 16)": Case(_gpt2, _tokens(50257)),
    "Llama-style (h 512, 4 layers, GQA 8:1, seq 16)": Case(_llama, _tokens(32000)),
    "ultralytics yolo11n (128 px)": Case(_yolo, _images(128)),
}


@torch.no_grad()
def _primary(model: torch.nn.Module, x: Any) -> torch.Tensor:
    """The model's main output on ``x``: HF logits, else the first tensor (YOLO's decoded boxes + scores;
    its intermediate feature maps narrow with the cut and are not compared)."""
    out = model(**x) if isinstance(x, dict) else model(x)
    out = getattr(out, "logits", out)
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out.float()


def _rel_error(y: torch.Tensor, y0: torch.Tensor) -> float:
    """``max|y - y0| / max|y0|`` (inf when the shapes differ)."""
    if y.shape != y0.shape:
        return float("inf")
    return float((y - y0).abs().max() / y0.abs().max().clamp(min=1e-30))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_line(err: BaseException) -> str:
    return (f"{type(err).__name__}: {err}".strip().splitlines() or [type(err).__name__])[0]


def _prunekit(model: torch.nn.Module, x: Any, calib: list, method: str) -> dict:
    stream = {"pinned": False, "direct": True}.get(method, method)
    cfg = pk.PruneConfig(ratio=0.5, stream=stream, data=None if method == "pinned" else calib, measure=False)
    if isinstance(model, _yolo_class()):  # head outputs keep their shapes; widths free (not yaml-bound)
        from prunekit.models.ultralytics import prune_yolo

        res = prune_yolo(model, cfg, imgsz=x.shape[-1], trainable=False)
    else:
        res = pk.prune(model, x, cfg)
    return {"approximate": bool(res.plan.approximate), "approx_error": res.approx_error}


def _yolo_class() -> type:
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return type(None)
    return DetectionModel


def _stream_width(model: torch.nn.Module) -> int | None:
    """The width of the first LayerNorm/RMSNorm-like module's weight (the stream, where there is one)."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if "Norm" in type(m).__name__ and "Batch" not in type(m).__name__ and w is not None and w.dim() == 1:
            return int(w.shape[0])
    return None


def run_case(name: str, tp_ok: bool) -> list[dict]:
    """Every method's record for model ``name``."""
    case = MODELS[name]
    torch.manual_seed(0)
    base = randomize(case.build()).eval()
    x = case.inputs(1)
    calib = [case.inputs(2, seed) for seed in (1, 2)]
    ref = _primary(base, x)
    before = _params(base)
    width = _stream_width(base)
    methods = ["pinned", "direct", "slicegpt"] + (["torch-pruning"] if case.tp is not None else [])
    rows = []
    for method in methods:
        model = copy.deepcopy(base)
        row: dict[str, Any] = {"model": name, "method": method, "params_before": before}
        t0 = time.perf_counter()
        try:
            if method == "torch-pruning":
                if not tp_ok:
                    raise RuntimeError("torch_pruning is not importable (pass --tp-path)")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    case.tp(model, x)
                row.update(approximate=True, approx_error=None)
            else:
                row.update(_prunekit(model, x, calib, method))
            model.eval()
            row["status"] = "ok"
            row["params_after"] = _params(model)
            row["params_kept"] = row["params_after"] / before
            row["stream_before"], row["stream_after"] = width, _stream_width(model)
            row["rel_error"] = _rel_error(_primary(model, x), ref)
        except (PruneError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as err:
            row["status"] = "refused: " if isinstance(err, PruneError) else "crash: "
            row["status"] += _first_line(err)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(row, flush=True)
        rows.append(row)
        del model
    return rows


def _cell(rows: list[dict], model: str, method: str, key: str) -> str:
    row = next((r for r in rows if r["model"] == model and r["method"] == method), None)
    if row is None:
        return "—"
    if row["status"] != "ok":
        return "refused" if row["status"].startswith("refused") else "crash"
    value = row[key]
    return f"{value:.3f}" if key == "params_kept" else f"{value:.3g}"


def _width(rows: list[dict], model: str) -> str:
    got = {r["method"]: r["stream_after"] for r in rows if r["model"] == model and r["status"] == "ok"}
    before = next(r["stream_before"] for r in rows if r["model"] == model)
    if before is None:
        return "no norm stream"
    return f"{before} → {got.get('direct', '?')}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, parents=[common_args(threads=2)])
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS), help="models to run (default all)")
    ap.add_argument("--tp-path", default="", help="directory holding torch_pruning (pip --target)")
    ap.add_argument(
        "--from-json", action="store_true", help=f"rebuild the section from {JSON_OUT.name}, run nothing"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tp_ok = False
    if args.tp_path:
        sys.path.insert(0, args.tp_path)
    try:
        import torch_pruning  # noqa: F401  (importable: the peer runs)

        tp_ok = True
        tp_version = importlib.metadata.version("torch-pruning")
    except ImportError:
        tp_version = "absent"
    if args.from_json:
        rows = json.loads(JSON_OUT.read_text())
    else:
        rows = [r for name in (args.only or MODELS) for r in run_case(name, tp_ok)]
    total = sum(r["seconds"] for r in rows)
    names = list(dict.fromkeys(r["model"] for r in rows))
    table = markdown_table(
        ["model", "params", "stream (direct)", "kept: pinned", "direct", "slicegpt", "Torch-Pruning",
         "rel. error: pinned", "direct", "slicegpt", "Torch-Pruning"],
        [
            [m, f"{next(r['params_before'] for r in rows if r['model'] == m) / 1e6:.1f} M", _width(rows, m),
             *(_cell(rows, m, k, "params_kept") for k in ("pinned", "direct", "slicegpt", "torch-pruning")),
             *(_cell(rows, m, k, "rel_error") for k in ("pinned", "direct", "slicegpt", "torch-pruning"))]
            for m in names
        ],
        align="lllrrrrrrrr",
    )  # fmt: skip
    refusals = [f"- {r['model']}, {r['method']}: {r['status']}" for r in rows if r["status"] != "ok"]
    kept_whole = [
        f"- {r['model']}, {r['method']}: the stream stays {r['stream_before']} wide"
        + ("" if r["approximate"] else " (the plan is exact: no norm's stream was cut)")
        for r in rows
        if r["status"] == "ok"
        and r["method"] != "pinned"
        and r["stream_before"] is not None
        and r["stream_after"] == r["stream_before"]
    ]
    import transformers

    text = "\n".join(
        [
            "## Residual-stream coverage at ratio 0.5 (pinned vs direct vs SliceGPT vs Torch-Pruning)",
            "",
            " ".join(
                [
                    "`bench/bench_stream.py`, records in `bench/results/stream_coverage.json`. Random",
                    "weights (every tensor randomised), local ratio 0.5 for every group; *kept*: params",
                    "after / before. *pinned*: `prune(model, x, ratio=0.5)`, every norm pins its stream",
                    "(exact plan); *direct*: `stream=True` (`--stream direct`: channels ranked by mean x²",
                    "at every norm input, norm statistics over the kept channels); *slicegpt*:",
                    '`stream="slicegpt"` (norms folded, stream rotated by the PCA of the calibration',
                    "activations, weakest directions deleted; the same MLP/head cut); *Torch-Pruning*:",
                    "its `BasePruner` as its ViT example runs it (L2 group magnitude, ratio 0.5, the",
                    "stream's LayerNorm/Linear channels grouped, heads kept with a narrower head dim,",
                    "classifier ignored). *rel. error*: `max|y - y0| / max|y0|` against the unpruned",
                    "model on one fixed random input (batch 1) at the main output (HF logits, YOLO's",
                    "decoded boxes and scores); calibration: 2 other batches of 2 random inputs. Every",
                    "error includes the MLP/head cut at 0.5 on random weights (the *pinned* column is",
                    "that part alone), hence its size: compare columns, not absolute values. *stream*:",
                    "the first norm's width before → after the direct cut. Random activations have no",
                    "dominant directions, so SliceGPT's PCA has little to concentrate here: this run",
                    "measures coverage and equal-params cuts, not the gain on a trained model's stream.",
                ]
            ),
            "",
            *table,
            "",
            *(["Stream not cut:", "", *kept_whole, ""] if kept_whole else []),
            *(["Refused or crashed (one line each):", "", *refusals, ""] if refusals else []),
            f"{machine_line(args.threads, transformers=transformers.__version__, torch_pruning=tp_version)}"
            f" Shared 2-core machine; the cuts took {total:.0f} s in all (not a timing result).",
        ]
    )
    if not args.only and not args.from_json:
        JSON_OUT.parent.mkdir(exist_ok=True)
        write_text(JSON_OUT, json.dumps(rows, indent=1) + "\n")
        print(f"wrote {JSON_OUT}")
    finish("stream", text, args, write=not args.only)


if __name__ == "__main__":
    main()
