"""`prunekit prune` and `prunekit check`: real cuts on disk, exact reloads, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_models import tiny_model
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.deploy import load

TINY = f"{tiny_model.__module__}:tiny_model"
SHAPE = "2,4,8,8"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_prune_writes_a_checkpoint_that_reloads_to_the_pruned_widths(tmp_path):
    out, js = tmp_path / "ckpt", tmp_path / "p.json"
    result = invoke("prune", TINY, "--ratio", "0.5", "--input-shape", SHAPE, "--out", out, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    model = load(out, trust_code=True)
    # conv1 (8 channels) and conv2 (16) lose half; fc keeps its 10 outputs (model outputs keep shapes)
    assert (model.conv1.out_channels, model.bn.num_features, model.conv2.out_channels) == (4, 4, 8)
    assert model.fc.in_features == 8 and model.fc.out_features == 10
    assert data["params_after"] == sum(p.numel() for p in model.parameters())
    assert data["params_before"] == sum(p.numel() for p in tiny_model().parameters())
    assert data["checkpoint"]["spec"] == TINY


def test_prune_a_checkpoint_again_stacks_the_plans(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert invoke("prune", TINY, "--ratio", "0.5", "--input-shape", SHAPE, "--out", first).exit_code == 0
    # the input shape comes from the checkpoint
    refused = invoke("prune", first, "--ratio", "0.5", "--out", second)  # its spec is a module:factory
    assert refused.exit_code == 2 and "--trust-code" in refused.output and not second.exists()
    result = invoke("prune", first, "--ratio", "0.5", "--out", second, "--trust-code")
    assert result.exit_code == 0, result.output
    again = load(second, trust_code=True)
    assert again.conv2.out_channels == 4
    x = torch.randn(2, 4, 8, 8)
    assert again(x).shape == (2, 10)


def test_check_reports_exactness_and_pins_the_output_layer(tmp_path):
    js = tmp_path / "c.json"
    result = invoke("check", TINY, "--ratio", "0.5", "--input-shape", SHAPE, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["ok"] is True and data["max_abs_err"] < 1e-4
    assert data["n_groups"] == 4 and data["n_prunable_groups"] == 2  # input channels, outputs pinned
    assert any("fc.weight[0]" in m for row in data["pinned"] for m in row["members"])
    assert 0 < data["macs_ratio"] < 0.5


def test_check_leaves_a_state_dict_file_untouched(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_model().state_dict(), path)
    before = path.read_bytes()
    result = invoke("check", path, "--arch", TINY, "--input-shape", SHAPE)
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (("--ratio", "1.5"), "ratio"),
        (("--scope", "everywhere"), "scope"),
        (("--criterion", "vibes"), "unknown criterion"),
        (("--input-shape", "2,x"), "input shape"),
        (("--input-shape", "2,3,8,8"), "--input-shape"),
    ],
)
def test_bad_prune_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "never"
    extra = () if "--input-shape" in args else ("--input-shape", SHAPE)
    result = invoke("prune", TINY, "--out", out, *extra, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    assert not out.exists()


def test_prune_to_a_macs_target_meets_it(tmp_path):
    js = tmp_path / "t.json"
    args = ("prune", TINY, "--target-macs", "0.5", "--input-shape", SHAPE, "--out", tmp_path / "t")
    result = invoke(*args, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["target"]["requested"] == 0.5 and data["target"]["met"] is True
    assert 0.4 < data["macs_ratio"] <= 0.5
    assert load(tmp_path / "t", trust_code=True)(torch.randn(2, 4, 8, 8)).shape == (2, 10)


def test_two_targets_are_refused(tmp_path):
    args = ("prune", TINY, "--target-macs", "0.5", "--target-params", "0.5", "--input-shape", SHAPE)
    result = invoke(*args, "--out", tmp_path / "never")
    assert result.exit_code == 2 and "give one target option" in result.output
    assert not (tmp_path / "never").exists()


def test_recipe_drives_prune_and_the_checkpoint_replays_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: structured\ncriterion: l1\nratio: 0.5\nscope: local\n")
    js = tmp_path / "r.json"
    args = ("prune", TINY, "--recipe", recipe, "--input-shape", SHAPE, "--out", tmp_path / "r", "--json", js)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert json.loads(js.read_text())["recipe"]["criterion"] == "l1"
    assert load(tmp_path / "r", trust_code=True).conv2.out_channels == 8


def test_bad_recipe_key_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: structured\nratoi: 0.5\n")
    result = invoke("prune", TINY, "--recipe", recipe, "--input-shape", SHAPE, "--out", tmp_path / "never")
    assert result.exit_code == 2 and "ratoi" in result.output, result.output
    assert not (tmp_path / "never").exists()


def test_sensitivity_command_reports_every_prunable_group(tmp_path):
    js = tmp_path / "s.json"
    result = invoke("sensitivity", TINY, "--ratios", "0.5", "--input-shape", SHAPE, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert len(data["curves"]) == 2  # conv1/bn and conv2 groups; inputs and logits are pinned
    assert all(0.0 < point <= 1.0 + 1e-9 for c in data["curves"] for point in c["metrics"])


def test_data_driven_criteria_from_the_shell(tmp_path):
    torch.manual_seed(0)
    torch.save({"x": torch.randn(16, 4, 8, 8), "y": torch.randint(0, 10, (16,))}, tmp_path / "d.pt")
    js = tmp_path / "p.json"
    args = ("prune", TINY, "--criterion", "taylor", "--data", tmp_path / "d.pt", "--input-shape", SHAPE)
    result = invoke(*args, "--out", tmp_path / "t", "--json", js)
    assert result.exit_code == 0, result.output
    assert json.loads(js.read_text())["plan"]["meta"]["criterion"] == "taylor"
    sd = tmp_path / "w.pt"
    args = ("sparsify", TINY, "--criterion", "wanda", "--data", tmp_path / "d.pt", "--sparsity", "0.5")
    assert invoke(*args, "--out", sd).exit_code == 0
    weights = torch.load(sd, weights_only=True)
    assert int((weights["conv2.weight"] == 0).sum()) == weights["conv2.weight"].numel() // 2


def test_data_driven_criterion_without_data_is_one_line(tmp_path):
    result = invoke("prune", TINY, "--criterion", "taylor", "--input-shape", SHAPE, "--out", tmp_path / "n")
    assert result.exit_code == 2 and "data-driven" in result.output
    assert not (tmp_path / "n").exists()


def test_hf_spec_from_a_config_file_prunes_saves_and_reloads(tmp_path):
    pytest.importorskip("transformers")
    config = tmp_path / "bert.json"
    config.write_text(
        '{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, '
        '"intermediate_size": 64, "vocab_size": 100}'
    )
    spec, out, js = f"hf:{config}", tmp_path / "b", tmp_path / "b.json"
    result = invoke("check", spec, "--ratio", "0.5", "--json", js)
    assert result.exit_code == 0, result.output
    assert json.loads(js.read_text())["ok"] is True
    assert invoke("prune", spec, "--ratio", "0.5", "--input-shape", "2,6", "--out", out).exit_code == 0
    model = load(out)
    assert model.config.num_attention_heads == 2 and model.config.intermediate_size == 32
    result = invoke("load", out, "--json", js)
    assert result.exit_code == 0 and json.loads(js.read_text())["output_shapes"][0] == [2, 6, 32]
    bad = invoke("check", spec, "--input-shape", "1,3,8,8")
    assert bad.exit_code == 2 and "BATCH,SEQ" in bad.output


def test_prune_an_ultralytics_model_to_a_pt_file_writes_ultralytics_format(tmp_path):
    ultralytics = pytest.importorskip("ultralytics")
    out = tmp_path / "y.pt"
    result = invoke("prune", "yolov8n.yaml", "--ratio", "0.3", "--out", out)
    assert result.exit_code == 0, result.output
    pruned = ultralytics.YOLO(str(out)).model
    dense = ultralytics.YOLO("yolov8n.yaml").model
    n_pruned, n_dense = (sum(p.numel() for p in m.parameters()) for m in (pruned, dense))
    assert n_pruned < 0.7 * n_dense
    assert pruned.model[-1].nc == dense.model[-1].nc  # classes untouched


def test_check_compare_at_a_submodule_and_a_bad_name_is_one_line_exit_2(tmp_path):
    js = tmp_path / "c.json"
    result = invoke("check", TINY, "--input-shape", SHAPE, "--compare-at", "fc", "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["ok"] is True and data["compared_at"] == "fc"
    result = invoke("check", TINY, "--input-shape", SHAPE, "--compare-at", "nohead")
    assert result.exit_code == 2 and "no submodule 'nohead'" in result.output
    assert result.output.strip().count("\n") == 0


def test_check_says_so_when_every_compared_output_is_empty(tmp_path):
    # an untrained RetinaNet keeps no box above its 0.05 score threshold: "exact" would prove nothing
    js = tmp_path / "c.json"
    result = invoke("check", "torchvision:retinanet_resnet50_fpn", "--input-shape", "1,3,64,64", "--json", js)
    assert result.exit_code == 0, result.output
    assert "every compared output was empty" in result.output and json.loads(js.read_text())["n_values"] == 0
    result = invoke("check", TINY, "--input-shape", SHAPE, "--json", js)
    assert "was empty" not in result.output and json.loads(js.read_text())["n_values"] > 0


def test_prune_to_a_target_is_global_by_default_and_honours_scope_local(tmp_path):
    runs = {}
    for scope in (None, "local"):
        js = tmp_path / f"{scope}.json"
        extra = ("--scope", scope) if scope else ()
        args = ("prune", TINY, "--target-macs", "0.5", "--input-shape", SHAPE, *extra)
        result = invoke(*args, "--out", tmp_path / f"{scope}", "--json", js)
        assert result.exit_code == 0, result.output
        runs[scope] = json.loads(js.read_text())["target"]["scope"]
    assert runs == {None: "global", "local": "local"}


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_prune_output_under_a_regular_file_is_one_line_before_any_work(tmp_path, option):
    blocker = tmp_path / "somefile"
    blocker.write_text("keep me")
    outputs = {"--out": tmp_path / "ckpt", "--json": tmp_path / "p.json"}
    outputs[option] = blocker / "x.json"
    args = ("prune", TINY, "--input-shape", SHAPE, "--out", outputs["--out"], "--json", outputs["--json"])
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert (
        result.stderr
        == f"error: cannot write {option} {blocker / 'x.json'}: {blocker} is a file, not a directory\n"
    )
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["somefile"]


@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        ("prune", "p.pt", "--out {out} names a checkpoint directory, but .pt is a file suffix"),
        (
            "save",
            "s.safetensors",
            "--out {out} names a checkpoint directory, but .safetensors is a file suffix",
        ),
        ("prune", "nope/deeper/s", "cannot write --out {out}: {parent} does not exist; create it first"),
        ("sparsify", "nope/s.pt", "cannot write --out {out}: {parent} does not exist; create it first"),
    ],
)
def test_a_surprising_out_is_refused_in_one_line_and_nothing_is_made(tmp_path, command, out, message):
    out = tmp_path / out
    extra = ("--sparsity", "0.5") if command == "sparsify" else ()
    result = invoke(command, TINY, "--input-shape", SHAPE, *extra, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: " + message.format(out=out, parent=out.parent))
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_seed_fixes_a_spec_s_random_init_and_is_recorded(tmp_path):
    hashes, seeds = [], []
    for run, seed in enumerate(("0", "0", "1")):
        out, js = tmp_path / f"r{run}", tmp_path / f"r{run}.json"
        args = ("save", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--out", out, "--json", js)
        assert invoke(*args, "--seed", seed).exit_code == 0
        hashes.append((out / "weights.safetensors").read_bytes())
        seeds.append(json.loads(js.read_text())["seed"])
    assert hashes[0] == hashes[1] != hashes[2] and seeds == [0, 0, 1]
    js = tmp_path / "p.json"
    args = ("prune", TINY, "--input-shape", SHAPE, "--out", tmp_path / "p", "--json", js)
    assert invoke(*args).exit_code == 0 and json.loads(js.read_text())["seed"] == 0


def _commands(group, prefix=()):
    """Every leaf command of the CLI as (its words, the click command)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_that_builds_a_model_takes_a_seed():
    import typer

    builds = {
        words: command
        for words, command in _commands(typer.main.get_command(app))
        if any(param.metavar == "MODEL" for param in command.params)
    }
    assert {("prune",), ("accelerate",), ("export",), ("yolo", "check")} <= set(builds)
    missing = [" ".join(w) for w, command in builds.items() if "seed" not in {p.name for p in command.params}]
    assert missing == []


