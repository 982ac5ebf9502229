"""Ultralytics YOLO: exact pruning of every head type, and pruned checkpoints that ultralytics itself uses.

Models are built from yaml (random weights) and run at small image sizes; data is the local digits dataset.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from helpers_yolo import IMGSZ, one_thread  # noqa: E402, F401 (one_thread: autouse for this module)

from prunekit._atomic import umask  # noqa: E402
from prunekit.deploy.checkpoint import load as pk_load  # noqa: E402
from prunekit.deploy.checkpoint import save as pk_save  # noqa: E402
from prunekit.errors import ConfigError, ModelLoadError  # noqa: E402
from prunekit.models.spec import example_inputs_for, load_model  # noqa: E402
from prunekit.models.ultralytics import (  # noqa: E402
    HeadOutputs,
    check_yolo,
    example_inputs,
    load_yolo,
    prune_yolo,
    save_yolo,
)
from prunekit.models.yolo_data import make_digits_dataset  # noqa: E402
from prunekit.models.yolo_train import finetune_yolo  # noqa: E402
from prunekit.structured.cut import apply  # noqa: E402
from prunekit.structured.oracle import run_outputs  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits_dataset(tmp_path_factory.mktemp("digits"), n_train=8, n_val=4, imgsz=IMGSZ, seed=1)


def _digits_model():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval()


def _shapes(model, x):
    return [tuple(t.shape) for t in run_outputs(HeadOutputs(model), x)]


def _head_widths(model):
    """Output channels of the last conv of every head branch (classes, DFL bins, masks, keypoints, angles)."""
    head = model.model[-1]
    return {
        name: [branch[-1].out_channels for branch in getattr(head, name)]
        for name in ("cv2", "cv3", "cv4")
        if hasattr(head, name)
    }


@pytest.mark.parametrize(
    "cfg",
    [
        "yolov8n.yaml",
        "yolo11n.yaml",
        "yolov8n-seg.yaml",
        "yolov8n-pose.yaml",
        "yolov8n-obb.yaml",
        "yolov5nu.yaml",
    ],
)
def test_every_head_prunes_exactly_and_keeps_its_outputs(cfg):
    model = load_yolo(cfg)
    x = example_inputs(model, IMGSZ)
    shapes, widths = _shapes(model, x), _head_widths(model)
    rep = check_yolo(model, ratio=0.5, imgsz=IMGSZ)
    assert rep.ok and rep.shapes_equal and rep.rule_errors == []
    assert rep.max_abs_err <= 1e-4 * max(1.0, rep.tolerance)
    assert 0.2 < rep.macs_ratio < 0.35  # about (1 - 0.5)^2 of the convolutions' MACs
    params = sum(p.numel() for p in model.parameters())
    apply(HeadOutputs(model), rep.plan, x)  # the checked plan, on the model itself
    assert sum(p.numel() for p in model.parameters()) < 0.35 * params
    assert _shapes(model, x) == shapes and _head_widths(model) == widths
    assert model.model[-1].dfl.conv.in_channels == 16  # DFL bins untouched


def test_a_head_in_export_mode_keeps_every_branch_output():
    """YOLO26 exported without end2end returns the one-to-many decode only; its one-to-one branch must keep
    its classes and boxes all the same, so the pruned model still runs end2end and trains."""
    model = load_yolo("yolo26n.yaml")
    head = model.model[-1]
    head.export, head.end2end = True, False
    widths = {n: [b[-1].out_channels for b in getattr(head, n)] for n in ("one2one_cv2", "one2one_cv3")}
    prune_yolo(model, ratio=0.3, imgsz=IMGSZ, trainable=False)
    assert {n: [b[-1].out_channels for b in getattr(head, n)] for n in widths} == widths
    head.export, head.end2end = False, True
    x = example_inputs(model, IMGSZ)
    assert model(x)[0].shape[-1] == 6  # end2end: (x1, y1, x2, y2, score, class) per detection


def test_yolo11_keeps_c2psa_attention_whole_and_says_why():
    model = load_yolo("yolo11n.yaml")
    attn = model.model[10].m[0].attn
    widths = [p.shape for p in attn.parameters()]
    rep = check_yolo(model, ratio=0.5, imgsz=IMGSZ)
    assert rep.ok and "model.10.m.0.attn" in " ".join(r for p in rep.pinned for r in p["reasons"])
    res = prune_yolo(model, ratio=0.5, imgsz=IMGSZ, trainable=False)
    assert [p.shape for p in attn.parameters()] == widths and attn.num_heads == 2
    assert res.params_after < 0.35 * res.params_before


def test_rtdetr_yaml_builds_and_prunes_exactly_through_its_query_selection():
    # YOLO() cannot tell an RT-DETR yaml's task (ultralytics raises NotImplementedError); its decoder starts
    # from a top-k over encoder scores, which the check replays where the two runs tie
    model = load_yolo("yolov8n-rtdetr.yaml")
    assert type(model).__name__ == "RTDETRDetectionModel"
    x = example_inputs(model, IMGSZ)
    shapes = _shapes(model, x)
    rep = check_yolo(model, ratio=0.5, imgsz=IMGSZ)
    assert rep.ok and rep.shapes_equal and rep.rule_errors == [] and rep.macs_ratio < 0.8
    res = prune_yolo(model, ratio=0.5, imgsz=IMGSZ, trainable=False)
    assert res.params_after < 0.7 * res.params_before and _shapes(model, x) == shapes


def test_classify_and_yolov8s_prune_exactly():
    for cfg, imgsz in (("yolov8n-cls.yaml", 64), ("yolov8s.yaml", 64)):
        rep = check_yolo(load_yolo(cfg), ratio=0.3, imgsz=imgsz)
        assert rep.ok and rep.shapes_equal and rep.params_ratio < 0.8, cfg


def test_c2f_hidden_width_follows_the_plan():
    model = load_yolo("yolov8n.yaml")
    res = prune_yolo(model, ratio=0.5, imgsz=IMGSZ)
    c2f = model.model[2]
    assert res.plan.attrs["model.2"]["c"] == [16, 8] and c2f.c == 8 == c2f.cv1.conv.out_channels // 2
    x = torch.rand(1, 16, 16, 16)[:, : c2f.cv1.conv.in_channels]
    assert torch.equal(c2f.forward_split(x), c2f(x))  # the exporter's split path agrees


def test_pruned_checkpoint_round_trips_through_ultralytics(tmp_path, digits):
    from PIL import Image

    model = _digits_model()
    res = prune_yolo(model, ratio=0.3, imgsz=IMGSZ)
    path = save_yolo(model, tmp_path / "pruned.pt", plans=res.plan)
    yolo = ultralytics.YOLO(str(path))
    n_params = sum(p.numel() for p in yolo.model.parameters())
    assert n_params == res.params_after < res.params_before
    x = example_inputs(model, IMGSZ)
    assert torch.equal(yolo.model.eval()(x)[0], model(x)[0])  # fp32 checkpoint reloads bit-exactly
    image = np.array(Image.open(next((digits.parent / "images" / "val").iterdir())).convert("RGB"))
    pred = yolo.predict(image, imgsz=IMGSZ, conf=0.0, verbose=False, save=False)
    assert pred[0].boxes.data.shape[1] == 6 and len(pred[0].boxes) > 0
    metrics = ultralytics.YOLO(str(path)).val(
        data=str(digits), imgsz=IMGSZ, batch=4, workers=0, plots=False, project=str(tmp_path), verbose=False
    )
    assert 0.0 <= metrics.box.map <= 1.0 and len(metrics.names) == 10
    onnx_path = ultralytics.YOLO(str(path)).export(format="onnx", imgsz=IMGSZ, simplify=False, verbose=False)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)[0]
    assert got.shape == tuple(want.shape) == (1, 14, 84)  # 4 box + 10 classes, 64+16+4 anchors
    assert np.abs(got - want.numpy()).max() < 1e-3 * max(1.0, float(want.abs().max()))


def test_yolo11_checkpoint_predicts_vals_and_exports(tmp_path, digits):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=10, verbose=False).eval()
    prune_yolo(model, ratio=0.5, imgsz=IMGSZ)
    yolo = ultralytics.YOLO(str(save_yolo(model, tmp_path / "y11.pt", half=True)))
    assert next(yolo.model.parameters()).dtype == torch.float32  # ultralytics loads fp16 files as fp32
    pred = yolo.predict(np.zeros((IMGSZ, IMGSZ, 3), np.uint8), imgsz=IMGSZ, verbose=False, save=False)
    assert pred[0].boxes.data.shape[1] == 6
    metrics = yolo.val(
        data=str(digits), imgsz=IMGSZ, batch=4, workers=0, plots=False, project=str(tmp_path), verbose=False
    )
    assert 0.0 <= metrics.box.map <= 1.0 and len(metrics.names) == 10
    onnx_path = yolo.export(format="onnx", imgsz=IMGSZ, simplify=False, verbose=False)
    import onnx

    dims = [d.dim_value for d in onnx.load(onnx_path).graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 14, 84]  # 4 box + 10 classes, 64 + 16 + 4 anchors


def test_ultralytics_trainer_keeps_the_pruned_architecture(tmp_path, digits):
    """finetune_yolo on a freely pruned model, distilling from the dense checkpoint (ultralytics' own
    feature distillation): the trained best.pt keeps exactly the pruned shapes."""
    model = _digits_model()
    dense = save_yolo(model, tmp_path / "dense.pt")
    res = prune_yolo(model, ratio=0.5, imgsz=IMGSZ, trainable=False)
    path = save_yolo(model, tmp_path / "pruned.pt", plans=res.plan)
    args = dict(data=str(digits), imgsz=IMGSZ, batch=4, workers=0, plots=False, device="cpu", verbose=False)
    with pytest.raises(ConfigError, match=r"existing ultralytics \.pt"):
        finetune_yolo(path, teacher=tmp_path / "missing.pt", epochs=1, **args)
    yolo = finetune_yolo(path, teacher=dense, epochs=1, project=str(tmp_path), name="ft", **args)
    assert yolo.trainer.args.distill_model == str(dense) and "dis_loss" in yolo.trainer.loss_names
    tuned = load_yolo(str(yolo.trainer.best))  # ultralytics' best.pt, read with the restricted loader
    assert sum(p.numel() for p in tuned.parameters()) == res.params_after
    assert [p.shape for p in tuned.parameters()] == [p.shape for p in model.parameters()]
    assert not all(
        torch.equal(a, b.half().float()) for a, b in zip(tuned.parameters(), model.parameters(), strict=True)
    )


@pytest.mark.parametrize("cfg", ["yolo12n.yaml", "yolov3u.yaml"])
def test_yaml_prune_keeps_whole_what_a_layer_derives_or_its_build_forward_rejects(cfg):
    # YOLO12's A2C2f derives widths no yaml argument states; a rebuilt YOLOv3 yaml with its cut fails inside
    # the forward ultralytics runs while building (no layer index from parse_model): both keep those layers
    # whole instead of ending in ConfigError
    from prunekit.models.yolo_yaml import shape_mismatches

    model = load_yolo(cfg)
    res = prune_yolo(model, ratio=0.5, imgsz=IMGSZ)
    assert shape_mismatches(model, model.yaml) == []  # the stock trainer rebuilds exactly this model
    assert res.macs_ratio < 0.9 and res.plan.meta["ultralytics"]["kept_for_yaml"]


def test_stock_ultralytics_train_rebuilds_the_pruned_model(tmp_path, digits):
    """``YOLO("pruned.pt").train(data=...)`` with no prunekit trainer: the yaml in the checkpoint states the
    pruned widths, so ultralytics' own get_model builds the pruned network and loads every tensor."""
    model = _digits_model()
    res = prune_yolo(model, ratio=0.5, imgsz=IMGSZ)
    assert res.params_ratio < 0.6 and model.yaml["width_multiple"] == 1.0
    path = save_yolo(model, tmp_path / "pruned.pt", plans=res.plan)
    args = dict(data=str(digits), imgsz=IMGSZ, batch=4, workers=0, plots=False, device="cpu", verbose=False)
    yolo = ultralytics.YOLO(str(path))
    yolo.train(epochs=1, project=str(tmp_path), name="stock", **args)
    trained = yolo.trainer.model  # the module ultralytics built and trained
    assert [p.shape for p in trained.parameters()] == [p.shape for p in model.parameters()]
    saved = load_yolo(str(path))  # ultralytics' get_model on it: pruned shapes, all tensors loaded
    rebuilt = yolo.trainer.get_model(cfg=saved.yaml, weights=saved, verbose=False).state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in model.state_dict().items())
    tuned = load_yolo(str(yolo.trainer.best))
    assert sum(p.numel() for p in tuned.parameters()) == res.params_after


