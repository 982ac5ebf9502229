"""Measurement: exact parameter counts (tied, masked), MACs, size, latency, peak memory, evaluate, analyze."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from prunekit.errors import ConfigError
from prunekit.measure import (
    LatencyStats,
    analyze,
    count_macs,
    count_params,
    effective_state_dict,
    evaluate,
    macs_by_module,
    measure_latency,
    model_size,
    named_effective_parameters,
    params_by_module,
    peak_memory_bytes,
)
from prunekit.measure.macs import _flop_counter


class Mask(nn.Module):
    """The kind of parametrization the sparse engine registers: ``weight -> weight * mask``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def small_cnn() -> nn.Sequential:
    # conv 3*4*3*3 + 4 = 112; bn 4 + 4 = 8; linear 4*6*6*5 + 5 = 725  -> 845
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


def forward_counter(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


# ---------------------------------------------------------------- params


def test_linear_params_exact():
    count = count_params(nn.Linear(10, 5))
    assert (count.total, count.nonzero) == (55, 55)
    assert count.sparsity == 0.0


def test_small_cnn_params_exact_and_by_module():
    model = small_cnn()
    assert count_params(model).total == 112 + 8 + 725
    by_module = params_by_module(model)
    assert {name: c.total for name, c in by_module.items()} == {"0": 112, "1": 8, "4": 725}


def test_tied_weights_counted_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    assert sum(t.numel() for t in model.state_dict().values()) == 80  # the naive count doubles it
    assert count_params(model).total == 40
    assert [name for name, _ in named_effective_parameters(model)] == ["0.weight"]


def test_nonzero_after_zeroing_known_entries():
    model = nn.Linear(10, 5)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(1.0)
        model.weight[0, :4] = 0
        model.weight[3, 7] = 0
        model.bias[2] = 0
    count = count_params(model)
    assert (count.total, count.nonzero) == (55, 49)
    assert count.sparsity == pytest.approx(6 / 55)


def test_parametrize_mask_counts_effective_weight_once():
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.3)
    mask = torch.ones(5, 10)
    mask[:, :4] = 0  # 20 of 50 weights masked
    parametrize.register_parametrization(model[0], "weight", Mask(mask))
    count = count_params(model)
    assert count.total == 55 + 12  # not + 50 for parametrizations.weight.original, not + 50 for the mask
    assert count.nonzero == 55 + 12 - 20
    assert int(torch.count_nonzero(model[0].parametrizations.weight.original)) == 50  # stored one is dense
    assert {name for name, _ in named_effective_parameters(model)} == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }
    assert {name: (c.total, c.nonzero) for name, c in params_by_module(model).items()} == {
        "0": (55, 35),
        "2": (12, 12),
    }


def test_torch_prune_counts_effective_weight():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1, 51, dtype=torch.float32).view(5, 10))
    prune.l1_unstructured(model[0], "weight", amount=20)  # removes the 20 smallest |w|: 1..20
    count = count_params(model)
    assert count.total == 55 + 12
    assert count.nonzero == 55 + 12 - 20
    effective = dict(named_effective_parameters(model))
    assert set(effective) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert int(torch.count_nonzero(effective["0.weight"])) == 30
    assert effective["0.weight"].min() == 0 and effective["0.weight"].flatten()[20] == 21


# ---------------------------------------------------------------- MACs


def test_linear_macs_exact():
    assert count_macs(nn.Linear(10, 5), torch.zeros(3, 10)) == 3 * 10 * 5


def test_conv_macs_by_hand():
    # N * Cout * Hout * Wout * (Cin / groups) * kh * kw
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(2, 3, 16, 16)) == 2 * 8 * 16 * 16 * 3 * 3 * 3
    grouped = nn.Conv2d(4, 8, 3, stride=2, groups=2)  # 15x15 -> 7x7
    assert count_macs(grouped, torch.zeros(1, 4, 15, 15)) == 1 * 8 * 7 * 7 * 2 * 3 * 3


def test_macs_by_module_on_leaves_and_sums_to_total():
    model = small_cnn()
    x = torch.zeros(2, 3, 8, 8)
    conv = 2 * 4 * 6 * 6 * 3 * 9
    linear = 2 * 144 * 5
    assert macs_by_module(model, x) == {"0": conv, "4": linear}
    assert count_macs(model, x) == conv + linear


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


def test_attention_macs_counted_on_fast_path_and_cpu_sdpa():
    # eval + no_grad would take the fused fast path, and need_weights=False the CPU sdpa kernel:
    # both have no formula in torch's flop counter and would count 0 MACs.
    x = torch.zeros(1, 5, 8)
    in_proj, scores, values, out_proj = 5 * 8 * 24, 5 * 5 * 8, 5 * 5 * 8, 5 * 8 * 8
    assert count_macs(Attention(), x) == in_proj + scores + values + out_proj
    assert torch.backends.mha.get_fastpath_enabled()


