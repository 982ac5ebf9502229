"""ONNX export: verified against onnxruntime, exact initializer counts, smaller files for pruned models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _engine_helpers import randomize
from torch import nn

from prunekit.deploy import export_onnx, onnx_session, run_onnx
from prunekit.errors import ConfigError, ExportError
from prunekit.measure import count_params
from prunekit.sparse import is_masked, sparsify
from prunekit.structured import prune

torch.set_num_threads(1)


def mlp(hidden: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


def onnx_weights(path) -> list[np.ndarray]:
    return [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_pruned_model_file_is_smaller_in_proportion_and_counts_are_exact(tmp_path):
    dense = mlp(256)
    x = torch.randn(2, 64)
    dense_res = export_onnx(dense, x, tmp_path / "dense.onnx")
    pruned = mlp(256)
    prune(pruned, x, ratio=0.75)
    pruned_res = export_onnx(pruned, x, tmp_path / "pruned.onnx")

    assert dense_res.model_params == count_params(dense).total == 64 * 256 + 256 + 256 * 256 + 256 + 2570
    assert pruned_res.model_params == count_params(pruned).total == 64 * 64 + 64 + 64 * 64 + 64 + 650
    # every parameter reached the file, nothing else did
    assert dense_res.initializer_params == dense_res.model_params
    assert pruned_res.initializer_params == pruned_res.model_params
    for res in (dense_res, pruned_res):
        assert (
            4 * res.model_params < res.size_bytes < 4 * res.model_params + 16384
        )  # fp32 weights + the graph
        assert res.verified and res.verified_batch_sizes == [2, 3]
        assert res.max_abs_err < 1e-5
        assert res.opset >= 18 and res.providers == ["CPUExecutionProvider"]
    # every removed parameter takes its 4 bytes out of the file (the graph itself is the same size +- 1 KiB)
    saved_bytes = dense_res.size_bytes - pruned_res.size_bytes
    assert saved_bytes == pytest.approx(4 * (dense_res.model_params - pruned_res.model_params), abs=1024)
    # the file holds the pruned model's weights, and runs at any batch size
    got = run_onnx(tmp_path / "pruned.onnx", torch.ones(7, 64))[0]
    torch.testing.assert_close(
        torch.from_numpy(got), pruned(torch.ones(7, 64)).detach(), rtol=1e-5, atol=1e-5
    )
    assert sorted(leftovers(tmp_path)) == ["dense.onnx", "pruned.onnx"]


class Encoder(nn.Module):
    """Attention with a class token and a key-padding mask: two batched inputs, given as a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(tokens)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
        padding = torch.cat([torch.zeros_like(padding[:, :1]), padding], dim=1)
        h = self.layer(h, src_key_padding_mask=padding)
        return self.head(h[:, 0]), h


def test_attention_model_with_batch_1_dict_inputs_and_two_outputs(tmp_path):
    model = randomize(Encoder()).train()  # exported in eval mode, training flags restored
    padding = torch.zeros(1, 6, dtype=torch.bool)
    padding[0, 4:] = True
    # a batch of 1 (which torch.export would pin), given as a dict out of signature order
    res = export_onnx(model, {"padding": padding, "tokens": torch.randn(1, 6, 12)}, tmp_path / "enc.onnx")
    assert model.training and model.layer.training
    assert res.verified_batch_sizes == [1, 2] and res.max_abs_err < 1e-4
    inputs = {i.name: i.shape for i in onnx_session(tmp_path / "enc.onnx").get_inputs()}
    assert inputs == {"padding": ["batch", 6], "tokens": ["batch", 6, 12]}
    # random-valued parameters are all stored, plus a few graph constants (shapes, the attention scale)
    assert res.model_params == count_params(model).total
    assert res.model_params <= res.initializer_params <= res.model_params + 16

    model.eval()
    x = {"tokens": torch.randn(4, 6, 12), "padding": torch.rand(4, 6) < 0.3}
    logits, hidden = run_onnx(tmp_path / "enc.onnx", x)
    want_logits, want_hidden = model(**x)
    torch.testing.assert_close(torch.from_numpy(logits), want_logits.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(hidden), want_hidden.detach(), rtol=1e-4, atol=1e-4)