def test_freely_pruned_model_refuses_stock_train_loudly(tmp_path, digits):
    """Pruned with trainable=False the widths are not in the yaml: a stock train() must fail, not go dense."""
    from prunekit.models.yolo_yaml import NOT_IN_YAML

    model = _digits_model()
    res = prune_yolo(model, ratio=0.5, imgsz=IMGSZ, trainable=False)
    path = save_yolo(model, tmp_path / "free.pt", plans=res.plan)
    yolo = ultralytics.YOLO(str(path))
    x = example_inputs(model, IMGSZ)
    assert torch.equal(yolo.model(x)[0], model(x)[0])  # predicts like the pruned model
    with pytest.raises(KeyError, match=NOT_IN_YAML):
        yolo.train(data=str(digits), epochs=1, imgsz=IMGSZ, workers=0, device="cpu", project=str(tmp_path))


def test_prunekit_checkpoint_via_ultralytics_spec(tmp_path):
    model = load_model("ultralytics:yolov8n.yaml")
    assert example_inputs_for("ultralytics:yolov8n.yaml").shape == (1, 3, 640, 640)
    res = prune_yolo(model, ratio=0.3, imgsz=IMGSZ)
    pk_save(model, tmp_path / "ckpt", spec="ultralytics:yolov8n.yaml", plan=res.plan)
    loaded = pk_load(tmp_path / "ckpt")
    x = example_inputs(model, IMGSZ)
    assert torch.equal(loaded(x)[0], model(x)[0]) and loaded.model[2].c == model.model[2].c
    saved = save_yolo(model, tmp_path / "p.pt")
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask()  # a plain file's mode, not a temp file's 0o600
    assert sum(p.numel() for p in load_model(f"ultralytics:{saved}").parameters()) == res.params_after


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_yolo(str(tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match=r"NAME\.yaml or a local \.pt"):
        load_model("ultralytics:yolov8n.onnx")
    model = load_yolo("yolov8n.yaml")
    with pytest.raises(ConfigError, match="multiple of 32"):
        prune_yolo(model, ratio=0.3, imgsz=50)
    with pytest.raises(ConfigError, match=r"end in \.pt"):
        save_yolo(model, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_cli_yolo_prune_and_check(tmp_path):
    import json

    from typer.testing import CliRunner

    import prunekit.cli.yolo  # noqa: F401  (registers `prunekit yolo ...` on the shared app)
    from prunekit.cli import app

    runner = CliRunner()
    out, js = tmp_path / "pruned.pt", tmp_path / "prune.json"
    args = ["yolo", "prune", "ultralytics:yolov8n.yaml", "--ratio", "0.3", "--imgsz", "64"]
    result = runner.invoke(app, [*args, "--out", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    yolo = ultralytics.YOLO(str(out))
    assert sum(p.numel() for p in yolo.model.parameters()) == data["params_after"] < data["params_before"]
    checked = tmp_path / "check.json"
    result = runner.invoke(app, ["yolo", "check", "yolo11n.yaml", "--imgsz", "64", "--json", str(checked)])
    assert result.exit_code == 0 and json.loads(checked.read_text())["ok"] is True
    rows = [r[2] for part in ("backbone", "head") for r in ultralytics.YOLO(str(out)).model.yaml[part]]
    assert "Detect" in rows and not any(r.startswith("Prunekit") for r in rows)  # the default: stock names
    more = tmp_path / "more.pt"
    assert runner.invoke(app, [*args, "--prunekit-modules", "--out", str(more)]).exit_code == 0
    assert ultralytics.YOLO(str(more)).model.yaml["head"][-1][2] == "PrunekitDetect"
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "pruned.onnx")])
    assert bad.exit_code == 2 and "must name a .pt file" in bad.output
    assert not (tmp_path / "pruned.onnx").exists()


def test_prune_yolo_takes_a_config_and_builds_its_result_like_prune(monkeypatch):
    from _engine_helpers import built_results

    import prunekit as pk

    built = built_results(monkeypatch)
    base = load_yolo("yolov8n.yaml")  # random weights: both prune copies of one model
    by_config = prune_yolo(copy.deepcopy(base), pk.PruneConfig(ratio=0.5), imgsz=IMGSZ, trainable=False)
    by_keywords = prune_yolo(copy.deepcopy(base), ratio=0.5, imgsz=IMGSZ, trainable=False)
    assert [by_config.plan, by_keywords.plan] == built
    assert (
        by_config.plan.removals == by_keywords.plan.removals
        and by_config.plan.attrs == by_keywords.plan.attrs
    )
    generic = pk.prune(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)), torch.zeros(1, 4))
    assert set(by_config.to_dict()) == set(generic.to_dict())
    meta = by_config.plan.meta
    assert meta["ultralytics"]["trainable"] is False and meta["config"]["ratio"] == 0.5
    with pytest.warns(DeprecationWarning, match="positional ratio"):
        prune_yolo(load_yolo("yolov8n.yaml"), 0.3, imgsz=IMGSZ, trainable=False)


