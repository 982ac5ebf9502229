"""prunekit.sparse: exact unstructured / N:M / block masks, mask removal, the sparsity report, bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError
from prunekit.sparse import (
    Mask,
    apply_masks,
    get_mask,
    is_masked,
    masks_from_scores,
    remove_masks,
    sparsify,
    sparsity_report,
)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, groups=2),
            nn.ReLU(),
        )
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.fc1 = nn.Linear(8, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.features(x)).mean(dim=(2, 3))
        return self.fc(torch.relu(self.fc1(x)))


LAYERS = ["features.0", "features.3", "up", "fc1", "fc"]


def convnet(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet().eval()


def rounded(sparsity: float, n: int) -> int:
    return math.floor(sparsity * n + 0.5)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def channels_last(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Weight-shaped tensor -> (out, *kernel, in): the grouping prunekit documents for N:M and blocks."""
    if isinstance(module, nn.Linear):
        return t
    if isinstance(module, nn.ConvTranspose2d):
        return t.movedim(0, -1)
    return t.movedim(1, -1)


# ---------------------------------------------------------------- unstructured


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.3, 0.5, 0.77, 0.95])
def test_local_prunes_exactly_round_sparsity_times_numel_in_every_layer(sparsity: float) -> None:
    model = convnet()
    dense = {name: model.get_submodule(name).weight.detach().clone() for name in LAYERS}
    result = sparsify(model, sparsity)
    assert list(result.layers) == LAYERS
    for name in LAYERS:
        weight, w0 = model.get_submodule(name).weight, dense[name]
        expected = rounded(sparsity, w0.numel())
        assert result.layers[name].pruned == expected
        assert int((get_mask(model.get_submodule(name)) == 0).sum()) == expected
        assert int((weight == 0).sum()) == expected
        pruned = weight == 0
        if 0 < expected < w0.numel():  # the pruned weights are the smallest ones
            assert w0[pruned].abs().max() <= w0[~pruned].abs().min()
        assert torch.equal(weight[~pruned], w0[~pruned])


@pytest.mark.parametrize("sparsity", [0.25, 0.6, 0.9])
def test_global_prunes_exactly_round_sparsity_times_total(sparsity: float) -> None:
    model = convnet()
    dense = torch.cat([model.get_submodule(n).weight.detach().flatten().clone() for n in LAYERS])
    result = sparsify(model, sparsity, scope="global")
    now = torch.cat([model.get_submodule(n).weight.detach().flatten() for n in LAYERS])
    expected = rounded(sparsity, dense.numel())
    assert int((now == 0).sum()) == expected == result.pruned
    assert result.numel == dense.numel()
    assert result.sparsity == pytest.approx(expected / dense.numel())
    pruned = now == 0
    assert dense[pruned].abs().max() <= dense[~pruned].abs().min()


def test_local_and_global_differ_on_unequal_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[0].weight.mul_(0.01)  # big layer, small weights
        model[2].weight.mul_(10.0)  # small layer, large weights
    local_model, global_model = copy.deepcopy(model), copy.deepcopy(model)
    local = sparsify(local_model, 0.5)
    glob = sparsify(global_model, 0.5, scope="global")
    assert local.layers["0"].pruned == 2048 and local.layers["2"].pruned == 128
    assert glob.pruned == rounded(0.5, 64 * 64 + 64 * 4) == 2176
    assert glob.layers["0"].sparsity > 0.52  # global takes more from the low-magnitude big layer...
    assert glob.layers["2"].pruned == 0  # ...and none from the small high-magnitude one
    assert not torch.equal(local_model[2].weight, global_model[2].weight)


def test_ties_are_broken_deterministically_with_exact_counts() -> None:
    model = nn.Sequential(nn.Linear(7, 5), nn.Linear(5, 3))
    with torch.no_grad():
        for layer in model:
            layer.weight.fill_(0.5)
    result = sparsify(copy.deepcopy(model), 0.4)
    assert [layer.pruned for layer in result.layers.values()] == [14, 6]
    again = copy.deepcopy(model)
    sparsify(again, 0.4, scope="global")
    assert int(sum((layer.weight == 0).sum() for layer in again)) == rounded(0.4, 35 + 15) == 20


