"""prunekit.sparse.storage: bitmask + values + zstd round trips, error bounds, size report, bad files."""

from __future__ import annotations

import json
import math
import struct

import pytest
import safetensors.torch
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.errors import ConfigError, ModelLoadError
from prunekit.measure.size import effective_state_dict
from prunekit.sparse import remove_masks, sparsify
from prunekit.sparse.storage import (
    MAGIC,
    decode_sparse_state_dict,
    encode_sparse_state_dict,
    load_sparse,
    save_sparse,
    sparse_size,
)


def sparse_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of several dtypes and shapes, ~80% zeros (some -0.0), plus biases, a 0-d and an int buffer."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 48, generator=g)
    w[torch.rand(32, 48, generator=g) < 0.8] = 0.0
    w[0, :4] = torch.tensor([-0.0, float("nan"), float("inf"), -1e-30])
    conv = torch.randn(8, 4, 3, 3, generator=g)
    conv[torch.rand(8, 4, 3, 3, generator=g) < 0.7] = 0.0
    return {
        "fc.weight": w,
        "fc.bias": torch.randn(32, generator=g),
        "conv.weight": conv,
        "half.weight": (torch.randn(6, 5, generator=g) * (torch.rand(6, 5, generator=g) > 0.5)).half(),
        "bf16.weight": (torch.randn(4, 8, generator=g) * (torch.rand(4, 8, generator=g) > 0.5)).bfloat16(),
        "empty.weight": torch.zeros(0, 7),
        "scalar": torch.tensor(3.25),
        "bn.num_batches_tracked": torch.tensor(17, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
    }


def finite_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 40, generator=g) * torch.linspace(0.1, 3.0, 64)[:, None]  # rows of different scale
    w[torch.rand(64, 40, generator=g) < 0.9] = 0.0
    return {"w": w, "b": torch.randn(64, generator=g)}


def test_fp32_round_trip_is_exact_for_every_dtype_and_shape():
    state = sparse_state()
    decoded = decode_sparse_state_dict(encode_sparse_state_dict(state))
    assert list(decoded) == list(state)
    for name, original in state.items():
        out = decoded[name]
        assert out.dtype == original.dtype and out.shape == original.shape, name
        assert torch.equal(out.nan_to_num(), original.nan_to_num()), name
        assert torch.equal(out.isnan(), original.isnan()), name
    assert decoded["fc.weight"][0, 3] == state["fc.weight"][0, 3] < 0  # a tiny value is a value, not a zero


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 33),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_fp32_round_trip_property(rows: int, cols: int, keep: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < keep)
    decoded = decode_sparse_state_dict(encode_sparse_state_dict({"w": w}, zstd_level=1))["w"]
    assert torch.equal(decoded, w)
    assert int((decoded != 0).sum()) == int((w != 0).sum())


def test_fp16_values_have_relative_error_below_half_an_ulp():
    state = finite_weights()
    w = state["w"]
    decoded = decode_sparse_state_dict(encode_sparse_state_dict(state, values="fp16"))
    assert torch.equal(decoded["w"] == 0, w == 0)  # zeros stay exactly zero, non-zeros stay non-zero
    assert bool(((decoded["w"] - w).abs() <= w.abs() * 2.0**-11).all())
    assert torch.equal(decoded["b"], state["b"])  # dense="keep": exact


@pytest.mark.parametrize("scale", ["tensor", "channel"])
def test_int8_error_is_at_most_half_a_step(scale: str):
    state = finite_weights()
    w = state["w"]
    decoded = decode_sparse_state_dict(encode_sparse_state_dict(state, values="int8", scale=scale))["w"]
    if scale == "tensor":
        step = (w.abs().max() / 127).expand_as(w)
    else:
        step = (w.abs().amax(dim=1, keepdim=True) / 127).expand_as(w)
    assert torch.equal(decoded[w == 0], torch.zeros(int((w == 0).sum())))
    assert bool(((decoded - w).abs() <= step / 2 + 1e-6).all())
    assert (decoded - w).abs().max() > 0  # it is really quantized
    # the largest magnitude of each scale group is exact
    assert torch.allclose(decoded.abs().max(), w.abs().max())


