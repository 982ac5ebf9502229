"""Pruned YOLO checkpoints (yaml-trainable and free) through ultralytics' exporter: same boxes as the .pt.

Random weights predict boxes only at ``conf=0``, so the exports are compared there (a nonzero box count is
asserted); images are ultralytics' bundled bus.jpg and zidane.jpg, at 64 px.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from typer.testing import CliRunner

ultralytics = pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")

from helpers_yolo import IMGSZ, one_thread  # noqa: E402, F401 (one_thread: autouse for this module)

from prunekit._atomic import umask  # noqa: E402
from prunekit.cli import app  # noqa: E402
from prunekit.errors import ConfigError, ExportError, ModelLoadError  # noqa: E402
from prunekit.models.ultralytics import load_yolo, prune_to_file, save_yolo  # noqa: E402
from prunekit.models.yolo_export import (  # noqa: E402
    FP32,
    BoxAgreement,
    compare_boxes,
    export_checkpoint,
    match_boxes,
    predict_agreement,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Both pruned kinds of yolov8n at ratio 0.5, as ultralytics checkpoints."""
    root = tmp_path_factory.mktemp("pruned")
    paths = {}
    for kind in ("yaml", "free"):
        paths[kind] = root / kind / f"{kind}.pt"
        paths[kind].parent.mkdir()
        prune_to_file("yolov8n.yaml", paths[kind], ratio=0.5, imgsz=IMGSZ, seed=0, trainable=kind == "yaml")
    return paths


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["yaml", "free"])
def test_onnx_and_torchscript_give_the_pt_boxes(tmp_path, pruned, kind):
    pt = pruned[kind]
    before = pt.read_bytes()
    for fmt, name in (("onnx", f"{kind}.onnx"), ("torchscript", f"{kind}.torchscript")):
        out = export_checkpoint(pt, fmt, IMGSZ, tmp_path)
        assert out == tmp_path / name and out.is_file()
        agree = predict_agreement(pt, out, conf=0.0, imgsz=IMGSZ)
        assert agree.boxes > 0 and len(agree.images) == 2
        assert agree.tolerance == FP32 and agree.ok, agree.to_dict()
    again = export_checkpoint(pt, "onnx", IMGSZ, tmp_path)  # replaces the earlier export
    assert again == tmp_path / f"{kind}.onnx"
    assert pt.read_bytes() == before and _listing(pt.parent) == [pt.name]  # staged elsewhere, pt untouched
    assert _listing(tmp_path) == [f"{kind}.onnx", f"{kind}.torchscript"]  # no temporaries left
    mode = 0o666 & ~umask()
    assert (tmp_path / f"{kind}.onnx").stat().st_mode & 0o777 == mode


def test_openvino_export_boxes_within_its_tolerance(tmp_path, pruned):
    pytest.importorskip("openvino")
    out = export_checkpoint(pruned["free"], "openvino", IMGSZ, tmp_path)
    assert out.name == "free_openvino_model" and (out / "metadata.yaml").is_file()
    agree = predict_agreement(pruned["free"], out, conf=0.0, imgsz=IMGSZ)
    assert agree.boxes > 0 and agree.ok, agree.to_dict()
    assert agree.notes and "precision" in agree.notes[0]
    assert _listing(tmp_path) == ["free_openvino_model"]


def test_ncnn_export_boxes_match(tmp_path, pruned):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    out = export_checkpoint(pruned["yaml"], "ncnn", IMGSZ, tmp_path)
    assert {"model.ncnn.param", "model.ncnn.bin"} <= set(_listing(out))
    agree = predict_agreement(pruned["yaml"], out, conf=0.0, imgsz=IMGSZ)
    assert agree.boxes > 0 and agree.ok, agree.to_dict()


def test_litert_without_its_toolchain_is_one_error_and_no_files(tmp_path, pruned):
    if importlib.util.find_spec("litert_torch") is not None:
        pytest.skip("litert-torch is installed: this checks the error when it is not")
    with pytest.raises(ExportError, match="litert: No module named 'litert_torch'"):
        export_checkpoint(pruned["yaml"], "tflite", IMGSZ, tmp_path)
    assert _listing(tmp_path) == []


