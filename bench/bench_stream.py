"""The residual stream of LayerNorm/RMSNorm models: params kept at ratio 0.5 with the stream pinned (the
default, exact) and cut approximately (``stream=True``), and the output error of that cut with channels
ranked by activations on calibration data against a random ranking. Random weights, random inputs (the
calibration batches are drawn like the example input; every weight randomised by
``prunekit.structured.randomize``). Writes section ``stream`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_stream.py [--no-write] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from _common import common_args, finish, machine_line, markdown_table

import prunekit as pk
from prunekit.structured.randomize import randomize


def _vision(build: Callable[[], torch.nn.Module], px: int) -> tuple:
    gen = torch.Generator().manual_seed(0)
    batch = [torch.randn(4, 3, px, px, generator=gen) for _ in range(3)]
    return build(), batch[0], batch[1:]


def _text(build: Callable[[], torch.nn.Module], vocab: int, seq: int = 16) -> tuple:
    gen = torch.Generator().manual_seed(0)
    batch = [torch.randint(0, vocab, (4, seq), generator=gen) for _ in range(3)]
    return build(), batch[0], batch[1:]


def _vit() -> tuple:
    from torchvision.models import vit_b_16

    return _vision(lambda: vit_b_16(image_size=64), 64)


def _tv(name: str) -> Callable[[], tuple]:
    def make() -> tuple:
        import torchvision.models as tvm

        return _vision(getattr(tvm, name), 64)

    return make


def _deit() -> tuple:
    import timm

    return _vision(lambda: timm.create_model("deit_small_patch16_224", img_size=64, pretrained=False), 64)


def _bert() -> tuple:
    from transformers import BertConfig, BertForSequenceClassification

    return _text(lambda: BertForSequenceClassification(BertConfig()), 30522)


def _llama() -> tuple:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=1000,
        use_cache=False,
    )
    return _text(lambda: LlamaForCausalLM(cfg), 1000)


MODELS: dict[str, Callable[[], tuple]] = {
    "torchvision vit_b_16 (64 px)": _vit,
    "torchvision swin_t (64 px)": _tv("swin_t"),
    "torchvision convnext_tiny (64 px)": _tv("convnext_tiny"),
    "timm deit_small_patch16_224 (64 px)": _deit,
    "BERT-base config (seq 16)": _bert,
    "Llama-style tiny (h 128, seq 16)": _llama,
}


def one(name: str) -> dict:
    torch.manual_seed(0)
    model, x, calib = MODELS[name]()
    randomize(model).eval()  # no zero-initialised head or layer scale: every output moves
    row: dict = {"model": name}
    t0 = time.perf_counter()
    pinned = pk.prune(copy.deepcopy(model), x, ratio=0.5)
    row["params"] = pinned.params_before
    row["kept_pinned"] = pinned.params_ratio
    for how in ("activation", "random"):
        res = pk.prune(copy.deepcopy(model), x, ratio=0.5, stream=how, data=calib)
        row[f"kept_{how}"] = res.params_ratio
        row[f"err_{how}"] = res.approx_error
    row["seconds"] = time.perf_counter() - t0
    print(row, flush=True)
    return row


def _err(value: float | None) -> str:
    """The measured error, or "exact" when no stream was cut (the plan is exact)."""
    return "exact" if value is None else f"{value:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, parents=[common_args(threads=2)])
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS), help="models to run (default all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [one(name) for name in (args.only or MODELS)]
    table = markdown_table(
        ["model", "params", "kept, stream pinned", "kept, stream cut", "rel. error (activation)",
         "rel. error (random)", "s"],
        [
            [r["model"], f"{r['params'] / 1e6:.1f} M", f"{r['kept_pinned']:.3f}",
             f"{r['kept_activation']:.3f}", _err(r["err_activation"]), _err(r["err_random"]),
             f"{r['seconds']:.0f}"]
            for r in rows
        ],
        align="lrrrrrr",
    )
    text = "\n".join(
        [
            " ".join(
                [
                    "Residual-stream cuts (`prune(..., ratio=0.5, stream=True, data=calib)`: local ratio 0.5",
                    "for every group, the stream included) against the default, where every norm pins its",
                    "stream. Random weights; 2 calibration batches of 4 random inputs; the error is",
                    "`max|y - y0| / max|y0|` of the pruned model against the unpruned one on the example",
                    "batch (`PruneResult.approx_error`), stream channels ranked by mean x² at every norm",
                    "input (activation) or at random (seeded). The error includes every group's cut (MLP,",
                    "heads) at ratio 0.5 on random weights, hence its size; \"exact\": no stream was cut.",
                    "`bench/bench_stream.py`.",
                ]
            ),
            "",
            *table,
            "",
            machine_line(args.threads),
        ]
    )
    finish("stream", text, args, write=not args.only)


if __name__ == "__main__":
    main()