SEEDED = "torchvision:squeezenet1_1"  # a small spec built with a random initialisation


def test_accelerate_seeds_the_random_init_and_records_it(tmp_path):
    weights, seeds = [], []
    for run, seed in enumerate(("0", "0", "1")):
        out, js = tmp_path / f"a{run}", tmp_path / f"a{run}.json"
        args = ("accelerate", SEEDED, "--input-shape", "1,3,64,64", "--runs", "1", "--out", out, "--json", js)
        result = invoke(*args, "--seed", seed)
        assert result.exit_code == 0, result.output
        weights.append((out / "weights.safetensors").read_bytes())
        seeds.append(json.loads(js.read_text())["seed"])
    assert weights[0] == weights[1] != weights[2] and seeds == [0, 0, 1]


def test_export_format_seeds_the_random_init_and_records_it(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    weights, seeds = [], []
    for run, seed in enumerate(("0", "0", "1")):
        out, js = tmp_path / f"e{run}.onnx", tmp_path / f"e{run}.json"
        shape = ("--input-shape", "1,3,64,64")
        args = ("export", SEEDED, *shape, "--format", "onnx", "--out", out, "--json", js)
        result = invoke(*args, "--seed", seed)
        assert result.exit_code == 0, result.output
        graph = onnx.load(out).graph
        weights.append(sorted(numpy_helper.to_array(t).tobytes() for t in graph.initializer))
        seeds.append(json.loads(js.read_text())["seed"])
    assert weights[0] == weights[1] != weights[2] and seeds == [0, 0, 1]
