"""prunekit.sparse.kernels and accelerate: sparse Linear/Conv2d match dense; per-layer swap decisions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit.sparse.accelerate as acc
from prunekit.errors import ApplyError, ConfigError
from prunekit.sparse import remove_masks, sparsify
from prunekit.sparse.accelerate import accelerate
from prunekit.sparse.kernels import (
    LINEAR_KERNELS,
    TILE_ROWS,
    SparseConv2d,
    SparseLinear,
    block_size_for,
    conv_unsupported,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


def sparse_linear(inp: int, out: int, sparsity: float, *, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(inp, out, bias=bias)
    sparsify(layer, sparsity)
    remove_masks(layer)
    return layer


def block_sparse_linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(64, 48)
    sparsify(layer, 0.75, pattern="block:8x8")
    remove_masks(layer)
    return layer


@pytest.mark.parametrize("kernel", LINEAR_KERNELS)
@pytest.mark.parametrize("shape", [(64,), (5, 64), (2, 3, 64), (3 * TILE_ROWS + 5, 64)])
def test_sparse_linear_matches_dense_for_any_leading_shape(kernel: str, shape: tuple[int, ...]):
    dense = block_sparse_linear() if kernel.startswith("bsr") else sparse_linear(64, 48, 0.8)
    fast = SparseLinear.from_linear(dense, kernel)
    x = torch.randn(*shape)
    out = fast(x)
    assert out.shape == (*shape[:-1], 48)
    assert torch.allclose(out, dense(x), **TOL)


@pytest.mark.parametrize("kernel", ["csr-mm", "csr-mm-tiled", "csr-linear"])
def test_sparse_linear_without_bias_and_back_to_dense(kernel: str):
    dense = sparse_linear(40, 24, 0.9, bias=False)
    fast = SparseLinear.from_linear(dense, kernel)
    x = torch.randn(70, 40)
    assert torch.allclose(fast(x), dense(x), **TOL)
    assert fast.weight.layout == torch.sparse_csr and fast.weight.crow_indices().dtype == torch.int32
    assert fast.weight.values().numel() == int((dense.weight != 0).sum())
    back = fast.to_dense()
    assert back.bias is None and torch.equal(back.weight, dense.weight)


def test_block_size_is_the_largest_with_half_full_blocks():
    assert block_size_for(block_sparse_linear().weight.detach()) == 8
    assert block_size_for(sparse_linear(64, 48, 0.9).weight.detach()) is None  # unstructured: no block fits
    assert block_size_for(torch.ones(48, 64)) == 16  # 48 is not a multiple of 32
    with pytest.raises(ConfigError, match="no block size"):
        SparseLinear.from_linear(sparse_linear(64, 48, 0.9), "bsr-mm")
    with pytest.raises(ConfigError, match="kernel must be one of"):
        SparseLinear.from_linear(nn.Linear(4, 4), "coo")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": 1},
        {"stride": 2, "padding": (1, 2)},
        {"dilation": 2, "padding": 2, "bias": False},
        {"kernel_size": (1, 3)},
    ],
)
def test_sparse_conv_matches_dense(kwargs: dict):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, kwargs.pop("kernel_size", 3), **kwargs)
    sparsify(conv, 0.8)
    remove_masks(conv)
    fast = SparseConv2d.from_conv(conv)
    x = torch.randn(3, 6, 9, 11)
    assert torch.allclose(fast(x), conv(x), **TOL)
    assert torch.allclose(fast(x[0]), conv(x[0]), **TOL)  # unbatched input


def test_unsupported_convs_are_named():
    assert conv_unsupported(nn.Conv2d(4, 4, 3, padding="same")) == "padding='same'"
    assert conv_unsupported(nn.Conv2d(4, 4, 3, padding_mode="reflect")) == "padding_mode='reflect'"
    with pytest.raises(ConfigError, match="grouped conv"):
        SparseConv2d(nn.Conv2d(4, 4, 3, groups=4))


class FakeClock:
    """Replaces the per-call timer: dense takes ``dense`` ms, a kernel the ms given for it (default 50)."""

    def __init__(self, dense: float, kernels: dict[str, float]) -> None:
        self.dense, self.kernels = dense, kernels

    def __call__(self, fn, x) -> float:
        kernel = getattr(fn, "kernel", None)
        return self.dense if kernel is None else self.kernels.get(kernel, 50.0)


def mlp() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    torch.manual_seed(0)
    sparsify(model, 0.9, include=["0", "2"])
    sparsify(model, 0.3, include=["4"])
    return model


def test_accelerate_swaps_only_where_the_clock_says_it_pays(monkeypatch):
    monkeypatch.setattr(acc, "_time_once", FakeClock(10.0, {"csr-linear": 2.0, "csr-mm": 4.0}))
    model = mlp()
    remove_masks(model)
    x = torch.randn(4, 32)
    expected = model(x).detach()
    res = accelerate(model, x, runs=3)
    assert res.swapped == ["0", "2"]
    rows = {row.name: row for row in res.layers}
    assert rows["0"].chosen == "csr-linear" and rows["0"].speedup == pytest.approx(5.0)
    assert rows["0"].kernel_ms == {"csr-mm": 4.0, "csr-linear": 2.0}  # 4 rows: no tiled kernel
    assert "bsr: no block size" in rows["0"].note
    assert rows["0"].sparsity == pytest.approx(0.9, abs=1e-3) and rows["0"].input_shape == [4, 32]
    assert rows["4"].chosen == "dense" and rows["4"].note == "sparsity below min_sparsity=0.5"
    assert isinstance(model[0], SparseLinear) and model[0].kernel == "csr-linear"
    assert isinstance(model[4], nn.Linear)
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert res.max_abs_diff < 1e-5
    assert res.max_abs_output == pytest.approx(float(expected.abs().max()))
    assert res.dense_ms is not None and res.sparse_ms is not None
    assert json.loads(json.dumps(res.to_dict()))["swapped"] == ["0", "2"]


def test_accelerate_keeps_dense_when_no_kernel_beats_min_speedup(monkeypatch):
    monkeypatch.setattr(acc, "_time_once", FakeClock(10.0, {"csr-mm": 9.5, "csr-linear": 12.0}))
    model = mlp()
    before = [type(m) for m in model]
    res = accelerate(model, torch.randn(4, 32), runs=2, min_speedup=1.1, end_to_end=False)
    assert res.swapped == [] and [type(m) for m in model] == before
    assert "best sparse kernel csr-mm is 1.05x dense, below min_speedup=1.1" in res.layers[0].note
    assert res.speedup is None


def test_tiled_and_block_kernels_are_tried_when_they_apply(monkeypatch):
    monkeypatch.setattr(acc, "_time_once", FakeClock(10.0, {"bsr-mm": 1.0}))
    model = nn.Sequential(block_sparse_linear())
    res = accelerate(model, torch.randn(2 * TILE_ROWS + 1, 64), runs=2, end_to_end=False)
    assert set(res.layers[0].kernel_ms) == set(LINEAR_KERNELS)
    assert res.swapped == ["0"] and model[0].kernel == "bsr-mm" and model[0].blocksize == 8


def test_accelerate_works_on_masked_layers_and_dict_inputs(monkeypatch):
    monkeypatch.setattr(acc, "_time_once", FakeClock(10.0, {"csr-mm": 1.0}))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(16, 32), nn.GELU())
            self.head = nn.Linear(32, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, tokens: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
            return {"out": self.head(input=self.inner(tokens)) * scale}  # a keyword call is seen too

    torch.manual_seed(0)
    net = Net()
    sparsify(net, 0.8)  # still masked: the effective weight is what gets sparse
    x = {"tokens": torch.randn(2, 5, 16), "scale": 2.0}
    expected = net(**x)["out"]
    res = accelerate(net, x, runs=2, end_to_end=False)
    rows = {row.name: row for row in res.layers}
    assert res.swapped == ["inner.0", "head"]
    assert rows["inner.0"].input_shape == [2, 5, 16]
    assert rows["unused"].note == "not called by the example inputs"
    assert torch.allclose(net(**x)["out"], expected, atol=1e-5)


def test_convs_are_measured_only_when_asked(monkeypatch):
    monkeypatch.setattr(acc, "_time_once", FakeClock(10.0, {"csr-im2col": 2.0}))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten()
    )
    sparsify(model, 0.9)
    remove_masks(model)
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    assert accelerate(model, x, runs=2, end_to_end=False).layers == []
    res = accelerate(model, x, runs=2, convs=True, end_to_end=False)
    rows = {row.name: row for row in res.layers}
    assert res.swapped == ["0"] and isinstance(model[0], SparseConv2d)
    assert rows["2"].note == "csr-im2col: grouped conv (groups=2)" and rows["2"].chosen == "dense"
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_a_kernel_with_wrong_outputs_is_never_chosen(monkeypatch):
    monkeypatch.setattr(acc, "_time_once", FakeClock(10.0, {"csr-mm": 1.0, "csr-linear": 3.0}))
    real = SparseLinear.forward
    monkeypatch.setattr(SparseLinear, "forward", lambda self, x: real(self, x) + (self.kernel == "csr-mm"))
    model = mlp()
    res = accelerate(model, torch.randn(4, 32), runs=2, end_to_end=False)
    row = res.layers[0]
    assert row.chosen == "csr-linear" and row.kernel_ms["csr-mm"] is None
    assert "csr-mm: output differs by 1.00e+00" in row.note


def test_end_to_end_mismatch_restores_the_model(monkeypatch):
    monkeypatch.setattr(acc, "_time_once", FakeClock(10.0, {"csr-mm": 1.0}))
    monkeypatch.setattr(acc, "_compare", lambda *args: (False, 0.5, 1.0))
    model = mlp()
    before = list(model)
    with pytest.raises(ApplyError, match=r"outputs changed by 5\.00e-01 .* the model was restored"):
        accelerate(model, torch.randn(4, 32), runs=2)
    assert all(a is b for a, b in zip(model, before, strict=True))


def test_real_timing_keeps_outputs_within_tolerance_and_restores_threads():
    model = nn.Sequential(sparse_linear(256, 256, 0.95), nn.ReLU(), sparse_linear(256, 64, 0.95, seed=1))
    x = torch.randn(16, 256)
    expected = model(x)
    threads = torch.get_num_threads()
    res = accelerate(model, x, runs=3, threads=1)
    assert res.threads == 1 and torch.get_num_threads() == threads
    assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4) and res.max_abs_diff <= 1e-4
    for row in res.layers:  # whatever the clock said, the decision follows it
        assert row.dense_ms > 0
        timed = {k: v for k, v in row.kernel_ms.items() if v is not None}
        if row.chosen != "dense":
            assert row.kernel_ms[row.chosen] == min(timed.values())
            assert row.dense_ms >= res.min_speedup * row.kernel_ms[row.chosen]
            assert isinstance(model.get_submodule(row.name), SparseLinear)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"formats": ("coo",)}, "formats must be a non-empty subset of csr, bsr"),
        ({"formats": ()}, "formats must be a non-empty subset"),
        ({"min_sparsity": 1.0}, r"min_sparsity must be in \[0, 1\)"),
        ({"min_speedup": 0.5}, "min_speedup must be >= 1"),
        ({"runs": 0}, "runs must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"atol": -1.0}, "atol and rtol must be >= 0"),
    ],
)
def test_bad_arguments_leave_the_model_alone(kwargs: dict, message: str):
    model = mlp()
    before = [type(m) for m in model]
    with pytest.raises(ConfigError, match=message):
        accelerate(model, torch.randn(2, 32), **kwargs)
    assert [type(m) for m in model] == before


def test_batch_sizes_swap_only_a_kernel_faster_at_every_size(monkeypatch):
    def clock(fn, x) -> float:  # csr-linear: 5x faster at one row, slower at 32; csr-mm 1.25x at both
        rows = x.shape[0]
        kernel = getattr(fn, "kernel", None)
        if kernel is None:
            return 10.0
        return {"csr-linear": 2.0 if rows == 1 else 12.0, "csr-mm": 8.0}.get(kernel, 50.0)

    monkeypatch.setattr(acc, "_time_once", clock)
    model = mlp()
    remove_masks(model)
    x = torch.randn(4, 32)
    one = accelerate(model, x, runs=2, end_to_end=False, batch_sizes=[1])
    assert one.swapped == ["0", "2"] and one.layers[0].chosen == "csr-linear"
    acc.decelerate(model)
    res = accelerate(model, x, runs=2, end_to_end=False, batch_sizes=[32, 1, 32])
    row = res.layers[0]
    assert res.batch_sizes == [1, 32] and row.chosen == "csr-mm"
    assert row.timings == {
        1: {"dense": 10.0, "csr-mm": 8.0, "csr-linear": 2.0},
        32: {"dense": 10.0, "csr-mm": 8.0, "csr-linear": 12.0},
    }
    assert row.kernel_ms["csr-linear"] == pytest.approx((2.0 * 12.0) ** 0.5)
    assert row.input_shape == [4, 32]  # the example's own shape
    assert json.loads(json.dumps(res.to_dict()))["layers"][0]["timings"]["32"]["csr-linear"] == 12.0


def test_batch_sizes_keep_dense_when_the_best_kernel_loses_at_one_size(monkeypatch):
    def clock(fn, x) -> float:
        kernel = getattr(fn, "kernel", None)
        return 10.0 if kernel is None else (2.0 if x.shape[0] == 1 else 11.2)

    monkeypatch.setattr(acc, "_time_once", clock)
    model = mlp()
    res = accelerate(model, torch.randn(4, 32), runs=2, end_to_end=False, batch_sizes=(1, 32))
    assert res.swapped == []
    assert "(geometric mean) but slower at batch 32" in res.layers[0].note
    with pytest.raises(ConfigError, match="batch_sizes must be a non-empty list of ints >= 1"):
        accelerate(model, torch.randn(4, 32), batch_sizes=[0])