def test_masked_model_exports_effective_weights_only(tmp_path):
    model = mlp(128)
    sparsify(model, 0.6)
    assert is_masked(model[0])
    zeros = sum(int((p == 0).sum()) for p in (model[0].weight, model[2].weight, model[4].weight))
    res = export_onnx(model, torch.randn(2, 64), tmp_path / "masked.onnx", dynamic_batch=False)
    assert res.verified_batch_sizes == [2] and not res.dynamic_batch
    assert onnx_session(tmp_path / "masked.onnx").get_inputs()[0].shape == [2, 64]

    assert res.initializer_params == res.model_params == count_params(model).total  # not weight + mask
    stored = onnx_weights(tmp_path / "masked.onnx")
    assert sum(int((w == 0).sum()) for w in stored) == zeros
    assert is_masked(model[0]) and is_masked(model[4])  # the user's model keeps its masks
    got = run_onnx(tmp_path / "masked.onnx", torch.ones(2, 64))[0]
    torch.testing.assert_close(torch.from_numpy(got), model(torch.ones(2, 64)).detach(), rtol=1e-5, atol=1e-5)


class Eig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(self.fc(x)).real


def test_unsupported_op_is_named_and_no_file_is_left(tmp_path):
    target = tmp_path / "eig.onnx"
    with pytest.raises(ExportError) as info:
        export_onnx(Eig(), torch.randn(2, 4, 4), target)
    message = str(info.value)
    assert "aten.linalg_eig" in message and "\n" not in message
    assert leftovers(tmp_path) == []


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)  # onnxruntime draws other random numbers than PyTorch


def test_output_mismatch_raises_and_leaves_no_file(tmp_path):
    target = tmp_path / "noisy.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to"):
        export_onnx(Noisy(), torch.zeros(64, 32), target)
    assert target.read_bytes() == b"old"  # the previous file is untouched
    assert leftovers(tmp_path) == ["noisy.onnx"]


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 6))  # only works for a batch of 2


def test_dynamic_batch_is_checked_with_another_batch_size(tmp_path):
    with pytest.raises(ExportError, match=r"batch size 3"):
        export_onnx(FixedBatch(), torch.randn(2, 6), tmp_path / "fixed.onnx")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"opset": 9}, "opset must be in 11.."),
        ({"atol": -1.0}, "rtol and atol must be >= 0"),
        ({"example_inputs": ([torch.zeros(1, 4)],)}, "nested list"),
        ({"example_inputs": "text"}, "must be a tensor, a tuple or a dict"),
        ({"example_inputs": (3, None)}, "hold no tensor"),
        ({"path": "missing-dir/m.onnx"}, "does not exist"),
    ],
)
def test_bad_arguments_fail_before_exporting(tmp_path, kwargs, match):
    args = {"example_inputs": torch.zeros(1, 4), "path": tmp_path / "m.onnx", **kwargs}
    if kwargs.get("path") == "missing-dir/m.onnx":
        args["path"] = tmp_path / "missing-dir" / "m.onnx"
    with pytest.raises(ConfigError, match=match):
        export_onnx(nn.Linear(4, 2), args.pop("example_inputs"), args.pop("path"), **args)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_opsets_below_18_use_the_torchscript_exporter(tmp_path, opset):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()).eval()
    res = export_onnx(net, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=opset)
    assert res.opset == opset and res.exporter == "torch.onnx.export(dynamo=False)"
    assert res.verified_batch_sizes == [1, 2] and res.max_abs_err < 1e-4


def test_opset_above_the_newest_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"opset must be in 11\.\.\d+, got 99"):
        export_onnx(nn.Linear(4, 2), torch.zeros(1, 4), tmp_path / "m.onnx", opset=99)
    assert leftovers(tmp_path) == []
