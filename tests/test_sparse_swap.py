"""A model on sparse kernels survives: decelerate / accelerated, state_dict, deepcopy, save/load, ONNX."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.sparse import remove_masks, sparsify
from prunekit.sparse.kernels import SparseConv2d, SparseLinear
from prunekit.sparse.swap import dense_form, kernel_choices, swap_kernels


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 36, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    sparsify(model, 0.9)
    remove_masks(model)
    return model.eval()


CHOICES = {"0": "csr-im2col", "3": "csr-mm", "5": "csr-linear"}
X = torch.randn(2, 3, 6, 6)


def accelerated_net() -> tuple[nn.Sequential, torch.Tensor]:
    model = net()
    expected = model(X).detach()
    swap_kernels(model, CHOICES)
    return model, expected


def test_state_dict_is_the_dense_one_and_loads_back_into_sparse_kernels() -> None:
    model, expected = accelerated_net()
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in net().state_dict().items()
    }
    assert all(v.layout == torch.strided for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)  # raised "unsupported memory format option Contiguous" on sparse tensors
    fresh = net(seed=1)
    swap_kernels(fresh, CHOICES)
    assert not torch.allclose(fresh(X), expected, atol=1e-5)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert isinstance(fresh[3], SparseLinear) and torch.allclose(fresh(X), expected, atol=1e-5)


def test_deepcopy_and_decelerate_keep_outputs_and_undo_the_swap() -> None:
    model, expected = accelerated_net()
    twin = copy.deepcopy(model)
    assert twin[3] is not model[3] and kernel_choices(twin) == CHOICES
    assert torch.allclose(twin(X), expected, atol=1e-5)
    assert pk.decelerate(model) == ["0", "3", "5"]
    assert [type(m) for m in model] == [type(m) for m in net()]
    assert torch.allclose(model(X), expected, atol=1e-5) and kernel_choices(twin) == CHOICES
    assert dense_form(model) is model


def test_accelerated_context_manager_swaps_back_on_exit(monkeypatch) -> None:
    import prunekit.sparse.accelerate as acc

    monkeypatch.setattr(acc, "_time_once", lambda fn, x: 1.0 if hasattr(fn, "kernel") else 10.0)
    model = net()
    with pk.accelerated(model, X, runs=2, end_to_end=False) as res:
        assert res.swapped == ["3", "5"] and isinstance(model[3], SparseLinear)
    assert type(model[3]) is nn.Linear and type(model[5]) is nn.Linear


def test_save_records_the_kernels_and_load_runs_them_again(tmp_path) -> None:
    model, expected = accelerated_net()
    pk.save(model, tmp_path / "ckpt")
    info = json.loads((tmp_path / "ckpt" / "prunekit.json").read_text())
    assert info["accelerated"] == CHOICES
    assert info["params"]["total"] == sum(p.numel() for p in net().parameters())
    loaded = pk.load(tmp_path / "ckpt", model=net())
    assert kernel_choices(loaded) == CHOICES and isinstance(loaded[0], SparseConv2d)
    assert torch.allclose(loaded(X), expected, atol=1e-5)
    pk.save(model, tmp_path / "sparse", sparse=True)
    assert kernel_choices(pk.load(tmp_path / "sparse", model=net())) == CHOICES


def test_export_onnx_exports_the_dense_form(tmp_path) -> None:
    model, _ = accelerated_net()
    result = pk.export_onnx(model, X, tmp_path / "m.onnx")
    assert result.verified and result.max_abs_err < 1e-4
    assert kernel_choices(model) == CHOICES  # the model itself still runs its kernels


def test_swap_kernels_refuses_what_cannot_run_and_changes_nothing() -> None:
    model = net()
    with pytest.raises(ConfigError, match="layer '1' is a ReLU: it cannot run kernel 'csr-mm'"):
        swap_kernels(model, {"3": "csr-mm", "1": "csr-mm"})
    with pytest.raises(ConfigError, match="no such submodule"):
        swap_kernels(model, {"nope": "csr-mm"})
    assert kernel_choices(model) == {}
