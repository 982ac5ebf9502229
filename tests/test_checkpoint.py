"""Checkpoints without pickle: safetensors + JSON; rebuild from spec + plans; bit-identical; clear errors."""

from __future__ import annotations

import hashlib
import json

import pytest
import safetensors.torch
import torch
from _engine_helpers import randomize
from helpers_models import tied_model
from torch import nn

import prunekit.deploy.checkpoint as ckpt
from prunekit.demo.model import build_model
from prunekit.deploy import read_info, save
from prunekit.errors import ConfigError, ModelLoadError, PlanError
from prunekit.measure import count_params
from prunekit.sparse import is_masked, sparsify
from prunekit.structured import prune

torch.set_num_threads(1)
DIGITS = "prunekit.demo.model:build_model"
X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def load(directory, **kwargs):
    """The checkpoints here name factories of prunekit and of the tests (module:factory): trusted."""
    return ckpt.load(directory, trust_code=True, **kwargs)


def pruned_digits(*ratios: float):
    """A DigitsCNN with weights unlike the factory's, pruned once per ratio, then 50 % masked."""
    model = randomize(build_model(0), seed=1).eval()
    plans = [prune(model, X, ratio=r, measure=False).plan for r in ratios]
    sparsify(model, 0.5)
    return model, plans


def test_pruned_and_masked_model_round_trips_bit_identically(tmp_path):
    model, plans = pruned_digits(0.5)
    want = model(X)
    info = save(model, tmp_path / "ck", spec=DIGITS, plan=plans[0], metadata={"note": "half"})
    assert is_masked(model.conv1)  # the user's model keeps its masks

    loaded = load(tmp_path / "ck")
    assert torch.equal(loaded(X), want)
    assert not loaded.training and not is_masked(loaded.conv1)
    assert (loaded.conv1.out_channels, loaded.fc1.out_features) == (model.conv1.out_channels, 64)
    assert count_params(loaded) == count_params(model)  # same total and the same zeros

    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["prunekit.json", "weights.safetensors"]
    meta = read_info(tmp_path / "ck")
    data = (tmp_path / "ck" / "weights.safetensors").read_bytes()
    assert meta["weights"]["sha256"] == hashlib.sha256(data).hexdigest() == info.sha256
    assert meta["spec"] == DIGITS and meta["metadata"] == {"note": "half"} and meta["torch_version"]
    assert meta["tensors"]["fc1.weight"] == {"shape": [64, 256], "dtype": "float32"}
    assert len(meta["plans"]) == 1 and meta["plans"][0]["removals"] == plans[0].to_dict()["removals"]
    assert info.params == count_params(model).total and info.tensors == len(meta["tensors"])


def test_two_plans_replay_in_order_without_torch_load(tmp_path, monkeypatch):
    model, plans = pruned_digits(0.5, 0.25)
    save(model, tmp_path / "ck", spec=DIGITS, plan=plans)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", refuse)
    loaded = load(tmp_path / "ck")
    assert torch.equal(loaded(X), model(X))
    assert loaded.conv2.out_channels == model.conv2.out_channels == 24


def test_torchvision_spec(tmp_path):
    model = randomize(ckpt.load_model("torchvision:resnet18"), seed=2).eval()
    x = torch.randn(1, 3, 32, 32)
    plan = prune(model, x, ratio=0.5, measure=False).plan
    save(model, tmp_path / "r18", spec="torchvision:resnet18", plan=plan)
    loaded = load(tmp_path / "r18")
    assert torch.equal(loaded(x), model(x))
    assert loaded.layer4[1].conv2.out_channels == 256


def test_tied_weights_are_stored_once_and_tied_again(tmp_path):
    model = randomize(tied_model(), seed=3).eval()
    tokens = torch.tensor([[1, 5, 7], [2, 11, 0]])
    save(model, tmp_path / "tied", spec="helpers_models:tied_model")
    stored = safetensors.torch.load_file(tmp_path / "tied" / "weights.safetensors")
    assert "embed.weight" in stored and "head.weight" not in stored
    loaded = load(tmp_path / "tied")
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded(tokens), model(tokens))

    model.head.weight = nn.Parameter(model.embed.weight.detach() + 1)  # untied: two tensors now
    save(model, tmp_path / "untied")
    with pytest.raises(ModelLoadError, match=r"embed.weight, head.weight are tied in the rebuilt model"):
        load(tmp_path / "untied", model=tied_model())


def test_without_spec_load_needs_the_architecture(tmp_path):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    save(model, tmp_path / "plain")
    with pytest.raises(ModelLoadError, match=r"saved without a model spec; .* load\(dir, model=\.\.\.\)"):
        load(tmp_path / "plain")
    fresh = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))  # float32: the saved float64 wins
    loaded = load(tmp_path / "plain", model=fresh)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert loaded[0].weight.dtype == torch.float64
    assert torch.equal(loaded(x), model(x))


