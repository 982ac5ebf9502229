"""Recovery inside ultralytics' trainer: sparsity training, gradual pruning (+ distillation), atomic
checkpoints, and the `prunekit yolo prune --recipe` chain with its bad-input errors.

Tiny runs: YOLOv8n at 64 px, 8 scenes images, one epoch, workers=0, plain SGD with no warm-up and
``nbs`` = the batch, so every batch is one optimizer step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from helpers_yolo import IMGSZ, one_thread  # noqa: E402, F401 (one_thread: autouse for this module)

import prunekit.cli.yolo  # noqa: E402, F401  (registers `prunekit yolo ...` on the shared app)
from prunekit.cli import app  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.models.ultralytics import load_yolo, save_yolo  # noqa: E402
from prunekit.models.yolo_recipe import recipe_from_dict  # noqa: E402
from prunekit.models.yolo_recover import (  # noqa: E402
    CoupledPenalty,
    GradualPruning,
    SparsityTraining,
    StrengthSchedule,
    recovery_trainer,
)
from prunekit.models.yolo_scenes import make_scenes_dataset  # noqa: E402


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes_dataset(
        tmp_path_factory.mktemp("scenes") / "s", n_train=8, n_val=4, imgsz=IMGSZ, seed=1
    )


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval()
    return save_yolo(model, tmp_path_factory.mktemp("dense") / "dense.pt")


def _args(scenes, tmp_path, name, batch=4):
    return dict(
        data=str(scenes), imgsz=IMGSZ, batch=batch, nbs=batch, workers=0, plots=False, device="cpu",
        verbose=False, epochs=1, optimizer="SGD", lr0=0.01, warmup_epochs=0, project=str(tmp_path),
        name=name, exist_ok=True,
    )  # fmt: skip


def _train(dense, trainer, **args):
    yolo = ultralytics.YOLO(str(dense))
    yolo.train(trainer=trainer, **args)
    return yolo.trainer


def test_strength_schedule_warms_up_holds_and_decays():
    s = StrengthSchedule(2e-3, warmup=0.25, decay=0.25)
    assert [s.at(p) for p in (0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0)] == pytest.approx(
        [0.0, 1e-3, 2e-3, 2e-3, 2e-3, 1e-3, 0.0]
    )
    assert StrengthSchedule(1e-4).at(0.0) == 1e-4  # no warm-up: constant from the first step
    for bad in (0, -1e-4, 0.5, True, "1e-4"):
        with pytest.raises(ConfigError, match="strength must be in"):
            StrengthSchedule(bad)
    with pytest.raises(ConfigError, match="warmup \\+ decay"):
        StrengthSchedule(1e-4, warmup=0.6, decay=0.6)
    with pytest.raises(ConfigError, match="penalty must be one of"):
        SparsityTraining(penalty="l0")


def test_gradual_schedule_in_batches_and_no_resume():
    from types import SimpleNamespace

    from prunekit.models.yolo_recover import _on_train_start

    assert GradualPruning(end=1.0, steps=2).schedule(4) == (0, 4, 2)
    assert GradualPruning().schedule(100) == (0, 72, 18)  # 4 steps of 18 batches, ending by 75 %
    assert GradualPruning(start=0.5, end=0.6, steps=8).schedule(10) == (5, 6, 1)  # fewer batches than steps
    with pytest.raises(ConfigError, match=r"start .* must come before end"):
        GradualPruning(start=0.8, end=0.5)
    resumed = SimpleNamespace(
        start_epoch=1, train_loader=[0, 0], prunekit_gradual=GradualPruning(), args=SimpleNamespace(time=None)
    )
    with pytest.raises(ConfigError, match="without resume="):
        _on_train_start(resumed)
    assert resumed.batches_done == 2  # a resumed sparsity run continues its strength schedule


def test_sparsity_training_drives_the_regularised_scales_and_group_norms_down(scenes, dense, tmp_path):
    """Same seed, data and steps: with the penalty, the penalised quantity ends lower than without it; an
    interrupted checkpoint write leaves the previous last.pt whole."""
    runs = {}
    for name, sparsity in (
        ("plain", None),
        ("bn_l1", SparsityTraining(strength=0.1, penalty="bn_l1", warmup=0.0)),
        ("group_lasso", SparsityTraining(strength=0.1, penalty="group_lasso", warmup=0.0)),
    ):
        runs[name] = _train(dense, recovery_trainer(sparsity=sparsity), **_args(scenes, tmp_path, name))
    values = {
        (run, pen): CoupledPenalty(load_yolo(str(t.last)), pen, imgsz=IMGSZ)().item()
        for run, t in runs.items()
        for pen in ("bn_l1", "group_lasso")
    }
    for pen in ("bn_l1", "group_lasso"):  # each penalty drives its own quantity lowest
        assert values[pen, pen] < 0.99 * values["plain", pen]
        assert values[pen, pen] == min(values[run, pen] for run in runs)
    assert [step for step, _, _ in runs["bn_l1"].sparsity_log] == [0, 1]  # every optimizer step
    assert not runs["plain"].sparsity_log

    import prunekit._atomic as atomic

    trainer = runs["plain"]
    before = trainer.last.read_bytes()

    def interrupted(*_args):
        raise KeyboardInterrupt

    atomic_finish = atomic._finish_file
    atomic._finish_file = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.save_model()
    finally:
        atomic._finish_file = atomic_finish
    assert trainer.last.read_bytes() == before
    assert sorted(p.name for p in trainer.wdir.iterdir()) == ["best.pt", "last.pt"]


def test_gradual_pruning_with_distillation_zeroes_groups_then_cuts_them(scenes, dense, tmp_path):
    seen = []

    def check(trainer):
        """After each batch: every entry of the removed units is exactly zero in the model and its EMA."""
        pruner = trainer.pruner
        if not pruner.removed_units():
            return
        plan = pruner.plan()
        for model in (trainer.model.student_model, trainer.ema.ema.student_model):
            tensors = dict(model.named_parameters()) | dict(model.named_buffers())
            for name, dims in plan.removals.items():
                for dim, idx in dims.items():
                    assert not tensors[name].index_select(int(dim), torch.tensor(idx)).any(), name
        seen.append((trainer.batches_done, pruner.removed_units()))

    yolo = ultralytics.YOLO(str(dense))
    yolo.add_callback("on_train_batch_end", check)
    gradual = GradualPruning(ratio=0.5, start=0.0, end=1.0, steps=2)
    args = _args(scenes, tmp_path, "gradual", batch=2) | {"distill_model": str(dense)}
    yolo.train(trainer=recovery_trainer(gradual=gradual), **args)
    trainer = yolo.trainer
    assert "dis_loss" in trainer.loss_names
    assert [step for step, _ in trainer.pruner.history] == [0, 2, 4]  # 4 batches, 2 pruning steps
    assert [b for b, _ in seen] == [2, 3, 4] and seen[0][1] < seen[-1][1]  # units grow, masks hold between

    plan = trainer.prunekit_plan
    dense_model, pruned = load_yolo(str(dense)), load_yolo(str(trainer.pruned))
    cut = dict(pruned.named_parameters()) | dict(pruned.named_buffers())
    for name, t in (dict(dense_model.named_parameters()) | dict(dense_model.named_buffers())).items():
        shape = list(t.shape)
        for dim, idx in plan.removals.get(name, {}).items():
            shape[int(dim)] -= len(idx)
        assert list(cut[name].shape) == shape, name
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(
        p.numel() for p in dense_model.parameters()
    )
    metrics = ultralytics.YOLO(str(trainer.pruned)).val(
        data=str(scenes), imgsz=IMGSZ, batch=4, device="cpu", plots=False, verbose=False,
        project=str(tmp_path), name="val", exist_ok=True,
    )  # fmt: skip
    assert 0.0 <= metrics.box.map <= 1.0


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recipe_runs_sparsity_prune_finetune_with_kd_from_the_cli(scenes, dense, tmp_path):
    from typer.testing import CliRunner

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"data: {scenes}\nmethod: sparsity\nratio: 0.5\nimgsz: {IMGSZ}\nkd: true\n"
        "sparsity_epochs: 1\nfinetune_epochs: 1\nsparsity: {strength: 1.0e-3, penalty: bn_l1, warmup: 0.5}\n"
        "train: {batch: 4, nbs: 4, workers: 0, optimizer: SGD, lr0: 0.01, warmup_epochs: 0}\n"
    )
    out, js, digest = tmp_path / "pruned.pt", tmp_path / "r.json", _sha(dense)
    args = ["yolo", "prune", str(dense), "--recipe", str(recipe), "--out", str(out), "--json", str(js)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _sha(dense) == digest
    summary = json.loads(js.read_text())
    assert summary["recipe"]["criterion"] == "bn_scale" and summary["kd"] is True
    assert set(summary["seconds"]) == {"sparsity", "prune", "finetune"}
    yolo = ultralytics.YOLO(str(out))
    assert (
        sum(p.numel() for p in yolo.model.parameters()) == summary["params_after"] < summary["params_before"]
    )
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["prunekit"]["plans"][0]["meta"]["criterion"] == "bn_scale"
    from ultralytics.nn.tasks import DetectionModel

    rebuilt = DetectionModel(yolo.model.yaml, nc=10, verbose=False)  # what stock `yolo train` rebuilds
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in yolo.model.parameters()]
    for stage in ("sparsity", "finetune"):  # both training stages distilled from the dense input
        header = (Path(summary["runs"][stage]) / "results.csv").read_text().splitlines()[0]
        assert "train/dis_loss" in header, stage


def test_recipe_gradual_without_finetuning_writes_the_cut_checkpoint(scenes, dense, tmp_path):
    from prunekit.models.yolo_recipe import run_recipe

    recipe = recipe_from_dict(
        {"data": str(scenes), "method": "gradual", "ratio": 0.3, "imgsz": IMGSZ, "gradual_epochs": 1,
         "finetune_epochs": 0, "gradual": {"end": 1.0, "steps": 1},
         "train": {"batch": 4, "nbs": 4, "workers": 0, "optimizer": "SGD", "warmup_epochs": 0}}
    )  # fmt: skip
    result = run_recipe(dense, tmp_path / "g.pt", recipe)
    assert set(result.seconds) == {"gradual"} and result.map50_95 is not None
    pruned = load_yolo(str(tmp_path / "g.pt"))
    assert sum(p.numel() for p in pruned.parameters()) == result.params_after < result.params_before
    ckpt = torch.load(tmp_path / "g.pt", weights_only=False)
    assert ckpt["prunekit"]["plans"][0]["meta"]["schedule"] == "cubic"


def test_recipe_bad_input_is_one_error_line_and_leaves_the_files(scenes, dense, tmp_path):
    from typer.testing import CliRunner
    from ultralytics.nn.tasks import ClassificationModel

    classifier = save_yolo(ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False), tmp_path / "cls.pt")
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "images" / "val").mkdir(parents=True)
    (empty / "data.yaml").write_text(
        f"path: {empty}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n"
    )
    good = f"data: {scenes}\n"
    cases = {
        "unknown key(s) epochs": (dense, good + "epochs: 3\n"),
        "(sparsity): unknown key(s) lambda": (dense, good + "sparsity: {lambda: 1.0e-4}\n"),
        "strength must be in": (dense, good + "sparsity: {strength: 5}\n"),
        "unknown criterion 'l9'": (dense, good + "criterion: l9\n"),
        "needs calibration data": (dense, good + "criterion: taylor\n"),
        "data.yaml not found": (dense, f"data: {tmp_path / 'missing.yaml'}\n"),
        "has no images": (dense, f"data: {empty / 'data.yaml'}\n"),
        "is not a detector": (classifier, good),
    }
    digests = {p: _sha(p) for p in (dense, classifier)}
    for message, (model, text) in cases.items():
        recipe = tmp_path / "r.yaml"
        recipe.write_text(text)
        out = tmp_path / "out.pt"
        result = CliRunner().invoke(
            app, ["yolo", "prune", str(model), "--recipe", str(recipe), "--out", str(out)]
        )
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], (message, result.output)
        assert not out.exists() and not (tmp_path / "out_runs").exists()
    assert {p: _sha(p) for p in digests} == digests
    assert recipe_from_dict({"data": "d.yaml", "method": "gradual"}).gradual.ratio == 0.5
    recipe.write_text(good)
    mixed = ["yolo", "prune", str(dense), "--recipe", str(recipe), "--ratio", "0.4", "--out", str(out)]
    result = CliRunner().invoke(app, mixed)
    assert (
        result.exit_code == 2
        and "pruning options belong in the recipe, not on the command line (--ratio)" in result.output
    )


def test_trainable_gradual_ends_in_a_checkpoint_stock_train_rebuilds(scenes, dense, tmp_path):
    """GradualPruning(trainable=True): the final cut goes through the yaml path, so ultralytics' own trainer
    (no prunekit trainer class) rebuilds the gradually pruned widths from the checkpoint's yaml."""
    from prunekit.models.yolo_yaml import shape_mismatches

    gradual = GradualPruning(ratio=0.4, start=0.0, end=1.0, steps=1, trainable=True)
    trainer = _train(dense, recovery_trainer(gradual=gradual), **_args(scenes, tmp_path, "gradual"))
    assert trainer.yaml_kept == {}  # YOLOv8n: every group's cut can be stated
    pruned = load_yolo(str(trainer.pruned))
    dense_params = sum(p.numel() for p in load_yolo(str(dense)).parameters())
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * dense_params
    rows = pruned.yaml["backbone"] + pruned.yaml["head"]
    assert rows[-1][2] == "PrunekitDetect" and pruned.yaml["width_multiple"] == 1.0
    assert shape_mismatches(pruned, pruned.yaml) == []
    assert trainer.prunekit_plan.meta["ultralytics"]["kept_for_yaml"] == []
    yolo = ultralytics.YOLO(str(trainer.pruned))
    yolo.train(**_args(scenes, tmp_path, "stock"))  # ultralytics' DetectionTrainer: rebuilds from the yaml
    assert [p.shape for p in yolo.trainer.model.parameters()] == [p.shape for p in pruned.parameters()]