def _derived_attrs(model):
    """The widths a block's constructor derives and no tensor shows: C2f/PSA ``c``, Attention heads."""
    names = ("c", "num_heads", "key_dim", "head_dim")
    return {n: [getattr(m, a) for a in names if hasattr(m, a)] for n, m in model.named_modules()}


@pytest.mark.parametrize(
    ("cfg", "ratio"),
    [
        ("yolov8n.yaml", 0.3),
        ("yolov8n.yaml", 0.5),
        ("yolo11n.yaml", 0.3),
        ("yolo11n.yaml", 0.5),
        ("yolo26n.yaml", 0.7),
    ],
)
def test_yaml_prune_states_derived_widths_in_prunekit_rows_and_keeps_stock_modules(cfg, ratio):
    """Head hidden widths, C3k2 bottleneck widths, C2PSA's hidden width, widths that are not multiples of 8:
    the yaml states them through Prunekit<Layer> rows, so the yaml-trainable prune keeps no group whole and
    cuts as much as the free prune; the built modules are ultralytics' own and compute the same function.
    (YOLO26n at 0.7: a layer whose width is not a multiple of 8 is stated even where its own tensors
    rebuild, since its stock row would round the width up and the next layer's build fail.)"""
    from ultralytics.nn.modules import C2f, C3k2, Detect

    from prunekit.models.yolo_yaml import rebuild, shape_mismatches

    free = prune_yolo(load_yolo(cfg), ratio=ratio, imgsz=IMGSZ, trainable=False)
    model = load_yolo(cfg)
    res = prune_yolo(model, ratio=ratio, imgsz=IMGSZ, stock_modules=False)
    assert res.macs_ratio <= 1.10 * free.macs_ratio
    assert res.plan.meta["ultralytics"]["kept_for_yaml"] == []
    rows = model.yaml["backbone"] + model.yaml["head"]
    assert rows[-1][2] == "PrunekitDetect"
    assert shape_mismatches(model, model.yaml) == []
    built = rebuild(model, model.yaml)
    assert type(built.model[-1]) is Detect and type(built.model[2]) in (C2f, C3k2)  # stock classes pickle
    assert _derived_attrs(built) == _derived_attrs(model)
    built.load_state_dict(model.state_dict())
    x = example_inputs(model, IMGSZ)
    assert torch.equal(built.eval()(x)[0], model.eval()(x)[0])  # same function, not only same shapes
    stock = load_yolo(cfg)
    prune_yolo(stock, ratio=ratio, imgsz=IMGSZ)  # the default: ultralytics' modules only
    assert not any(r[2].startswith("Prunekit") for r in stock.yaml["backbone"] + stock.yaml["head"])
    assert shape_mismatches(stock, stock.yaml) == []


