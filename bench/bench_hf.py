"""Hugging Face coverage: 30 transformers architectures (decoder LLMs, encoders, encoder-decoders, vision and
speech) built offline from tiny configs, weights randomised, each checked with the exactness oracle
(``prunekit.check`` at ratio 0.5). Writes section ``hf`` of docs/RESULTS.md: exactness, what was prunable,
and why the rest was pinned.

    .venv/bin/python bench/bench_hf.py [--no-write] [--only MODEL_TYPE ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import check_each, common_args, finish, machine_line, markdown_table

from prunekit.models.hf import load_hf
from prunekit.structured import check
from prunekit.structured.randomize import randomize

TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
TOK = {"vocab_size": 100, "pad_token_id": 0}
SEQ2SEQ = {"vocab_size": 100, "pad_token_id": 0, "decoder_start_token_id": 0}
# model_type -> (family, config beyond model_type)
CASES: dict[str, tuple[str, dict]] = {
    "llama": ("decoder", {**TEXT, **TOK, "num_key_value_heads": 2, "architectures": ["LlamaForCausalLM"]}),
    "mistral": ("decoder", {**TEXT, **TOK, "num_key_value_heads": 2,
                            "architectures": ["MistralForCausalLM"]}),
    "qwen2": ("decoder", {**TEXT, **TOK, "num_key_value_heads": 2, "architectures": ["Qwen2ForCausalLM"]}),
    "qwen3": ("decoder", {**TEXT, **TOK, "num_key_value_heads": 2, "head_dim": 8,
                          "architectures": ["Qwen3ForCausalLM"]}),
    "gemma": ("decoder", {**TEXT, **TOK, "num_key_value_heads": 1, "head_dim": 8,
                          "architectures": ["GemmaForCausalLM"]}),
    "gemma2": ("decoder", {**TEXT, **TOK, "num_key_value_heads": 2, "head_dim": 8,
                           "architectures": ["Gemma2ForCausalLM"]}),
    "phi": ("decoder", {**TEXT, **TOK, "architectures": ["PhiForCausalLM"]}),
    "phi3": ("decoder", {**TEXT, **TOK, "num_key_value_heads": 2, "architectures": ["Phi3ForCausalLM"]}),
    "gpt2": ("decoder", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64, **TOK,
                         "architectures": ["GPT2LMHeadModel"]}),
    "opt": ("decoder", {**TEXT, **TOK, "ffn_dim": 64, "word_embed_proj_dim": 32,
                        "architectures": ["OPTForCausalLM"]}),
    "gpt_neox": ("decoder", {**TEXT, **TOK, "architectures": ["GPTNeoXForCausalLM"]}),
    "gptj": ("decoder", {"n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4, **TOK,
                         "architectures": ["GPTJForCausalLM"]}),
    "gpt_neo": ("decoder", {"hidden_size": 32, "num_layers": 2, "num_heads": 4, **TOK,
                            "attention_types": [[["global", "local"], 1]],
                            "architectures": ["GPTNeoForCausalLM"]}),
    "bloom": ("decoder", {"hidden_size": 32, "n_layer": 2, "n_head": 4, **TOK,
                          "architectures": ["BloomForCausalLM"]}),
    "falcon": ("decoder", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, **TOK,
                           "architectures": ["FalconForCausalLM"]}),
    "bert": ("encoder", {**TEXT, **TOK}),
    "roberta": ("encoder", {**TEXT, **TOK}),
    "xlm-roberta": ("encoder", {**TEXT, **TOK}),
    "distilbert": ("encoder", {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, **TOK}),
    "albert": ("encoder", {**TEXT, **TOK, "embedding_size": 16}),
    "electra": ("encoder", {**TEXT, **TOK, "embedding_size": 16}),
    "deberta-v2": ("encoder", {**TEXT, **TOK}),
    "mobilebert": ("encoder", {**TEXT, **TOK, "embedding_size": 16, "intra_bottleneck_size": 16,
                               "true_hidden_size": 16}),
    "mpnet": ("encoder", {**TEXT, **TOK}),
    "t5": ("seq2seq", {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, **SEQ2SEQ,
                       "architectures": ["T5ForConditionalGeneration"]}),
    "bart": ("seq2seq", {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
                         "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
                         "decoder_ffn_dim": 64, **SEQ2SEQ,
                         "architectures": ["BartForConditionalGeneration"]}),
    "whisper": ("speech", {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                           "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
                           "decoder_ffn_dim": 64,
                           "num_mel_bins": 8, "max_source_positions": 16, "max_target_positions": 16,
                           **SEQ2SEQ, "bos_token_id": 1, "eos_token_id": 2}),
    "wav2vec2": ("speech", {**TEXT, "vocab_size": 100, "conv_dim": [16, 16], "conv_stride": [5, 2],
                            "conv_kernel": [10, 3], "num_conv_pos_embeddings": 16,
                            "num_conv_pos_embedding_groups": 4}),
    "vit": ("vision", {**TEXT, "image_size": 32, "patch_size": 8}),
    "deit": ("vision", {**TEXT, "image_size": 32, "patch_size": 8}),
    "dinov2": ("vision", {**TEXT, "image_size": 32, "patch_size": 8}),
    "clip_vision_model": ("vision", {**TEXT, "image_size": 32, "patch_size": 8}),
    "swin": ("vision", {"embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4], "image_size": 32,
                        "patch_size": 4, "window_size": 4}),
    "convnext": ("vision", {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2, "image_size": 32}),
    "resnet": ("vision", {"hidden_sizes": [16, 32], "depths": [1, 1], "embedding_size": 16}),
    "segformer": ("vision", {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1],
                             "hidden_sizes": [16, 32], "num_attention_heads": [1, 2],
                             "decoder_hidden_size": 32, "patch_sizes": [7, 3], "strides": [4, 2],
                             "mlp_ratios": [2, 2]}),
}  # fmt: skip

# pin reasons every transformer shows (the residual width behind LayerNorm/RMSNorm, the vocabulary at the
# output): left out of the per-model column so that what is specific to a model stands out
COMMON = ("normalised over channels", "mean over a dim that carries channel slots", "model outputs keep")


def inputs(model_type: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    family = CASES[model_type][0]
    if family == "vision":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    if model_type == "whisper":
        return {
            "input_features": torch.randn(1, 8, 32, generator=g),
            "decoder_input_ids": torch.tensor([[1, 2]]),
        }
    if model_type == "wav2vec2":
        return {"input_values": torch.randn(1, 400, generator=g)}
    ids = torch.randint(3, 100, (2, 7), generator=g)
    if family == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    return {"input_ids": ids}


def one(model_type: str) -> dict:
    family, cfg = CASES[model_type]
    row = {"name": model_type, "family": family}
    t0 = time.perf_counter()
    try:
        model = load_hf(json.dumps({"model_type": model_type, **cfg}))
        torch.manual_seed(0)
        randomize(model)
        rep = check(model, inputs(model_type), ratio=0.5)
    except Exception as exc:
        return row | {"status": "error", "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
    reasons = {r.split(": ", 1)[-1] for g in rep.pinned for r in g["reasons"]}
    return row | {
        "status": "ok" if rep.ok and not rep.rule_errors else "inexact",
        "class": type(model).__name__,
        "max_abs_err": rep.max_abs_err,
        "macs_ratio": rep.macs_ratio,
        "params_ratio": rep.params_ratio,
        "prunable": rep.n_prunable_groups,
        "groups": rep.n_groups,
        "rule_errors": rep.rule_errors[:2],
        "specific": sorted(r for r in reasons if not any(c in r for c in COMMON)),
        "seconds": time.perf_counter() - t0,
    }


def markdown(rows: list[dict], machine: str) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        "## Hugging Face coverage (structured pruning, exactness oracle)",
        "",
        f"`bench/bench_hf.py`. {machine} {len(rows)} architectures built offline from tiny configs "
        "(2 layers, width 32, 4 heads; `hf:` specs), weights randomised. Each row is "
        "`prunekit.check(model, inputs, ratio=0.5)`: the physically pruned copy against the masked "
        "reference. "
        f"**{len(ok)}/{len(rows)} exact.** Every transformer keeps its residual width (LayerNorm/RMSNorm "
        "statistics depend on it) and its vocabulary; the last column gives any *other* reason something "
        "stayed: that is where heads are kept.",
        "",
    ]
    header = ["model_type", "family", "class", "status", "MACs ratio", "params ratio", "prunable / groups",
              "max abs err", "also pinned, because"]  # fmt: skip
    cells = []
    for r in rows:
        if r["status"] == "error":
            cells.append([r["name"], r["family"], "—", "error", "—", "—", "—", "—", r["why"]])
            continue
        cells.append([
            r["name"], r["family"], r["class"], r["status"], f"{r['macs_ratio']:.2f}",
            f"{r['params_ratio']:.2f}",
            f"{r['prunable']} / {r['groups']}", f"{r['max_abs_err']:.1e}", "; ".join(r["specific"]) or "—",
        ])  # fmt: skip
    return "\n".join(lines + markdown_table(header, cells, align="llllrrlrl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    rows = check_each(args.only or list(CASES), one)
    machine = machine_line(torch.get_num_threads(), transformers=transformers.__version__)
    finish("hf", markdown(rows, machine), args, write=not args.only)


if __name__ == "__main__":
    main()