def test_random_criterion_is_seeded_and_exact() -> None:
    masks = []
    for seed in (3, 3, 4):
        model = convnet()
        result = sparsify(model, 0.5, criterion="random", seed=seed)
        assert result.layers["fc1"].pruned == 128
        masks.append(torch.cat([get_mask(model.get_submodule(n)).flatten() for n in LAYERS]))
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])
    magnitude = convnet()
    sparsify(magnitude, 0.5)
    assert not torch.equal(
        masks[0], torch.cat([get_mask(magnitude.get_submodule(n)).flatten() for n in LAYERS])
    )


# ---------------------------------------------------------------- N:M and blocks


def nm_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.ModuleDict(
        {
            "lin": nn.Linear(16, 8),
            "conv": nn.Conv2d(8, 6, 3),
            "conv1d": nn.Conv1d(16, 4, 5),
            "deconv": nn.ConvTranspose2d(8, 4, 3),
        }
    )


@pytest.mark.parametrize(("pattern", "n", "m"), [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_nm_keeps_the_n_largest_in_every_group_of_m_input_channels(pattern: str, n: int, m: int) -> None:
    model = nm_model()
    dense = {name: layer.weight.detach().clone() for name, layer in model.items()}
    result = sparsify(model, None, pattern=pattern)
    assert result.requested == pytest.approx(1 - n / m)
    for name, layer in model.items():
        groups = channels_last(layer, layer.weight.detach()).reshape(-1, m)
        groups0 = channels_last(layer, dense[name]).reshape(-1, m)
        kept = groups != 0
        assert torch.all(kept.sum(dim=1) == n), name  # the invariant, in every block
        pruned_max = groups0.abs().masked_fill(kept, -1).amax(dim=1)
        kept_min = groups0.abs().masked_fill(~kept, float("inf")).amin(dim=1)
        assert torch.all(kept_min >= pruned_max), name
        assert result.layers[name].sparsity == pytest.approx(1 - n / m)


def test_nm_accepts_its_own_sparsity_value() -> None:
    model = nm_model()
    assert sparsify(model, 0.5, pattern="2:4").sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_block_pattern_prunes_whole_blocks(scope: str) -> None:
    torch.manual_seed(2)
    model = nn.ModuleDict({"lin": nn.Linear(32, 16), "conv": nn.Conv2d(8, 8, 2)})  # 16x32 and 8x32
    dense = {name: layer.weight.detach().clone() for name, layer in model.items()}
    result = sparsify(model, 0.4, pattern="block:4x4", scope=scope)
    total_blocks, total_pruned, l1 = 0, 0, {}
    for name, layer in model.items():
        out = layer.weight.shape[0]
        tiles = channels_last(layer, layer.weight.detach()).reshape(out // 4, 4, -1, 4).transpose(1, 2)
        zero_per_block = (tiles == 0).sum(dim=(2, 3))
        assert torch.all((zero_per_block == 0) | (zero_per_block == 16)), name
        pruned = zero_per_block == 16
        if scope == "local":
            assert int(pruned.sum()) == rounded(0.4, pruned.numel()), name
        total_blocks += pruned.numel()
        total_pruned += int(pruned.sum())
        tiles0 = channels_last(layer, dense[name]).reshape(out // 4, 4, -1, 4).transpose(1, 2)
        l1[name] = (tiles0.abs().sum(dim=(2, 3)), pruned)
        assert result.layers[name].pruned == 16 * int(pruned.sum())
    assert total_pruned == rounded(0.4, total_blocks)  # 16 + 8 blocks: holds for both scopes here
    if scope == "global":  # one ranking of block L1 over both layers
        scores = torch.cat([s.flatten() for s, _ in l1.values()])
        pruned = torch.cat([p.flatten() for _, p in l1.values()])
        assert scores[pruned].max() <= scores[~pruned].min()


# ---------------------------------------------------------------- masks: combine, train, remove


def test_sparsify_twice_combines_masks_and_never_stacks_parametrizations() -> None:
    model = convnet()
    sparsify(model, 0.5)
    first = {n: get_mask(model.get_submodule(n)).clone() for n in LAYERS}
    result = sparsify(model, 0.7)
    for name in LAYERS:
        layer = model.get_submodule(name)
        assert len(layer.parametrizations.weight) == 1
        mask = get_mask(layer)
        assert int((mask == 0).sum()) == rounded(0.7, mask.numel()) == result.layers[name].pruned
        assert torch.all(mask <= first[name])  # every old zero stays zero
    second = {n: get_mask(model.get_submodule(n)).clone() for n in LAYERS}
    result = sparsify(model, 0.3)  # masks only grow: a lower request keeps what is there
    assert all(torch.equal(get_mask(model.get_submodule(n)), second[n]) for n in LAYERS)
    assert result.layers["fc1"].pruned == rounded(0.7, 256)


def test_nm_on_top_of_unstructured_keeps_at_most_n_per_group() -> None:
    model = nm_model()
    sparsify(model, 0.6)
    sparsify(model, None, pattern="2:4")
    for layer in model.values():
        groups = channels_last(layer, layer.weight.detach()).reshape(-1, 4)
        assert torch.all((groups != 0).sum(dim=1) <= 2)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=0.01),
    ],
)
def test_training_keeps_masked_weights_at_zero(make_opt) -> None:
    model = convnet().train()
    originals = {n: model.get_submodule(n).weight for n in LAYERS}
    opt = make_opt(model.parameters())  # made BEFORE sparsify: the masked layers keep these Parameters
    sparsify(model, 0.6)
    masks = {n: get_mask(model.get_submodule(n)).clone() for n in LAYERS}
    kept_before = {n: model.get_submodule(n).weight.detach().clone() for n in LAYERS}
    torch.manual_seed(0)
    x, y = torch.randn(8, 4, 6, 6), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name in LAYERS:
        layer = model.get_submodule(name)
        assert layer.parametrizations.weight.original is originals[name]
        assert layer.parametrizations.weight.original.grad[masks[name] == 0].abs().max() == 0
        weight = layer.weight.detach()
        assert torch.all(weight[masks[name] == 0] == 0)
        assert not torch.equal(weight[masks[name] == 1], kept_before[name][masks[name] == 1])  # it trained


@pytest.mark.parametrize(
    ("kwargs"),
    [{"sparsity": 0.6}, {"sparsity": 0.8, "scope": "global"}, {"sparsity": 0.5, "pattern": "block:2x4"}],
)
def test_remove_masks_keeps_outputs_bit_identical(kwargs: dict) -> None:
    model = convnet()
    dense_keys = list(model.state_dict())
    params = {n: model.get_submodule(n).weight for n in LAYERS}
    sparsify(model, **kwargs)
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        before = model(x)
    zeros = {n: int((model.get_submodule(n).weight == 0).sum()) for n in LAYERS}
    assert remove_masks(model) is model
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert type(model.fc) is nn.Linear and type(model.features[0]) is nn.Conv2d
    assert list(model.state_dict()) == dense_keys
    for name in LAYERS:
        layer = model.get_submodule(name)
        assert layer.weight is params[name] and isinstance(layer.weight, nn.Parameter)
        assert int((layer.weight == 0).sum()) == zeros[name] > 0


def test_remove_masks_without_masks_warns_and_changes_nothing() -> None:
    model = convnet()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="no prunekit masks"):
        assert remove_masks(model) is model
    assert_unchanged(model, before)