def test_trainable_gradual_never_masks_groups_the_yaml_cannot_state():
    """YOLO12's A2C2f derives widths no yaml row states: those groups are found on a trial cut, with the
    layer and reason, and a pruner told to keep them whole never removes their units."""
    from prunekit.config import PruneConfig
    from prunekit.models.ultralytics import HeadOutputs, _ignore, example_inputs
    from prunekit.models.yolo_recover import unstatable_groups
    from prunekit.schedules.structured_gradual import StructuredGradualPruner
    from prunekit.structured import pipeline

    model = load_yolo("yolo12n.yaml")
    x = example_inputs(model, IMGSZ)
    report = pipeline.trace(HeadOutputs(model), x, PruneConfig(ignore=_ignore(model, ())), "test")
    why = unstatable_groups(model, report, x, GradualPruning(ratio=0.5), IMGSZ)
    assert why and all(reason.startswith("layer ") for reason in why.values())
    assert any("A2C2f" in reason for reason in why.values())
    pruner = StructuredGradualPruner(
        HeadOutputs(model), x, 0.5, start_step=0, end_step=1, frequency=1, ignore=_ignore(model, ()),
        keep_whole=why,
    )  # fmt: skip
    pruner.step()
    assert pruner.removed_units() > 0 and not set(pruner.removed) & set(why)
    with pytest.raises(ConfigError, match="keep_whole"):
        StructuredGradualPruner(HeadOutputs(model), x, 0.5, start_step=0, end_step=1, frequency=1,
                                keep_whole=[10**6])  # fmt: skip