@pytest.mark.parametrize("values", ["fp16", "int8"])
@pytest.mark.parametrize("scale", ["tensor", "channel"])
def test_lossy_codecs_handle_empty_and_all_zero_weights(values: str, scale: str):
    state = {"a": torch.zeros(0, 7), "b": torch.zeros(5, 0), "c": torch.zeros(3, 4), "d": torch.zeros(0)}
    decoded = decode_sparse_state_dict(encode_sparse_state_dict(state, values=values, scale=scale))
    for name, t in state.items():
        assert torch.equal(decoded[name], t) and decoded[name].shape == t.shape


def test_per_channel_scales_are_finer_than_per_tensor_for_rows_of_different_scale():
    state = finite_weights()
    err = {}
    for scale in ("tensor", "channel"):
        decoded = decode_sparse_state_dict(encode_sparse_state_dict(state, values="int8", scale=scale))
        err[scale] = float((decoded["w"] - state["w"]).abs().max())
    assert err["channel"] < err["tensor"]


def test_dense_fp16_stores_biases_in_half_and_gives_the_dtype_back():
    state = finite_weights()
    decoded = decode_sparse_state_dict(encode_sparse_state_dict(state, dense="fp16"))
    assert decoded["b"].dtype == torch.float32
    assert torch.equal(decoded["b"], state["b"].half().float())
    assert not torch.equal(decoded["b"], state["b"])


def test_size_report_counts_and_ratio():
    state = finite_weights()
    res = sparse_size(state, values="int8", dense="fp16")
    nnz = int((state["w"] != 0).sum())
    assert res.dense_bytes == len(safetensors.torch.save(state))
    assert res.stored_bytes == len(encode_sparse_state_dict(state, values="int8", dense="fp16"))
    assert (res.tensors, res.sparse_tensors, res.numel, res.nonzero) == (2, 1, 64 * 40, nnz)
    assert res.sparsity == pytest.approx(1 - nnz / 2560)
    assert res.ratio == pytest.approx(res.dense_bytes / res.stored_bytes)
    assert 0 < res.max_abs_error <= float(state["w"].abs().max()) / 127 / 2 + 1e-6
    assert json.loads(json.dumps(res.to_dict()))["ratio"] == pytest.approx(res.ratio)
    assert sparse_size(state).max_abs_error == 0.0