def test_biases_and_norm_weights_stay_dense() -> None:
    model = convnet()
    before = snapshot(model)
    sparsify(model, 0.9, scope="global")
    after = model.state_dict()
    dense = [k for k in before if k.endswith("bias") or k.startswith("features.1.")]
    assert len(dense) == 10
    assert all(torch.equal(after[k], before[k]) for k in dense)
    assert not is_masked(model.features[1])


# ---------------------------------------------------------------- selection


def test_exclude_final_layer_by_name_and_include_globs() -> None:
    model = convnet()
    result = sparsify(model, 0.5, exclude=["fc"])
    assert "fc" not in result.layers and not is_masked(model.fc) and is_masked(model.fc1)
    model = convnet()
    assert list(sparsify(model, 0.5, include=["features.*"]).layers) == ["features.0", "features.3"]
    model = convnet()
    assert list(sparsify(model, 0.5, include="features").layers) == ["features.0", "features.3"]
    model = convnet()
    result = sparsify(model, 0.5, include=[model.fc1, "up"], exclude=model.up)
    assert list(result.layers) == ["fc1"]


def test_custom_scores_drive_the_masks() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    w0 = model[0].weight.detach().clone()
    keep = masks_from_scores(model, {"0": -w0.abs()}, 0.25)  # prune the LARGEST quarter
    assert keep["0"].dtype == torch.bool and int((~keep["0"]).sum()) == 16
    apply_masks(model, keep)
    pruned = model[0].weight == 0
    assert w0[pruned].abs().min() >= w0[~pruned].abs().max()
    with pytest.raises(ConfigError, match="NaN"):
        masks_from_scores(model, {"0": torch.full((8, 8), float("nan"))}, 0.5)