def test_lstm_macs_counted():
    # per step and layer: 4 gates x hidden x (input + hidden); biases are not MACs
    model = nn.LSTM(8, 16, batch_first=True)
    assert count_macs(model, torch.zeros(2, 5, 8)) == 2 * 5 * 4 * 16 * (8 + 16)
    assert torch.backends.mkldnn.enabled


def test_macs_of_a_cnn_count_with_onednn_on_and_without_module_tracking():
    # oneDNN off would run convolutions ~3x slower (it is only needed for RNNs), and torch's per-module
    # tracker is dropped (we read the total only): both would silently cost time, not change the count.
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.backends.mkldnn.enabled)
            return x

    model = nn.Sequential(Probe(), nn.Conv2d(3, 4, 3, groups=1), nn.Conv2d(4, 4, 3, groups=4))
    assert count_macs(model, torch.zeros(1, 3, 8, 8)) == 4 * 6 * 6 * 27 + 4 * 4 * 4 * 9
    assert seen == [torch.backends.mkldnn.enabled] == [True]
    assert _flop_counter().mod_tracker.parents == ("Global",)


def test_masked_model_has_dense_macs():
    dense = nn.Linear(10, 5)
    masked = nn.Linear(10, 5)
    parametrize.register_parametrization(masked, "weight", Mask(torch.zeros(5, 10)))
    x = torch.zeros(3, 10)
    assert count_macs(masked, x) == count_macs(dense, x) == 150


def test_macs_restore_training_flags_per_module():
    model = small_cnn().train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    count_macs(model, torch.zeros(1, 3, 8, 8))
    macs_by_module(model, torch.zeros(1, 3, 8, 8))
    assert model.training and model[0].training and not model[1].training


def test_macs_with_dict_and_tuple_inputs():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    model = TwoInputs()
    x, y = torch.zeros(2, 4), torch.zeros(2, 6)
    expected = 2 * 4 * 3 + 2 * 6 * 3
    assert count_macs(model, (x, y)) == expected
    assert count_macs(model, {"x": x, "y": y}) == expected


# ---------------------------------------------------------------- size


def test_size_compressed_smaller_for_mostly_zero_model():
    torch.manual_seed(0)
    dense = nn.Linear(256, 256)
    masked = nn.Linear(256, 256)
    masked.load_state_dict(dense.state_dict())
    mask = (torch.rand(256, 256) < 0.05).float()  # keep ~5 %
    parametrize.register_parametrization(masked, "weight", Mask(mask))
    raw = (256 * 256 + 256) * 4
    size_dense, size_masked = model_size(dense), model_size(masked)
    assert size_dense.codec == size_masked.codec == "zstd-9"
    # same tensors, same shapes: same safetensors size; only the raw float bytes plus a small header
    assert size_masked.dense_bytes == size_dense.dense_bytes
    assert raw < size_dense.dense_bytes < raw + 1024
    # random floats hardly compress; 95 % zeros do
    assert size_dense.compressed_bytes > 0.8 * size_dense.dense_bytes
    assert size_masked.compressed_bytes < 0.25 * size_masked.dense_bytes
    assert size_masked.ratio > 4


def test_effective_state_dict_drops_masks_and_originals():
    para = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    parametrize.register_parametrization(para[0], "weight", Mask(torch.zeros(3, 4)))
    state = effective_state_dict(para)
    assert set(state) == {
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }
    assert torch.count_nonzero(state["0.weight"]) == 0

    pruned = nn.Linear(4, 3)
    prune.random_unstructured(pruned, "weight", amount=0.5)
    state = effective_state_dict(pruned)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], pruned.weight_orig.detach() * pruned.weight_mask)


def test_size_of_tied_model_saves_shared_tensor_once():
    emb = nn.Embedding(100, 16)
    head = nn.Linear(16, 100, bias=False)
    head.weight = emb.weight
    tied = nn.Sequential(emb, head)
    raw = 100 * 16 * 4
    assert raw < model_size(tied, zstd_level=3).dense_bytes < raw + 256  # the shared tensor once, + header


def test_size_rejects_bad_level():
    with pytest.raises(ConfigError, match="zstd_level"):
        model_size(nn.Linear(2, 2), zstd_level=0)


# ---------------------------------------------------------------- latency


def test_latency_stats_consistent_and_threads_restored():
    model = nn.Linear(10, 5)
    calls = forward_counter(model)
    previous = torch.get_num_threads()
    stats = measure_latency(model, torch.zeros(3, 10), runs=7, warmup=2, threads=1)
    assert isinstance(stats, LatencyStats)
    assert len(calls) == 9  # warm-up + timed runs
    assert (stats.runs, stats.warmup, stats.batch_size, stats.threads) == (7, 2, 3, 1)
    assert 0 < stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0
    assert torch.get_num_threads() == previous
    json.dumps(stats.to_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"), ({"threads": 0}, "threads")],
)
def test_latency_validates_before_running(kwargs, message):
    model = nn.Linear(10, 5)
    calls = forward_counter(model)
    with pytest.raises(ConfigError, match=message):
        measure_latency(model, torch.zeros(1, 10), **kwargs)
    assert calls == []