def test_match_boxes_is_greedy_by_iou_and_compare_counts_disagreements():
    ref = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60]])
    other = torch.tensor([[0.0, 0, 10, 11], [100, 100, 110, 110]])
    # other[0] overlaps both ref[0] (IoU 10/11) and ref[1] (IoU 11/12): the higher pair wins, once
    assert [(i, j) for i, j, _ in match_boxes(ref, other)] == [(1, 0)]
    assert match_boxes(ref, other, min_iou=0.95) == []

    class Boxes:
        def __init__(self, xyxy, conf, cls):
            self.xyxy, self.conf, self.cls = xyxy, torch.tensor(conf), torch.tensor(cls)

        def __len__(self):
            return len(self.xyxy)

    row = compare_boxes("x", Boxes(ref, [0.9, 0.8, 0.7], [1.0, 2, 3]), Boxes(other, [0.7, 0.6], [1.0, 5]))
    assert (row.matched, row.n_reference, row.n_exported) == (1, 3, 2)
    assert row.matched_fraction == pytest.approx(1 / 3) and row.class_agreement == 0.0
    assert row.conf_diff == pytest.approx(0.1) and row.iou_deficit == pytest.approx(1 / 12)
    assert row.flip_conf_diff == pytest.approx(0.1)
    agree = BoxAgreement("onnx", 0.25, 0.7, IMGSZ, [row], FP32)
    assert not agree.ok  # a third of the boxes unmatched, a class flip 0.1 apart
    tie = compare_boxes("t", Boxes(ref[:1], [0.5], [1.0]), Boxes(ref[:1], [0.5 + 1e-7], [2.0]))
    assert tie.class_agreement == 0.0 and BoxAgreement("onnx", 0.25, 0.7, IMGSZ, [tie], FP32).ok
    flip = compare_boxes("f", Boxes(ref[:1], [0.5], [1.0]), Boxes(ref[:1], [0.4995], [2.0]))
    assert flip.conf_diff < FP32.conf_diff and BoxAgreement("onnx", 0.25, 0.7, IMGSZ, [flip], FP32).ok
    wide = compare_boxes("w", Boxes(ref[:1], [0.5], [1.0]), Boxes(ref[:1], [0.49], [2.0]))
    assert not BoxAgreement("onnx", 0.25, 0.7, IMGSZ, [wide], FP32).ok


def test_bad_inputs_are_refused_before_any_file(tmp_path, pruned):
    with pytest.raises(ModelLoadError, match="no such file"):
        export_checkpoint(tmp_path / "missing.pt", "onnx", IMGSZ, tmp_path)
    with pytest.raises(ConfigError, match="unknown export format 'coreml2'"):
        export_checkpoint(pruned["yaml"], "coreml2", IMGSZ, tmp_path)
    with pytest.raises(ConfigError, match="multiple of 32"):
        export_checkpoint(pruned["yaml"], "onnx", 50, tmp_path)
    classifier = save_yolo(load_yolo("yolov8n-cls.yaml"), tmp_path / "cls.pt")
    with pytest.raises(ConfigError, match="classify model, not a detector"):
        export_checkpoint(classifier, "onnx", IMGSZ, tmp_path)
    with pytest.raises(ConfigError, match="not an ultralytics export"):
        predict_agreement(pruned["yaml"], classifier, imgsz=IMGSZ)
    (tmp_path / "yaml_ncnn_model").mkdir()  # not an earlier export: refused before exporting
    with pytest.raises(ConfigError, match="not an earlier ultralytics export"):
        export_checkpoint(pruned["yaml"], "ncnn", IMGSZ, tmp_path)
    assert _listing(tmp_path) == ["cls.pt", "yaml_ncnn_model"]


def test_cli_prints_agreement_and_refuses_bad_input(tmp_path, pruned):
    result = runner.invoke(
        app,
        ["yolo", "export", str(pruned["free"]), "--format", "onnx", "--imgsz", str(IMGSZ),
         "--out-dir", str(tmp_path), "--conf", "0", "--json", str(tmp_path / "a.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "a.json").read_text())["exports"]
    assert row["output"] == str(tmp_path / "free.onnx") and row["ok"] and row["boxes"] > 0
    assert (tmp_path / "free.onnx").is_file() and "onnx" in result.output
    for args, message in (
        ([str(tmp_path / "nope.pt")], "no such file"),
        ([str(pruned["free"]), "--format", "onnx,bogus"], "unknown export format 'bogus'"),
    ):
        bad = runner.invoke(app, ["yolo", "export", *args, "--out-dir", str(tmp_path / "o")])
        assert bad.exit_code == 2 and f"error: {message}" in bad.output and not (tmp_path / "o").exists()