def test_save_refuses_a_model_that_spec_and_plan_cannot_rebuild(tmp_path):
    model, _ = pruned_digits(0.5)
    with pytest.raises(ConfigError, match=r"the plan does not fit the architecture: conv1.weight"):
        save(model, tmp_path / "ck", spec=DIGITS)  # plan forgotten
    with pytest.raises(ConfigError, match=r"spec must be torchvision:NAME or module.path:factory"):
        save(model, tmp_path / "ck", spec="weights.pt")
    with pytest.raises(ConfigError, match=r"metadata must be JSON-serialisable"):
        save(model, tmp_path / "ck", metadata={"x": object()})
    with pytest.raises(ConfigError, match=r"plan must be a prunekit Plan"):
        save(model, tmp_path / "ck", spec=DIGITS, plan={"removals": {}})
    assert list(tmp_path.iterdir()) == []


def test_existing_checkpoint_is_replaced_other_directories_are_refused(tmp_path):
    first, second = randomize(build_model(0), seed=4).eval(), randomize(build_model(0), seed=5).eval()
    save(first, tmp_path / "ck", spec=DIGITS)
    save(second, tmp_path / "ck", spec=DIGITS)
    assert torch.equal(load(tmp_path / "ck")(X), second(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp or old directories left

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty and is not a prunekit checkpoint"):
        save(first, tmp_path / "data", spec=DIGITS)
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"


def test_failed_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    old = randomize(build_model(0), seed=6).eval()
    save(old, tmp_path / "ck", spec=DIGITS)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save(build_model(0), tmp_path / "ck", spec=DIGITS)
    with pytest.raises(OSError, match="No space"):
        save(build_model(0), tmp_path / "new", spec=DIGITS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before


def _edit_json(directory, **changes):
    path = directory / "prunekit.json"
    info = json.loads(path.read_text())
    info.update(changes)
    info["integrity"] = ckpt.integrity_hash(info)  # a consistent edit: what the later checks must catch
    path.write_text(json.dumps(info))


def _flip_byte(directory):
    path = directory / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage_with_matching_hash(directory):
    path = directory / "weights.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    weights = json.loads((directory / "prunekit.json").read_text())["weights"]
    _edit_json(directory, weights={**weights, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})


CORRUPTIONS = {
    "no directory": (lambda d: d.rename(d.with_name("gone")), ModelLoadError, r"no checkpoint directory"),
    "no json": (lambda d: (d / "prunekit.json").unlink(), ModelLoadError, r"prunekit.json is missing"),
    "truncated json": (
        lambda d: (d / "prunekit.json").write_text((d / "prunekit.json").read_text()[:50]),
        ModelLoadError,
        r"prunekit.json is corrupt",
    ),
    "newer format": (lambda d: _edit_json(d, version=99), ModelLoadError, r"format version 99"),
    "no weights": (
        lambda d: (d / "weights.safetensors").unlink(),
        ModelLoadError,
        r"weights.safetensors is missing",
    ),
    "flipped byte": (_flip_byte, ModelLoadError, r"does not match the sha256"),
    "not safetensors": (_garbage_with_matching_hash, ModelLoadError, r"cannot read .*weights.safetensors"),
    "other architecture": (
        lambda d: _edit_json(d, spec="helpers_models:tiny_model"),
        PlanError,
        r"plan 1 of .* does not fit the model built by 'helpers_models:tiny_model'",
    ),
    "plan dropped": (
        lambda d: _edit_json(d, plans=[]),
        ModelLoadError,
        r"the plan does not fit the architecture",
    ),
    "bad plan": (lambda d: _edit_json(d, plans=[{"version": 1}]), ModelLoadError, r"corrupt: malformed plan"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, plans = pruned_digits(0.5)
    root = tmp_path_factory.mktemp("saved")
    save(model, root / "ck", spec=DIGITS, plan=plans)
    return root / "ck"


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_checkpoints_give_one_line_errors(saved, tmp_path, case):
    damage, error, match = CORRUPTIONS[case]
    target = tmp_path / "ck"
    target.mkdir()
    for f in saved.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    assert torch.equal(load(target)(X), load(saved)(X))  # the copy is good before the damage
    damage(target)
    with pytest.raises(error, match=match) as info:
        load(target)
    assert "\n" not in str(info.value)


def test_sparse_checkpoint_is_smaller_and_loads_bit_identical(tmp_path):
    import prunekit as pk
    from prunekit.demo.model import build_model

    torch.manual_seed(0)
    model = build_model(1)
    pk.sparsify(model, 0.9, scope="global")
    pk.remove_masks(model)
    x = torch.randn(4, 1, 8, 8)
    dense = save(model, tmp_path / "dense", spec="prunekit.demo.model:build_model")
    sparse = save(model, tmp_path / "sparse", spec="prunekit.demo.model:build_model", sparse=True)
    assert (tmp_path / "sparse" / "weights.pksparse").is_file()
    assert not (tmp_path / "sparse" / "weights.safetensors").exists()
    assert sparse.weights_bytes * 4 < dense.weights_bytes
    assert torch.equal(load(tmp_path / "sparse")(x), model.eval()(x))


def test_corrupt_sparse_weights_give_one_clear_error(tmp_path):
    from prunekit.demo.model import build_model

    save(build_model(1), tmp_path / "c", spec="prunekit.demo.model:build_model", sparse=True)
    path = tmp_path / "c" / "weights.pksparse"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="sha256"):
        load(tmp_path / "c")


@pytest.mark.parametrize("order", ["layers-then-channels", "channels-then-layers"])
def test_layer_pruned_and_channel_pruned_resnet_round_trips(tmp_path, order):
    from prunekit.structured.layers import remove_blocks

    spec = "torchvision:resnet18"
    x = torch.randn(1, 3, 32, 32)
    model = randomize(ckpt.load_model(spec))
    plans = []
    if order == "layers-then-channels":
        remove_blocks(model, ["layer2.1", "layer3.1"], x)
        plans.append(prune(model, x, ratio=0.5).plan)
    else:
        plans.append(prune(model, x, ratio=0.5).plan)
        remove_blocks(model, ["layer2.1", "layer3.1"], x)
    save(model, tmp_path / "c", spec=spec, plan=plans)
    assert read_info(tmp_path / "c")["skipped_blocks"] == {"layer2.1": "BasicBlock", "layer3.1": "BasicBlock"}
    again = load(tmp_path / "c")
    assert type(again.layer2[1]).__name__ == "SkipBlock"
    assert torch.equal(again(x), model.eval()(x))


@pytest.mark.parametrize("spec", ["sys:exit", "os:abort", "code:interact", "tempfile:mkdtemp"])
def test_a_factory_spec_from_a_file_runs_only_with_trust_code(saved, tmp_path, spec):
    target = tmp_path / "ck"
    target.mkdir()
    for f in saved.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    _edit_json(target, spec=spec)
    with pytest.raises(ModelLoadError, match=r"prunekit.load\(dir, trust_code=True\) \(CLI: --trust-code\)"):
        ckpt.load(target)


def test_registered_family_specs_need_no_trust(tmp_path):
    model = randomize(ckpt.load_model("torchvision:squeezenet1_0"), seed=2).eval()
    save(model, tmp_path / "tv", spec="torchvision:squeezenet1_0")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(ckpt.load(tmp_path / "tv")(x), model(x))
    assert not ckpt.spec_runs_code("torchvision:squeezenet1_0") and ckpt.spec_runs_code(DIGITS)


def test_a_hand_edited_description_is_refused(saved, tmp_path):
    target = tmp_path / "ck"
    target.mkdir()
    for f in saved.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    info = json.loads((target / "prunekit.json").read_text())
    info["plans"][0]["removals"] = {}  # not re-sealed
    (target / "prunekit.json").write_text(json.dumps(info))
    with pytest.raises(ModelLoadError, match=r"does not match its integrity hash"):
        load(target)


def test_plan_attrs_outside_the_allow_list_are_refused_even_when_sealed(saved, tmp_path):
    target = tmp_path / "ck"
    target.mkdir()
    for f in saved.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    info = json.loads((target / "prunekit.json").read_text())
    info["plans"][0]["attrs"]["conv1"]["padding_mode"] = ["zeros", "circular"]
    _edit_json(target, plans=info["plans"])
    with pytest.raises(PlanError, match=r"may not change conv1.padding_mode \(Conv2d\)"):
        load(target)


def test_load_into_a_given_model_leaves_it_untouched_when_a_later_plan_fails(tmp_path):
    model, plans = pruned_digits(0.5, 0.5)
    save(model, tmp_path / "ck", spec=DIGITS, plan=plans)
    info = json.loads((tmp_path / "ck" / "prunekit.json").read_text())
    name = next(iter(info["plans"][1]["signature"]))
    info["plans"][1]["signature"][name][0] += 1  # plan 2 no longer fits what plan 1 leaves
    _edit_json(tmp_path / "ck", plans=info["plans"])
    given = build_model(0)
    before = {n: (t, t.clone()) for n, t in given.state_dict(keep_vars=True).items()}
    with pytest.raises(PlanError, match=r"plan 2 of"):
        ckpt.load(tmp_path / "ck", model=given)
    after = given.state_dict(keep_vars=True)
    assert all(after[n] is t and torch.equal(t, copy) for n, (t, copy) in before.items())
    assert given.conv1.out_channels == 32
    given(X)


def test_a_plan_missing_size_attributes_still_loads_with_true_attributes(tmp_path):
    """Plans from older prunekit versions lack the size attributes of PReLU and tied holders."""
    from prunekit.structured.consistency import mismatches

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    res = prune(net, x, ratio=0.5)
    assert res.plan.attrs["1"] == {"num_parameters": [8, 4]}
    with pytest.warns(UserWarning):  # no spec: load needs model=
        save(net, tmp_path / "ck", plan=res.plan)
    info = json.loads((tmp_path / "ck" / "prunekit.json").read_text())
    del info["plans"][0]["attrs"]["1"]  # as an older prunekit wrote it
    _edit_json(tmp_path / "ck", plans=info["plans"])
    again = load(tmp_path / "ck", model=nn.Sequential(nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 4, 1)))
    assert again[1].num_parameters == 4 and mismatches(again) == []
    assert torch.equal(again(x), net(x))