def test_stock_modules_yaml_cuts_derived_widths_to_what_ultralytics_builds():
    """A C3k2 bottleneck's inner width is half its block's, which ultralytics derives: a cut that halves the
    block re-cuts the bottleneck to the built width (its highest-scored units) instead of keeping the whole
    block, so asking for more pruning keeps fewer MACs (ratio 0.7 used to keep more than 0.5), and the stock
    yaml still rebuilds the pruned model as the same function."""
    from prunekit.models.yolo_yaml import rebuild, shape_mismatches

    macs = []
    for ratio in (0.5, 0.7, 0.9):
        model = load_yolo("yolo11n.yaml")
        res = prune_yolo(model, ratio=ratio, imgsz=IMGSZ)
        macs.append(res.macs_ratio)
        assert shape_mismatches(model, model.yaml) == []
    assert macs[0] > macs[1] > macs[2]
    facts = res.plan.meta["ultralytics"]
    inner = model.model[2].m[0].cv1.conv.out_channels
    assert inner == model.model[2].c // 2 and inner % 8  # derived by ultralytics, not a multiple of 8
    assert inner in facts["recut_for_yaml"].values()
    # C2PSA alone stays whole: its attention is kept whole, and its stock row ties every width to that
    assert {why.split(":")[0] for why in facts["kept_for_yaml_why"].values()} == {"layer 10 (C2PSA)"}
    built = rebuild(model, model.yaml)
    built.load_state_dict(model.state_dict())
    x = example_inputs(model, IMGSZ)
    assert torch.equal(built.eval()(x)[0], model.eval()(x)[0])


