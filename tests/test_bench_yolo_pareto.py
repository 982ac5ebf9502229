"""bench/bench_yolo_pareto.py's row pipeline on a tiny budget: one dense row, one pruned row, its scratch row.

4 train images at 64 px, one epoch per stage; proves the rows run end to end and record every field, that
the scratch row has the pruned row's architecture, and that a second run resumes from the cache.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_yolo_pareto as bp

TINY = bp.Budget(n_train=4, n_val=2, imgsz=64, dense_epochs=1, recovery_epochs=1, batch=4, seed=0,
                 dense=("yolov8n",), pruned=(("yolov8n", "2x", "oneshot", False),), warmup_epochs=0.0,
                 ort_runs=2, search_steps=3)  # fmt: skip


def test_pareto_rows_record_every_field_and_resume(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = tmp_path / "pareto.json"
        rows = bp.Bench(TINY, tmp_path / "work", results, "tiny").run()
        assert [r["method"] for r in rows] == ["dense", "oneshot", "scratch"]
        for row in rows:
            assert set(bp.FIELDS) <= set(row)
            assert row["params"] > 0 and row["macs"] > 0 and row["ort_ms"] > 0
            assert 0.0 <= row["map50_95"] <= row["map50"] <= 1.0
        dense, pruned, scratch = rows
        assert pruned["macs"] < 0.8 * dense["macs"] and pruned["params"] < dense["params"]
        assert pruned["scratch_key"] == scratch["key"] and scratch["scratch_for"] == pruned["key"]
        assert scratch["macs"] == pruned["macs"] and scratch["params"] == pruned["params"]
        assert scratch["epochs"] == pruned["epochs"] == 2
        stored = json.loads(results.read_text())
        assert [r["key"] for r in stored["rows"]] == [r["key"] for r in rows]
        again = bp.Bench(TINY, tmp_path / "work", results, "tiny").run()  # cached: nothing retrained
        assert [(r["key"], r["map50_95"], r["train_s"]) for r in again] == [
            (r["key"], r["map50_95"], r["train_s"]) for r in rows
        ]
    finally:
        torch.set_num_threads(threads)


def test_scratch_copy_has_the_pruned_widths_and_new_weights():
    from prunekit.models.ultralytics import prune_yolo

    model = bp.random_init("yolov8n.yaml", 0)
    prune_yolo(model, ratio=0.5, imgsz=64, trainable=False)
    fresh, how = bp.scratch_copy(model, 1)
    assert how == "reset" and bp.arch_key(fresh) == bp.arch_key(model)
    w0, w1 = model.model[0].conv.weight, fresh.model[0].conv.weight
    assert not torch.equal(w0, w1)
    dfl = fresh.model[-1].dfl  # the box decoder's fixed bin indices survive the re-initialisation
    assert torch.equal(dfl.conv.weight.flatten(), torch.arange(dfl.c1, dtype=torch.float))


class _Stop(Exception):
    pass


def test_an_interrupted_dense_row_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import dataclasses

    from ultralytics.utils.callbacks import base as callbacks  # the module get_default_callbacks reads

    def stop_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise _Stop

    budget = dataclasses.replace(TINY, dense_epochs=2, pruned=())
    # the dict every new trainer copies (a trainer that checks AMP rebinds the package's name for it to a
    # copy, so an earlier training in the same process would leave a patch there unread)
    hooks = callbacks.default_callbacks["on_fit_epoch_end"]
    monkeypatch.setitem(callbacks.default_callbacks, "on_fit_epoch_end", [*hooks, stop_after_first_epoch])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work, results = tmp_path / "work", tmp_path / "pareto.json"
        with pytest.raises(_Stop):
            bp.Bench(budget, work, results, "tiny").run()
        last = work / "train" / "dense-yolov8n" / "weights" / "last.pt"
        assert bp.unfinished_epochs(last) == 1
        monkeypatch.undo()
        (row,) = bp.Bench(budget, work, results, "tiny").run()
        assert row["epochs"] == 2 and bp.unfinished_epochs(last) == 0  # finished: optimizer stripped
        csv = (work / "train" / "dense-yolov8n" / "results.csv").read_text().splitlines()
        assert [line.split(",")[0].strip() for line in csv[1:]] == ["1", "2"]  # epoch 2 followed epoch 1
    finally:
        torch.set_num_threads(threads)