def test_sizes_follow_the_encoding():
    """90 % sparse 256x256: fp32 <= 4 B/value + 1 bit/weight + overhead; int8 <= 1 B/value + 1 bit/weight."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(256, 256, generator=g)
    w[torch.rand(256, 256, generator=g) < 0.9] = 0.0
    nnz, bits = int((w != 0).sum()), 256 * 256 // 8
    dense = len(safetensors.torch.save({"w": w}))
    sizes = {v: sparse_size({"w": w}, values=v).stored_bytes for v in ("fp32", "fp16", "int8")}
    assert sizes["fp32"] <= 4 * nnz + bits + 400
    assert sizes["int8"] <= nnz + bits + 400
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"] < dense / 2.5
    assert dense / sizes["int8"] > 12


def test_masked_model_stores_effective_weights_and_loads_into_a_fresh_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.BatchNorm1d(30), nn.ReLU(), nn.Linear(30, 5))
    model[1].running_mean.uniform_(-1, 1)
    sparsify(model, 0.85)
    res = sparse_size(model)
    assert res.nonzero == int((model[0].weight != 0).sum() + (model[3].weight != 0).sum())
    decoded = decode_sparse_state_dict(encode_sparse_state_dict(effective_state_dict(model)))
    assert not any("parametrizations" in name or "mask" in name for name in decoded)
    remove_masks(model)
    fresh = nn.Sequential(nn.Linear(20, 30), nn.BatchNorm1d(30), nn.ReLU(), nn.Linear(30, 5))
    fresh.load_state_dict(decoded, strict=True)
    x = torch.randn(4, 20)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_save_and_load_write_one_file_atomically(tmp_path):
    state = finite_weights()
    target = tmp_path / "out" / "weights.pksparse"
    res = save_sparse(state, target, values="int8")
    assert res.path == str(target) and target.stat().st_size == res.stored_bytes
    assert [p.name for p in target.parent.iterdir()] == ["weights.pksparse"]
    assert torch.equal(load_sparse(target)["b"], state["b"])
    before = target.read_bytes()
    bad = {"w": torch.tensor([[float("inf"), 1.0]])}
    with pytest.raises(ConfigError, match="inf or nan"):
        save_sparse(bad, target, values="int8")
    assert target.read_bytes() == before  # a failed save leaves the old file and no temporary file
    assert [p.name for p in target.parent.iterdir()] == ["weights.pksparse"]
    with pytest.raises(ConfigError, match="is a directory"):
        save_sparse(state, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": "int4"}, "values must be one of fp32, fp16, int8"),
        ({"scale": "row"}, "scale must be one of tensor, channel"),
        ({"dense": "bf16"}, "dense must be one of keep, fp16"),
        ({"zstd_level": 0}, r"zstd_level must be in \[1, 22\]"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        encode_sparse_state_dict(finite_weights(), **kwargs)


def test_values_that_the_codec_cannot_hold_are_refused():
    with pytest.raises(ConfigError, match="float64"):
        encode_sparse_state_dict({"w": torch.ones(2, 2, dtype=torch.float64)})
    with pytest.raises(ConfigError, match="beyond fp16"):
        encode_sparse_state_dict({"w": torch.full((2, 2), 1e6)}, values="fp16")
    with pytest.raises(ConfigError, match="beyond fp16"):
        encode_sparse_state_dict({"b": torch.full((2,), 1e6)}, dense="fp16")
    with pytest.raises(ConfigError, match="not a dense tensor"):
        encode_sparse_state_dict({"w": torch.eye(3).to_sparse()})
    with pytest.raises(ConfigError, match=r"nn\.Module or a state dict"):
        sparse_size([torch.eye(2)])


def _frames(data: bytes) -> list[bytes]:
    count = 5
    lengths = struct.unpack_from(f"<{count}Q", data, len(MAGIC))
    start, frames = len(MAGIC) + 8 * count, []
    for length in lengths:
        frames.append(zstandard.ZstdDecompressor().decompress(data[start : start + length]))
        start += length
    return frames


def _pack(frames: list[bytes]) -> bytes:
    packed = [zstandard.ZstdCompressor().compress(f) for f in frames]
    return MAGIC + struct.pack(f"<{len(packed)}Q", *map(len, packed)) + b"".join(packed)


def test_corrupt_truncated_and_foreign_files_raise_one_line_errors(tmp_path):
    data = encode_sparse_state_dict(finite_weights(), values="int8")
    assert decode_sparse_state_dict(_pack(_frames(data)))["w"].shape == (64, 40)  # the helpers are faithful
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    head = json.loads(_frames(data)[0])
    head["tensors"][0]["nnz"] += 1
    wrong_count = _pack([json.dumps(head).encode(), *_frames(data)[1:]])
    head = json.loads(_frames(data)[0])
    head["tensors"][0]["sections"]["values"][1] -= 1
    wrong_size = _pack([json.dumps(head).encode(), *_frames(data)[1:]])
    head = json.loads(_frames(data)[0])
    head["version"] = 99
    wrong_version = _pack([json.dumps(head).encode(), *_frames(data)[1:]])
    cases = [
        ("corrupt", bytes(flipped)),
        ("truncated", data[:-10]),
        ("truncated", data[:12]),
        ("trailing bytes", data + b"\0"),
        ("not a prunekit sparse file", b"PK\x03\x04" + data[4:]),
        ("does not match its value count", wrong_count),
        ("wrong size", wrong_size),
        ("version 99", wrong_version),
    ]
    for message, blob in cases:
        with pytest.raises(ModelLoadError, match=message) as info:
            decode_sparse_state_dict(blob)
        assert "\n" not in str(info.value)
    path = tmp_path / "w.pksparse"
    path.write_bytes(data[:-1])
    with pytest.raises(ModelLoadError, match=f"{path.name} is truncated"):
        load_sparse(path)
    with pytest.raises(ModelLoadError, match="no sparse weights file"):
        load_sparse(tmp_path / "missing.pksparse")


def test_bitmask_is_one_bit_per_weight_before_compression():
    w = torch.zeros(10, 13)
    w[3, 4] = 2.0
    frames = _frames(encode_sparse_state_dict({"w": w}))
    assert len(frames[1]) == math.ceil(130 / 8)  # the mask frame
    assert frames[2] == struct.pack("<f", 2.0)  # the values frame: just the one value
