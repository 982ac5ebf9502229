"""The digits-on-photos detection benchmark: deterministic, cached, valid YOLO labels, and ultralytics' own
dataset check and trainer accept it."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

ultralytics = pytest.importorskip("ultralytics")

import prunekit.models.ultralytics  # noqa: E402,F401  (YOLO_OFFLINE: ultralytics never reaches the network)
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.models.yolo_scenes import make_scenes_dataset  # noqa: E402


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes_dataset(tmp_path_factory.mktemp("scenes") / "s", n_train=16, n_val=8, imgsz=96, seed=3)


def _labels(data, split):
    rows = []
    for path in sorted((data.parent / "labels" / split).iterdir()):
        rows.append(np.array([[float(v) for v in line.split()] for line in path.read_text().splitlines()]))
    return rows


def test_labels_are_valid_varied_and_deterministic(tmp_path, scenes):
    rows = _labels(scenes, "train") + _labels(scenes, "val")
    assert len(rows) == 24 and all(r.ndim == 2 and r.shape[1] == 5 for r in rows)
    allrows = np.concatenate(rows)
    cls, boxes = allrows[:, 0], allrows[:, 1:]
    assert set(cls) <= set(range(10)) and len(set(cls)) >= 6
    lo, hi = boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2
    assert (lo >= 0).all() and (hi <= 1).all() and (boxes[:, 2:] > 0).all()
    sides = boxes[:, 2:].max(axis=1) * 96
    assert sides.min() < 10 and sides.max() > 20  # small and large objects
    assert max(len(r) for r in rows) >= 3  # several objects per image
    again = make_scenes_dataset(tmp_path / "again", n_train=16, n_val=8, imgsz=96, seed=3)
    for sub in ("images/train/000005.jpg", "labels/val/000003.txt"):
        assert (again.parent / sub).read_bytes() == (scenes.parent / sub).read_bytes()
    other = make_scenes_dataset(tmp_path / "other", n_train=16, n_val=8, imgsz=96, seed=4)
    assert (other.parent / "labels/train/000000.txt").read_text() != (
        scenes.parent / "labels/train/000000.txt"
    ).read_text()


def test_cached_once_and_refuses_a_different_set(tmp_path):
    root = tmp_path / "s"
    data = make_scenes_dataset(root, n_train=2, n_val=1, imgsz=64)
    first = (root / "images/train/000000.jpg").stat().st_mtime_ns
    assert make_scenes_dataset(root, n_train=2, n_val=1, imgsz=64) == data
    assert (root / "images/train/000000.jpg").stat().st_mtime_ns == first  # not regenerated
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(root.stat().st_mode) == 0o777 & ~mask
    with pytest.raises(ConfigError, match="does not hold this dataset"):
        make_scenes_dataset(root, n_train=3, n_val=1, imgsz=64)
    with pytest.raises(ConfigError, match="multiple of 32"):
        make_scenes_dataset(tmp_path / "bad", n_train=2, n_val=1, imgsz=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # nothing half-written


def test_ultralytics_checks_and_trains_on_it(tmp_path, scenes):
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(scenes))
    assert info["nc"] == 10 and info["names"][3] == "3"
    yolo = ultralytics.YOLO("yolov8n.yaml")
    yolo.train(data=str(scenes), epochs=1, imgsz=96, batch=8, workers=0, plots=False, device="cpu",
               verbose=False, project=str(tmp_path), name="scenes", amp=False)  # fmt: skip
    assert yolo.trainer.model.model[-1].nc == 10 and yolo.trainer.best.exists()


def test_cli_scenes_writes_the_set_and_bad_input_is_one_error_line(tmp_path):
    from typer.testing import CliRunner

    import prunekit.cli.yolo  # noqa: F401  (registers `prunekit yolo ...` on the shared app)
    from prunekit.cli import app

    runner = CliRunner()
    out = tmp_path / "s"
    ok = runner.invoke(app, ["yolo", "scenes", str(out), "--train", "2", "--val", "1", "--imgsz", "64"])
    assert ok.exit_code == 0, ok.output
    assert len(list((out / "images" / "train").iterdir())) == 2
    bad = runner.invoke(app, ["yolo", "scenes", str(out), "--train", "3", "--val", "1", "--imgsz", "64"])
    assert (
        bad.exit_code == 2 and bad.output.strip().startswith("error:") and len(bad.output.splitlines()) == 1
    )
    bad = runner.invoke(app, ["yolo", "scenes", str(tmp_path / "t"), "--imgsz", "70"])
    assert bad.exit_code == 2 and "multiple of 32" in bad.output and not (tmp_path / "t").exists()