# ---------------------------------------------------------------- report


def test_sparsity_report_lines_dict_and_table() -> None:
    model = convnet()
    with torch.no_grad():
        model.fc.weight[0, :5] = 0.0  # zeros that are not masked: the report counts them
    result = sparsify(model, 0.3, exclude=["fc"])
    report = sparsity_report(model)
    assert [row.name for row in report.rows] == LAYERS
    fc1 = rounded(0.3, 256)
    lines = str(report).splitlines()
    assert lines[3] == f"Sparsity in fc1.weight: {100 * fc1 / 256:.2f}%"
    assert lines[4] == "Sparsity in fc.weight: 1.56%"  # 5 / 320, unmasked
    total = sum(model.get_submodule(n).weight.numel() for n in LAYERS)
    zeros = result.pruned + 5
    assert report.zeros == zeros and report.numel == total
    assert lines[-1] == f"Global sparsity: {100 * zeros / total:.2f}%"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["layers"]["fc"] == {
        "kind": "Linear",
        "shape": [10, 32],
        "numel": 320,
        "zeros": 5,
        "sparsity": 5 / 320,
        "masked": False,
    }
    assert data["layers"]["fc1"]["masked"] is True and data["zeros"] == zeros
    console = Console(record=True, width=120)
    console.print(report)
    text = console.export_text()
    assert "features.3.weight" in text and "ConvTranspose2d" in text and "all prunable weights" in text
    assert json.loads(json.dumps(result.to_dict()))["layers"]["fc1"]["pruned"] == fc1


# ---------------------------------------------------------------- bad input: one line, model untouched


def four_layers() -> nn.Module:
    torch.manual_seed(0)  # third layer has 10 input features: 2:4 cannot hold there
    return nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 10), nn.Linear(10, 8), nn.Linear(8, 4))