def test_prunekit_rows_load_without_prunekit_and_train_needs_its_names(tmp_path, digits):
    """A checkpoint whose yaml has Prunekit<Layer> rows loads and predicts in a process that never imports
    prunekit; train() there fails loudly on the unknown name (it never trains a dense model)."""
    import subprocess
    import sys

    model = _digits_model()
    prune_yolo(model, ratio=0.5, imgsz=IMGSZ, stock_modules=False)
    assert model.yaml["head"][-1][2] == "PrunekitDetect"
    path = save_yolo(model, tmp_path / "pruned.pt")
    code = (
        "import sys, torch, ultralytics\n"
        f"y = ultralytics.YOLO({str(path)!r})\n"
        f"y.model.eval()(torch.zeros(1, 3, {IMGSZ}, {IMGSZ}))\n"
        "assert 'prunekit' not in sys.modules\n"
        "try:\n"
        f"    y.train(data={str(digits)!r}, epochs=1, imgsz={IMGSZ}, workers=0, device='cpu', plots=False,"
        f" project={str(tmp_path)!r})\n"
        "except KeyError as err:\n"
        "    print('KEYERROR', err)\n"
    )
    env = {**__import__("os").environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "KEYERROR 'PrunekitDetect'" in proc.stdout


def test_a_pruned_save_keeps_the_input_dtype_and_a_yaml_build_its_seed(tmp_path):
    from prunekit.models.ultralytics import prune_to_file

    released = save_yolo(load_yolo("yolov8n.yaml"), tmp_path / "released.pt", half=True)  # fp16, as shipped
    small = prune_to_file(str(released), tmp_path / "pruned.pt", ratio=0.3, imgsz=IMGSZ)
    stored = torch.load(tmp_path / "pruned.pt", weights_only=False)["model"]
    assert {p.dtype for p in stored.parameters()} == {torch.float16}
    assert (tmp_path / "pruned.pt").stat().st_size < released.stat().st_size and small.params_ratio < 1
    prune_to_file(str(released), tmp_path / "fp32.pt", ratio=0.3, imgsz=IMGSZ, half=False)
    assert {p.dtype for p in torch.load(tmp_path / "fp32.pt", weights_only=False)["model"].parameters()} == {
        torch.float32
    }
    weights = []
    for run in range(2):
        prune_to_file("yolov8n.yaml", tmp_path / f"y{run}.pt", ratio=0.3, imgsz=IMGSZ, seed=0)
        weights.append(torch.load(tmp_path / f"y{run}.pt", weights_only=False)["model"].state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert {p.dtype for p in weights[0].values() if p.is_floating_point()} == {torch.float32}
