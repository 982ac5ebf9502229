"""Hugging Face transformers from tiny configs: heads (GQA too) and FFN neurons removed exactly,
attributes and
config kept consistent, ``generate`` works, ``hf:`` specs round-trip through save/load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _engine_helpers import assert_exact, randomize

import prunekit.structured as ps
from prunekit.deploy.checkpoint import load, save
from prunekit.models.spec import load_model

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
CONFIGS = {
    "bert": {"model_type": "bert", **TEXT, "vocab_size": 100},
    "roberta": {"model_type": "roberta", **TEXT, "vocab_size": 100},
    "distilbert": {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64},
    "vit": {"model_type": "vit", **TEXT, "image_size": 32, "patch_size": 8},
    "gpt2": {
        "model_type": "gpt2",
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": 64,
        "vocab_size": 100,
        "architectures": ["GPT2LMHeadModel"],
    },
    "llama": {
        "model_type": "llama",
        **TEXT,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "architectures": ["LlamaForCausalLM"],
    },
}
# (config field -> value after 50% pruning)
EXPECTED_CONFIG = {
    "bert": {"num_attention_heads": 2, "intermediate_size": 32},
    "roberta": {"num_attention_heads": 2, "intermediate_size": 32},
    "distilbert": {"n_heads": 2, "hidden_dim": 32},
    "vit": {"num_attention_heads": 2, "intermediate_size": 32},
    "gpt2": {"n_head": 2, "n_inner": 32},
    "llama": {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 32},
}


def spec(name: str) -> str:
    return "hf:" + json.dumps(CONFIGS[name])


def inputs(name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name == "vit":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    return {"input_ids": torch.randint(0, 100, (2, 7), generator=g)}


def head_counts(model: torch.nn.Module) -> list[int]:
    """Every head-count attribute of every attention module, in order."""
    names = ("num_heads", "num_attention_heads", "n_heads")
    return [getattr(m, n) for m in model.modules() for n in names if isinstance(getattr(m, n, None), int)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_heads_and_ffn_pruned_exactly_and_config_follows(name):
    model = load_model(spec(name))
    x = inputs(name)
    rep = assert_exact(randomize(load_model(spec(name))), x, 0.5)
    heads = [g for g in rep.plan.groups if g.width == (2 if name == "llama" else 4)]
    ffn = [g for g in rep.plan.groups if g.width == 64]
    assert len(heads) == 2 and len(ffn) == 2  # two layers: one head group and one FFN group each
    assert all(len(g.removed) == g.width // 2 for g in heads + ffn)
    counts = head_counts(model)  # LLaMA's attention keeps no head count (its views use -1)
    assert counts == [4] * len(counts) and (counts or name == "llama")
    ps.prune(model, x, ratio=0.5, measure=False)
    for field, value in EXPECTED_CONFIG[name].items():
        assert getattr(model.config, field) == value, field
    assert set(head_counts(model)) == ({2} if counts else set())


def test_llama_gqa_drops_key_value_heads_with_their_query_heads_and_generates():
    model = load_model(spec("llama"))
    x = inputs("llama")
    ps.prune(model, x, ratio=0.5, measure=False)
    att = model.model.layers[0].self_attn
    assert (att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features) == (16, 8, 8)
    assert att.o_proj.in_features == 16 and att.num_key_value_groups == 2
    out = model.generate(x["input_ids"][:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 11)


def test_gpt2_conv1d_and_split_size_follow_and_generate_works():
    model = load_model(spec("gpt2"))
    x = inputs("gpt2")
    ps.prune(model, x, ratio=0.5, measure=False)
    attn = model.transformer.h[0].attn
    assert (attn.split_size, attn.c_attn.nf, attn.c_proj.nx) == (16, 48, 16)
    assert model.transformer.h[0].mlp.c_fc.nf == 32
    assert model.generate(x["input_ids"][:1], max_new_tokens=3, do_sample=False).shape == (1, 10)


def test_hf_spec_save_load_round_trip_with_per_layer_widths(tmp_path):
    s = spec("bert")
    model = load_model(s)
    x = inputs("bert")
    res = ps.prune(model, x, ratio=0.5, ignore=["encoder.layer.1"], measure=False)  # layer 1 keeps its widths
    assert model.config.num_attention_heads == 4  # layers disagree: the config cannot say it ...
    assert res.plan.meta["per_layer_attrs"]["config.num_attention_heads"] == [2, 4]  # ... the plan does
    assert model.encoder.layer[0].attention.self.num_attention_heads == 2
    save(model, tmp_path / "ck", spec=s, plan=res.plan)
    back = load(tmp_path / "ck")
    assert back.encoder.layer[0].attention.self.num_attention_heads == 2
    assert torch.equal(back(**x).last_hidden_state, model(**x).last_hidden_state)


@pytest.mark.parametrize(
    "model_type, attn_implementation", [("mpnet", None), ("bert", "eager")], ids=["mpnet", "bert-eager"]
)
def test_matmul_attention_merging_heads_by_attribute_updates_its_attributes(model_type, attn_implementation):
    # No sdpa here: heads are split with view(..., -1, head_size), scored with matmul and merged back with
    # view(..., self.all_head_size). The merge must make the attributes follow the cut (otherwise MPNet
    # fails its verification forward: all_head_size stays 32 for 16 channels).
    cfg = transformers.AutoConfig.for_model(model_type, **TEXT, vocab_size=100)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = transformers.AutoModel.from_config(cfg, **extra).eval()
    x = inputs(model_type)
    rep = assert_exact(randomize(copy.deepcopy(model)), x, 0.5)
    heads = [g for g in rep.plan.groups if g.width == 4]
    # MPNet adds one relative position bias (an Embedding with a column per head) in every layer: the heads
    # of both layers are one group; BERT's are one group per layer
    assert len(heads) == (1 if model_type == "mpnet" else 2)
    ps.prune(model, x, ratio=0.5, measure=False)
    att = [m for m in model.modules() if hasattr(m, "all_head_size")]
    assert [(a.num_attention_heads, a.all_head_size) for a in att] == [(2, 16)] * 2
    assert model.config.num_attention_heads == 2
    assert model(**x).last_hidden_state.shape == (2, 7, 32)


def test_t5_relative_position_bias_follows_its_heads():
    # T5 passes its relative position bias (an Embedding with one column per head, computed in the first
    # layer and reused by the others) to sdpa as the attention mask: its head dim is linked to the heads, so
    # the self-attention heads stay prunable (they were pinned) and the bias loses the removed heads' columns.
    # Cross-attention adds a per-head zero bias of fixed size: those heads stay.
    cfg = {"model_type": "t5", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
    cfg |= {"vocab_size": 100, "decoder_start_token_id": 0, "architectures": ["T5ForConditionalGeneration"]}
    model = load_model("hf:" + json.dumps(cfg))
    ids = inputs("t5")["input_ids"]
    x = {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    rep = assert_exact(randomize(copy.deepcopy(model)), x, 0.5)
    assert sorted(g.width for g in rep.plan.groups) == [4, 4] + [64] * 4  # encoder / decoder self-attention
    ps.prune(model, x, ratio=0.5, measure=False)
    assert model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.embedding_dim == 2
    assert [b.layer[0].SelfAttention.n_heads for b in model.decoder.block] == [2, 2]
    assert [b.layer[1].EncDecAttention.n_heads for b in model.decoder.block] == [4, 4]
    assert model.config.d_ff == 32 and model.config.num_heads == 4  # heads differ per layer: plan keeps them
    assert model.generate(ids[:1], max_new_tokens=3, do_sample=False).shape == (1, 4)


def test_bloom_keyword_baddbmm_is_traced_and_alibi_heads_stay():
    # BLOOM scores with alibi.baddbmm(batch1=q, batch2=k, ...) (keywords: the rule reads them too) and
    # folds heads into the batch with an int it computes, next to ALiBi slopes built from num_heads at run
    # time: its heads must stay; its MLP neurons are prunable.
    cfg = {"model_type": "bloom", "hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 100}
    model = randomize(load_model("hf:" + json.dumps(cfg)))
    rep = assert_exact(model, inputs("bloom"), 0.5)
    assert sorted(g.width for g in rep.plan.groups) == [128, 128]
    pinned_heads = [g for g in rep.pinned if g["width"] == 4]
    assert len(pinned_heads) == 2 and all("Python int" in g["reasons"][0] for g in pinned_heads)


def _stock(directory, x, auto_class="AutoModel", generate=0):
    from prunekit.deploy.pretrained import stock_outputs

    out = stock_outputs(directory, x, auto_class=auto_class, generate=generate)
    assert int(out["prunekit_imported"]) == 0  # the loading process never imported prunekit
    return out


def test_pruned_llama_save_pretrained_loads_in_stock_transformers_and_generates(tmp_path):
    from prunekit.deploy.pretrained import save_pretrained
    from prunekit.structured.layers import prune_layers

    cfg = {**CONFIGS["llama"], "num_hidden_layers": 3}
    model = load_model("hf:" + json.dumps(cfg))
    x = inputs("llama")
    ps.prune(model, x, ratio=0.5, measure=False)
    prune_layers(model, x, n=1)
    saved = save_pretrained(model, tmp_path / "hf", example_inputs=x)
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    expected = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32}
    assert {k: written[k] for k in expected} == expected and written["num_hidden_layers"] == 2
    assert saved.max_abs_diff == 0.0 and saved.layers == 2
    out = _stock(tmp_path / "hf", x, "AutoModelForCausalLM", generate=4)
    with torch.no_grad():
        ref = model(**x).logits
    assert float((out["output"] - ref).abs().max()) < 1e-5
    here = model.generate(x["input_ids"][:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(out["generated"], here)


def test_pruned_vit_states_head_dim_and_loads_in_stock_transformers(tmp_path):
    from prunekit.deploy.pretrained import save_pretrained

    model = load_model(spec("vit"))
    x = inputs("vit")
    ps.prune(model, x, ratio=0.5, measure=False)
    saved = save_pretrained(model, tmp_path / "hf")
    assert saved.changed == {"head_dim": [None, 8]}  # ViT reads config.head_dim, else hidden / heads
    with torch.no_grad():
        ref = model(**x).last_hidden_state
    assert float((_stock(tmp_path / "hf", x)["output"] - ref).abs().max()) < 1e-5


def test_bert_ffn_and_layers_pruned_load_in_stock_transformers(tmp_path):
    from prunekit.deploy.pretrained import save_pretrained
    from prunekit.structured.layers import prune_layers

    model = load_model("hf:" + json.dumps({**CONFIGS["bert"], "num_hidden_layers": 3}))
    x = inputs("bert")
    heads = [f"encoder.layer.{i}.attention" for i in range(3)]
    ps.prune(model, x, ratio=0.5, ignore=heads, measure=False)
    prune_layers(model, x, n=1)
    save_pretrained(model, tmp_path / "hf", example_inputs=x)
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (written["intermediate_size"], written["num_hidden_layers"]) == (32, 2)
    with torch.no_grad():
        ref = model(**x).last_hidden_state
    assert float((_stock(tmp_path / "hf", x)["output"] - ref).abs().max()) < 1e-5


@pytest.mark.parametrize(
    "name, ignore, why",
    [
        ("bert", None, "BertModel sizes a head as hidden_size / num_attention_heads"),
        ("gpt2", None, "GPT2LMHeadModel sizes a head as hidden_size / num_attention_heads"),
        ("llama", ["model.layers.1"], "widths differ per layer and LlamaConfig has one value"),
    ],
)
def test_save_pretrained_refuses_what_a_config_cannot_state_and_writes_nothing(tmp_path, name, ignore, why):
    from prunekit.deploy.pretrained import save_pretrained
    from prunekit.errors import ExportError

    model = load_model(spec(name))
    ps.prune(model, inputs(name), ratio=0.5, ignore=ignore, measure=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    with pytest.raises(ExportError, match=why) as err:
        save_pretrained(model, tmp_path / "hf")
    assert "\n" not in str(err.value) and "prunekit.save" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    assert model.config.to_dict() == config
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_save_format_hf_writes_stock_directory_or_exits_2(tmp_path):
    from typer.testing import CliRunner

    from prunekit.cli import app

    runner = CliRunner()
    good = ["prune", spec("llama"), "--ratio", "0.5", "--out", str(tmp_path / "ck")]
    assert runner.invoke(app, good).exit_code == 0
    res = runner.invoke(app, ["save", str(tmp_path / "ck"), "--out", str(tmp_path / "hf"), "--format", "hf"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_attention_heads"] == 2
    bad = ["prune", spec("bert"), "--ratio", "0.5", "--out", str(tmp_path / "bert")]
    assert runner.invoke(app, bad).exit_code == 0
    res = runner.invoke(app, ["save", str(tmp_path / "bert"), "--out", str(tmp_path / "no"), "--format=hf"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "ck", "hf"]  # nothing else written