BAD = [
    ({"sparsity": 1.5}, "sparsity must be in [0, 1), got 1.5"),
    ({"sparsity": 1.0}, "sparsity must be in [0, 1), got 1.0"),
    ({"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ({"sparsity": float("nan")}, "got nan"),
    ({"sparsity": True}, "sparsity must be a number"),
    ({"sparsity": "0.5"}, "sparsity must be a number"),
    ({"sparsity": None}, "sparsity is required for pattern unstructured"),
    ({"sparsity": 0.5, "pattern": "foo"}, 'unknown pattern \'foo\': use "unstructured", "N:M" (e.g. "2:4")'),
    ({"sparsity": 0.5, "pattern": "2:x"}, "unknown pattern '2:x'"),
    ({"pattern": "0:4"}, "needs 1 <= N < M"),
    ({"pattern": "4:4"}, "needs 1 <= N < M"),
    ({"sparsity": 0.5, "pattern": "block:0x4"}, "block sides >= 1"),
    ({"sparsity": 0.3, "pattern": "2:4", "include": ["0"]}, "fixes sparsity at 0.5, got 0.3"),
    ({"pattern": "2:4", "scope": "global", "include": ["0"]}, "use scope='local'"),
    ({"pattern": "2:4", "strict": True}, "fit layer '2': 10 input channels, not a multiple of 4"),
    (
        {"sparsity": 0.5, "pattern": "block:2x4", "strict": True},
        "fit layer '2': 2-D weight 8x10, not a multiple of 2x4",
    ),
    ({"pattern": "2:4", "include": ["2"]}, "pattern 2:4 fits none of the selected layers (e.g. '2': 10"),
    ({"sparsity": 0.5, "criterion": "l9"}, "unknown criterion 'l9'"),
    ({"sparsity": 0.5, "scope": "everywhere"}, "unknown scope 'everywhere'"),
    ({"sparsity": 0.5, "seed": 1.5}, "seed must be an int"),
    ({"sparsity": 0.5, "include": []}, "include is empty"),
    ({"sparsity": 0.5, "include": ["head"]}, "include 'head' matches no module"),
    ({"sparsity": 0.5, "exclude": ["head"]}, "exclude 'head' matches no module"),
    ({"sparsity": 0.5, "include": ["0"], "exclude": ["0"]}, "leave no layer to sparsify"),
    ({"sparsity": 0.5, "include": [3]}, "include takes module names or modules"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_input_raises_one_line_config_error_and_leaves_model_untouched(
    kwargs: dict, message: str
) -> None:
    model = four_layers()
    before = snapshot(model)
    with pytest.raises(ConfigError) as info:
        sparsify(model, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert_unchanged(model, before)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_bad_input_leaves_existing_masks_untouched() -> None:
    model = four_layers()
    sparsify(model, 0.5)
    before = snapshot(model)
    with pytest.raises(ConfigError, match="multiple of 4"):
        sparsify(model, None, pattern="2:4", strict=True)  # fails on the 3rd of 4 layers, after two fit
    assert_unchanged(model, before)
    assert all(len(layer.parametrizations.weight) == 1 for layer in model)


def test_norms_tied_and_foreign_parametrized_weights_are_refused() -> None:
    model = convnet()
    with pytest.raises(ConfigError, match=r"include 'features\.1' matches no Linear/Conv layer"):
        sparsify(model, 0.5, include=["features.1"])

    tied = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    tied[1].weight = tied[0].weight
    before = snapshot(tied)
    with pytest.raises(ConfigError, match="layer '1' shares its weight with '0'"):
        sparsify(tied, 0.5)
    assert_unchanged(tied, before)

    normed = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)))
    with pytest.raises(ConfigError, match="already has a parametrization on weight"):
        sparsify(normed, 0.5)
    assert len(normed[0].parametrizations.weight) == 1


def test_mask_is_a_buffer_with_the_weight_dtype() -> None:
    model = nn.Sequential(nn.Linear(8, 8).double())
    sparsify(model, 0.5)
    mask = model[0].parametrizations.weight[0]
    assert isinstance(mask, Mask) and mask.mask.dtype == torch.float64
    assert "0.parametrizations.weight.0.mask" in model.state_dict()


def test_a_failure_while_masking_rolls_every_layer_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = four_layers()
    sparsify(model, 0.25, include=["1"])  # one layer already masked: its mask must come back as it was
    before = snapshot(model)
    real = parametrize.register_parametrization
    calls = []

    def flaky(module, name, parametrization, **kwargs):
        calls.append(module)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(module, name, parametrization, **kwargs)

    monkeypatch.setattr(parametrize, "register_parametrization", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        sparsify(model, 0.5)
    assert_unchanged(model, before)
    assert [is_masked(layer) for layer in model] == [False, True, False, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_layer_kinds_and_dtypes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(4, 4, 2), nn.ConvTranspose1d(8, 4, 3), nn.Conv1d(4, 8, 1)).to(dtype)
    result = sparsify(model, 0.5, scope="global")
    total = sum(layer.weight.numel() for layer in model)
    assert result.pruned == rounded(0.5, total) == sum(int((layer.weight == 0).sum()) for layer in model)
    assert all(get_mask(layer).dtype == dtype for layer in model)
    x = torch.randn(1, 4, 3, 3, 3, dtype=dtype)
    with torch.no_grad():
        before = model[0](x)
        remove_masks(model)
        assert torch.equal(before, model[0](x))


def test_removing_masks_on_a_deep_copy_leaves_the_original_masked_and_working():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    sparsify(model, 0.5)
    x = torch.randn(3, 8)
    expected = model(x)
    twin = copy.deepcopy(model)
    remove_masks(twin)
    assert is_masked(model[0]) and not is_masked(twin[0])
    assert torch.equal(model(x), expected) and torch.equal(twin(x), expected)
    remove_masks(model)  # and the original can still be unmasked afterwards
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize(
    "value", [np.float32(0.5), torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)]
)
def test_sparsity_takes_numpy_and_0d_tensor_scalars(value) -> None:
    model, reference = four_layers(), four_layers()
    result = sparsify(model, value, include="0")
    assert result.requested == 0.5 and type(result.requested) is float
    assert result.layers["0"].pruned == sparsify(reference, 0.5, include=["0"]).layers["0"].pruned
    assert list(result.layers) == ["0"]  # one name is one layer


@pytest.mark.parametrize("value", [float("inf"), torch.tensor(True), torch.tensor([0.5])])
def test_sparsity_refuses_inf_and_tensors_that_are_not_real_scalars(value) -> None:
    with pytest.raises(ConfigError, match="sparsity must be"):
        sparsify(four_layers(), value)


def test_sparsify_refuses_a_non_module_and_a_target_the_loss_refuses() -> None:
    with pytest.raises(ConfigError, match=r"sparsify needs a torch\.nn\.Module as model, got None"):
        sparsify(None, 0.5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = snapshot(model)
    data = [(torch.randn(2, 4), torch.tensor([0, 1, 2]))]
    with pytest.raises(
        ConfigError, match=r"criterion 'taylor'.*output \(2, 3\) float32, target \(3,\) int64"
    ):
        sparsify(model, 0.5, criterion="taylor", data=data)
    assert_unchanged(model, before)


def test_an_interrupt_while_installing_masks_leaves_every_layer_as_it_was(monkeypatch):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    apply_masks(model, {"1": torch.ones(4, 4)})  # one layer already masked: its mask is combined
    old_mask = get_mask(model[1]).clone()
    params = [id(p) for p in model.parameters()]
    real = parametrize.register_parametrization
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(parametrize, "register_parametrization", interrupted)
    masks = {name: torch.zeros(4 if name != "2" else 2, 4) for name in ("0", "1", "2")}
    with pytest.raises(KeyboardInterrupt):
        apply_masks(model, masks)
    assert not is_masked(model[0]) and not is_masked(model[2])
    assert torch.equal(get_mask(model[1]), old_mask)
    assert [id(p) for p in model.parameters()] == params


@pytest.mark.parametrize(
    ("pattern", "sparsity", "why"),
    [
        ("2:4", None, "10 input channels, not a multiple of 4"),
        ("block:2x4", 0.5, "2-D weight 8x10, not a multiple of 2x4"),
    ],
)
def test_layers_the_pattern_cannot_fit_are_skipped_and_listed(pattern: str, sparsity, why: str) -> None:
    model = four_layers()
    before = model[2].weight.detach().clone()
    res = sparsify(model, sparsity, pattern=pattern)
    assert res.skipped == {"2": why}
    assert sorted(res.layers) == ["0", "1", "3"]
    assert res.to_dict()["skipped"] == {"2": why}
    assert not is_masked(model[2]) and torch.equal(model[2].weight, before)
    assert res.sparsity == pytest.approx(0.5)


def test_nm_on_a_standard_cnn_skips_its_three_channel_stem() -> None:
    from torchvision.models import resnet18

    model = resnet18()
    res = sparsify(model, pattern="2:4")
    assert res.skipped == {"conv1": "3 input channels, not a multiple of 4"}
    assert "fc" in res.layers and res.sparsity == pytest.approx(0.5)
