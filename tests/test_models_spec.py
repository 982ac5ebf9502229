"""prunekit.models.spec: every spec form loads the right module, and every bad spec is one clear error."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers_models import TINY_INPUT_SHAPE, TINY_PARAMS, TiedNet, TinyNet, tied_model, tiny_model
from safetensors.torch import save_model
from torch import nn

from prunekit.errors import ConfigError, ModelLoadError
from prunekit.models.spec import check_forward, example_inputs_for, load_model, parse_input_shape

TINY = f"{tiny_model.__module__}:tiny_model"
TIED = f"{tied_model.__module__}:tied_model"
HELPERS = tiny_model.__module__


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- torchvision:NAME ---------------------------------------------------------------------------------------


def test_torchvision_builds_random_weights_in_eval_mode():
    model = load_model("torchvision:resnet18")
    assert model.fc.out_features == 1000
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's documented count
    assert not model.training


def test_torchvision_detection_style_builder_gets_no_backbone_weights():
    # lraspp's builder defaults to downloading ImageNet backbone weights; there is no network here.
    model = load_model("torchvision:lraspp_mobilenet_v3_large")
    assert model.classifier.low_classifier.out_channels == 21


def test_unknown_torchvision_name_lists_close_names():
    with pytest.raises(ModelLoadError, match=r"unknown torchvision model 'resnet181'; close names: resnet18"):
        load_model("torchvision:resnet181")


def test_bare_name_is_not_guessed_but_hinted():
    with pytest.raises(ModelLoadError, match=r"cannot tell what model 'resnet18' is.*torchvision:resnet18\?"):
        load_model("resnet18")


# --- module.path:factory ------------------------------------------------------------------------------------


def test_factory_is_called_and_put_in_eval_mode():
    model = load_model(TINY)
    assert isinstance(model, TinyNet)
    assert not model.training
    assert _same_state(model, tiny_model())


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("not_a_module", "returned int, not an nn.Module"),
        ("NOT_CALLABLE", "is int, not a callable that returns an nn.Module"),
        ("MODULE_INSTANCE", "is an nn.Module instance, not a callable"),
        (
            "broken_factory",
            "calling '.*helpers_models:broken_factory' failed: RuntimeError: factory exploded",
        ),
        ("nope", "'.*helpers_models' has no attribute 'nope'"),
    ],
)
def test_bad_factory_specs(attr, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(f"{HELPERS}:{attr}")


def test_unimportable_factory_module():
    with pytest.raises(ModelLoadError, match=r"cannot import 'no_such_pkg.models'"):
        load_model("no_such_pkg.models:build")


def test_arch_is_refused_for_non_file_specs():
    with pytest.raises(ModelLoadError, match="--arch is only for state_dict files"):
        load_model(TINY, arch="torchvision:resnet18")


# --- files --------------------------------------------------------------------------------------------------


def test_missing_file():
    with pytest.raises(ModelLoadError, match=r"^no such file: .*nothere\.pt$"):
        load_model("some/dir/nothere.pt", arch=TINY)


def test_state_dict_needs_arch(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"w\.pt is a state_dict; pass --arch"):
        load_model(str(path))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_state_dict_with_arch_loads_the_weights(tmp_path, suffix):
    source = tiny_model()
    with torch.no_grad():
        source.fc.weight.mul_(3)  # differs from what the factory builds
    path = tmp_path / f"w{suffix}"
    torch.save(source.state_dict(), path)
    model = load_model(str(path), arch=TINY)
    assert _same_state(model, source)
    assert not _same_state(model, tiny_model())


def test_state_dict_with_wrong_arch_names_the_keys(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"does not fit --arch: missing keys bn1.weight"):
        load_model(str(path), arch="torchvision:resnet18")


def test_state_dict_with_wrong_shapes(tmp_path):
    state = tiny_model().state_dict()
    state["fc.weight"] = torch.zeros(5, 16)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"shape mismatch for fc.weight \(5, 16\) vs \(10, 16\)"):
        load_model(str(path), arch=TINY)


def test_arch_must_not_be_a_file(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"--arch must be torchvision:NAME or module.path:factory"):
        load_model(str(path), arch=str(path))


def test_checkpoint_dict_is_not_taken_for_a_state_dict(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": tiny_model().state_dict(), "epoch": 3}, path)
    with pytest.raises(ModelLoadError, match=r"non-tensor entries \(state_dict, epoch\)"):
        load_model(str(path), arch=TINY)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"junk\.pt is not a valid checkpoint"):
        load_model(str(path), arch=TINY)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda data: data[: len(data) // 2], "its archive is truncated or damaged"),
        (lambda data: bytes(range(256)) * 20, "neither a torch.save archive nor a pickle"),
        (lambda data: b"\x80\x02" + bytes(range(256)) * 4, "its pickle data is damaged"),
        (lambda data: b"", "it is empty"),
    ],
)
def test_a_damaged_file_is_not_a_valid_checkpoint_and_never_advises_unsafe_loading(tmp_path, damage, why):
    path = tmp_path / "w.pt"
    torch.save(tiny_model().state_dict(), path)
    path.write_bytes(damage(path.read_bytes()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's UserWarning suggesting weights_only=False must not show
        with pytest.raises(ModelLoadError) as err:
            load_model(str(path), arch=TINY)
    assert str(err.value) == f"{path} is not a valid checkpoint: " + str(err.value).split(": ", 1)[1]
    assert why in str(err.value) and "weights_only" not in str(err.value)


def test_seed_makes_the_random_init_reproducible_and_leaves_the_global_state_alone():
    state = torch.random.get_rng_state()
    a, b = (load_model("torchvision:resnet18", seed=0).conv1.weight for _ in range(2))
    c = load_model("torchvision:resnet18", seed=1).conv1.weight
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), state)
    d, e = (load_model(TINY, seed=3).fc.weight for _ in range(2))
    assert torch.equal(d, e)


def test_pickled_module_is_refused_without_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(tiny_model(), path)
    with pytest.raises(
        ModelLoadError,
        match=r"whole\.pt is a pickled module \(it imports (tests\.)?helpers_models\.TinyNet.*"
        r"pass --trust-pickle only if you trust its source",
    ):
        load_model(str(path))


def test_pickled_module_with_trust(tmp_path):
    source = tiny_model()
    path = tmp_path / "whole.pth"
    torch.save(source, path)
    model = load_model(str(path), trust_pickle=True)
    assert isinstance(model, TinyNet)
    assert _same_state(model, source)


def test_trusted_pickle_of_something_else(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save([tmp_path], path)  # a Path object needs real unpickling
    with pytest.raises(ModelLoadError, match=r"holds a list, not an nn.Module or a state_dict"):
        load_model(str(path), trust_pickle=True)


def test_safetensors_with_arch_and_tied_weights(tmp_path):
    source = tied_model()
    with torch.no_grad():
        source.hidden.weight.add_(1)
    path = tmp_path / "tied.safetensors"
    save_model(source, str(path))  # stores the shared tensor once
    model = load_model(str(path), arch=TIED)
    assert isinstance(model, TiedNet)
    assert model.head.weight is model.embed.weight
    assert _same_state(model, source)


def test_safetensors_needs_arch(tmp_path):
    path = tmp_path / "w.safetensors"
    save_model(tiny_model(), str(path))
    with pytest.raises(ModelLoadError, match="is a state_dict; pass --arch"):
        load_model(str(path))


def test_safetensors_with_wrong_arch(tmp_path):
    path = tmp_path / "w.safetensors"
    save_model(tiny_model(), str(path))
    with pytest.raises(ModelLoadError, match="does not fit --arch"):
        load_model(str(path), arch=TIED)


# --- input shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"), [("1,3,224,224", (1, 3, 224, 224)), (" 2, 16 ", (2, 16)), ("7", (7,))]
)
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,3,x", "0,3", "-1,3", "1,,3", "1.5,3"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(ConfigError, match="input shape must be positive integers"):
        parse_input_shape(text)


def test_default_shapes_for_torchvision_classifiers():
    assert example_inputs_for("torchvision:resnet18").shape == (1, 3, 224, 224)
    assert example_inputs_for("torchvision:inception_v3").shape == (1, 3, 299, 299)


@pytest.mark.parametrize("spec", ["torchvision:lraspp_mobilenet_v3_large", TINY, "weights.pt"])
def test_no_default_shape_asks_for_the_flag(spec):
    with pytest.raises(ConfigError, match=r"no default input shape .*; pass --input-shape"):
        example_inputs_for(spec)


def test_given_shape_is_used_and_inputs_are_reproducible():
    first = example_inputs_for(TINY, TINY_INPUT_SHAPE)
    assert first.shape == TINY_INPUT_SHAPE
    assert torch.equal(first, example_inputs_for(TINY, TINY_INPUT_SHAPE))
    assert first.std() > 0.5  # random, not zeros


def test_check_forward_explains_a_wrong_shape():
    model = tiny_model()
    check_forward(model, torch.zeros(TINY_INPUT_SHAPE))
    with pytest.raises(
        ConfigError, match=r"fails on an input of shape 1,3,8,8 \(RuntimeError: .*--input-shape"
    ):
        check_forward(model, torch.zeros(1, 3, 8, 8))


def test_tiny_model_param_counts_match_the_helper_table():
    model = tiny_model()
    for name, count in TINY_PARAMS.items():
        assert sum(p.numel() for p in getattr(model, name).parameters()) == count