# ---------------------------------------------------------------- memory


def test_peak_memory_counts_live_activations_and_grows_with_batch():
    model = nn.Sequential(
        nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    small = peak_memory_bytes(model, torch.zeros(8, 256))
    large = peak_memory_bytes(model, torch.zeros(64, 256))
    # at least a Linear output and its ReLU output (float32, 1024 wide) are alive together
    assert small >= 2 * 8 * 1024 * 4
    assert large == 8 * small
    assert peak_memory_bytes(nn.Linear(10, 5), torch.zeros(3, 10)) == 3 * 5 * 4  # just the output


# ---------------------------------------------------------------- evaluate / analyze


def test_evaluate_runs_in_eval_no_grad_and_restores():
    model = small_cnn().train()
    seen = {}

    def eval_fn(m: nn.Module) -> float:
        seen["training"] = m.training
        seen["grad"] = torch.is_grad_enabled()
        return 0.75

    assert evaluate(model, eval_fn) == 0.75
    assert seen == {"training": False, "grad": False}
    assert model.training
    assert evaluate(model, lambda m: torch.tensor(0.5)) == 0.5


@pytest.mark.parametrize("bad", ["0.9", None, True, [0.9]])
def test_evaluate_rejects_non_numbers(bad):
    with pytest.raises(ConfigError, match="eval_fn must return a number"):
        evaluate(nn.Linear(2, 2), lambda m: bad)


def test_analyze_adds_up_and_serialises():
    model = small_cnn()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.1)
    parametrize.register_parametrization(model[4], "weight", Mask(torch.zeros(5, 144)))
    x = torch.zeros(2, 3, 8, 8)
    profile = analyze(model, x, runs=3, warmup=1, threads=1, eval_fn=lambda m: 0.5)
    assert profile.params.total == 845
    assert profile.params.nonzero == 845 - 720
    assert profile.macs == count_macs(model, x)
    assert [(r.name, r.kind) for r in profile.layers] == [
        ("0", "Conv2d"),
        ("1", "BatchNorm2d"),
        ("4", "Linear"),
    ]
    assert sum(r.params for r in profile.layers) == profile.params.total
    assert sum(r.nonzero for r in profile.layers) == profile.params.nonzero
    assert sum(r.macs for r in profile.layers) == profile.macs
    assert profile.layers[2].sparsity == pytest.approx(720 / 725)
    assert profile.latency is not None and profile.latency.runs == 3
    assert profile.accuracy == 0.5
    assert profile.batch_size == 2
    assert profile.peak_memory_bytes > 0
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["params"]["total"] == 845
    assert data["layers"][0]["macs"] == 2 * 4 * 6 * 6 * 27


def test_analyze_without_latency_and_validation_first():
    model = nn.Linear(10, 5)
    profile = analyze(model, torch.zeros(3, 10), latency=False)
    assert (profile.params.total, profile.macs, profile.latency, profile.accuracy) == (55, 150, None, None)
    calls = forward_counter(model)
    with pytest.raises(ConfigError, match="runs"):
        analyze(model, torch.zeros(3, 10), runs=0)
    with pytest.raises(ConfigError, match="eval_fn"):
        analyze(model, torch.zeros(3, 10), eval_fn=0.9)
    assert calls == []


def test_count_macs_with_a_parameter_passed_straight_into_a_module():
    """CaiT/PiT pass a view of the class token into a block; made under no_grad, that view requires grad but
    has no autograd history, and torch's module tracker asserts on it unless no parameter requires grad
    during the count. The flags come back afterwards."""

    class TokenIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls = nn.Parameter(torch.zeros(1, 1, 8))
            self.block = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.cls.expand(x.shape[0], -1, -1)) + self.block(x)

    model = TokenIn()
    assert count_macs(model, torch.zeros(2, 3, 8)) == 2 * 8 * 8 + 2 * 3 * 8 * 8
    assert all(p.requires_grad for p in model.parameters())


def test_a_dense_model_shows_no_weight_sparsity_and_labels_each_figure() -> None:
    import io

    from rich.console import Console

    from prunekit.report.tables import profile_table, summary_table

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(288, 4))
    with torch.no_grad():
        model[3].weight[:2] = 0  # half of the Linear's 1152 weights
    profile = analyze(model, torch.zeros(1, 3, 8, 8), latency=False)
    rows = {row.name: row for row in profile.layers}
    assert rows["1"].sparsity == 0.5 and rows["1"].weight_sparsity is None  # BN: its zero biases only
    assert rows["0"].weight_sparsity == 0.0 and rows["3"].weight_sparsity == 0.5
    assert profile.weight_sparsity == pytest.approx(576 / (216 + 1152))
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(profile_table(profile))
    console.print(summary_table(profile))
    text = console.export_text()
    bn_line = next(line for line in text.splitlines() if "BatchNorm2d" in line)
    assert "50.0%" not in bn_line and "Weight sparsity" in text
    assert "42.1% of prunable weights" in text
    assert "of all parameters zero" in text
