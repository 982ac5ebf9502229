"""prune / check / apply on hand-built architectures: exact widths, exactness oracle, rollback."""

from __future__ import annotations

import copy
import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _engine_helpers import assert_exact, randomize
from torch import nn

from prunekit.errors import ApplyError, ConfigError
from prunekit.plan import Plan
from prunekit.structured import check, groups, prune
from prunekit.structured.api import plan_prune
from prunekit.structured.apply import apply

apply_mod = importlib.import_module("prunekit.structured.apply")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class Block(nn.Module):  # residual + BN
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.c2 = nn.Conv2d(64, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = s + self.c2(F.relu(self.bn(self.c1(s))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 4), 1))


def test_prune_residual_bn_flatten_linear_widths_and_exactness():
    net = randomize(Block())
    x = torch.randn(2, 3, 8, 8)
    assert_exact(net, x)
    res = prune(net, x, ratio=0.5)
    assert (net.stem.out_channels, net.c1.out_channels, net.bn.num_features) == (8, 32, 32)
    assert (net.c2.in_channels, net.c2.out_channels, net.fc.in_features) == (32, 8, 8 * 16)
    assert net.bn.running_mean.shape == (32,) and net.fc.out_features == 5
    assert net(x).shape == (2, 5)
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    assert res.removed_units == res.target_units == 8 + 32


class C2f(nn.Module):  # YOLOv8-style chunk + cat, plus a plain concat
    def __init__(self) -> None:
        super().__init__()
        self.cv1 = nn.Conv2d(3, 16, 1)
        self.m = nn.Conv2d(8, 8, 3, padding=1)
        self.side = nn.Conv2d(3, 6, 1)
        self.cv2 = nn.Conv2d(8 * 3 + 6, 4, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.append(F.silu(self.m(y[-1])))
        return self.cv2(torch.cat([*y, self.side(x)], 1))


def test_chunk_cat_and_concat_prune_exactly():
    net = randomize(C2f())
    x = torch.randn(1, 3, 8, 8)
    assert_exact(net, x)
    prune(net, x, ratio=0.5)
    assert net.cv1.out_channels == 8 and net.m.in_channels == 4 and net.m.out_channels == 4
    assert net.side.out_channels == 3 and net.cv2.in_channels == 4 + 4 + 4 + 3
    assert net(x).shape == (1, 4, 8, 8)


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a = self.a(x)
        y = torch.cat([a, self.b(a).relu()], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y)


def test_channel_shuffle_prunes_exactly():
    net = randomize(Shuffle())
    x = torch.randn(1, 3, 4, 4)
    assert_exact(net, x)
    prune(net, x, ratio=0.5)
    assert (net.a.out_channels, net.b.out_channels, net.head.in_channels) == (4, 4, 8)


def test_grouped_and_depthwise_conv_prune_exactly():
    net = randomize(
        nn.Sequential(
            nn.Conv2d(3, 16, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, groups=4, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, groups=16, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 2, 1),
        )
    )
    x = torch.randn(1, 3, 6, 6)
    assert_exact(net, x)
    prune(net, x, ratio=0.5)
    assert (net[0].out_channels, net[3].in_channels, net[3].groups) == (8, 8, 4)
    # grouped out offsets 4 -> 2 per group; depthwise x2 removes whole groups
    assert (net[3].out_channels, net[5].in_channels, net[5].groups, net[5].out_channels) == (8, 8, 8, 16)
    assert net[6].num_features == 16 and net[8].in_channels == 16


def test_groupnorm_removes_whole_groups():
    net = randomize(nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 2, 1)))
    x = torch.randn(2, 3, 6, 6)
    assert_exact(net, x)
    prune(net, x, ratio=0.5)
    assert (net[0].out_channels, net[1].num_groups, net[1].num_channels, net[3].in_channels) == (8, 2, 8, 8)


class Attention(nn.Module):  # linear-layer attention with a head split, SDPA, MLP, residual
    def __init__(self, dim: int = 16, heads: int = 4, hidden: int = 24) -> None:
        super().__init__()
        self.heads, self.dh = heads, 8
        self.embed = nn.Linear(6, dim)
        self.q, self.k, self.v = (nn.Linear(dim, heads * 8) for _ in range(3))
        self.o = nn.Linear(heads * 8, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.embed(x)
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, -1, self.dh).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        h = h + self.o(a.transpose(1, 2).reshape(b, n, -1))
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h)


def test_attention_removes_whole_heads_and_mlp_neurons():
    net = randomize(Attention())
    x = torch.randn(2, 5, 6)
    rep = groups(net, x)
    heads = next(g for g in rep.groups if any(m.name == "q.weight" and m.dim == 0 for m in g.members))
    assert heads.width == 4 and any("whole heads" in c for c in heads.constraints)
    assert_exact(net, x)
    prune(net, x, ratio=0.5)
    assert (net.q.out_features, net.k.out_features, net.v.out_features, net.o.in_features) == (16, 16, 16, 16)
    assert (net.fc1.out_features, net.embed.out_features) == (12, 8)
    assert net(x).shape == (2, 5, 3)


def test_tied_weights_module_called_twice_and_dict_input_tuple_output():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.f = nn.Linear(8, 8)
            self.g = nn.Linear(8, 8)
            self.g.weight = self.f.weight
            self.unused = nn.Linear(3, 3)
            self.out = nn.Linear(8, 2)

        def forward(self, x, y):
            h = torch.tanh(self.f(torch.relu(self.f(self.a(x)))))
            h = h + torch.relu(self.g(self.a(y)))
            return self.out(h), (h.shape[0], self.out(h * 2))

    net = randomize(Net())
    x = {"x": torch.randn(2, 4), "y": torch.randn(2, 4)}
    assert_exact(net, x)
    prune(net, x, ratio=0.5)
    assert net.f.weight is net.g.weight and net.f.weight.shape == (4, 4)
    assert net.unused.weight.shape == (3, 3) and net.out.in_features == 4


def test_ignore_round_to_and_global_scope():
    net = randomize(Block())
    x = torch.randn(1, 3, 8, 8)
    m = copy.deepcopy(net)
    prune(m, x, ratio=0.5, ignore=["fc"])  # an ignored module keeps every parameter shape
    assert m.fc.in_features == 256 and m.stem.out_channels == 16 and m.c1.out_channels == 32
    m = copy.deepcopy(net)
    prune(m, x, ratio=0.5, ignore=[m.c1])
    assert m.c1.weight.shape == (64, 16, 3, 3) and m.c2.out_channels == 16
    m = copy.deepcopy(net)
    prune(m, x, ratio=0.3, round_to=8)
    assert m.c1.out_channels % 8 == 0 and m.stem.out_channels % 8 == 0 and m.c1.out_channels < 64
    m = copy.deepcopy(net)
    res = prune(m, x, ratio=0.4, scope="global")
    assert res.removed_units == res.target_units == round(0.4 * (16 + 64))
    assert_exact(net, x, ratio=0.4, scope="global")
    m = copy.deepcopy(net)
    res = prune(m, x, ratio=0.5, max_ratio=0.25, scope="global")
    assert m.c1.out_channels >= 48 and m.stem.out_channels >= 12  # capped per group


def test_bad_arguments_raise_config_error_before_touching_the_model():
    net = Block()
    before = _state(net)
    bad = (
        {"ratio": 1.5},
        {"scope": "everywhere"},
        {"round_to": 0},
        {"max_ratio": 0},
        {"criterion": "nope"},
        {"ignore": ["no_such_module"]},
    )
    for kw in bad:
        with pytest.raises(ConfigError):
            prune(net, torch.randn(1, 3, 8, 8), **kw)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_fault_mid_apply_restores_the_model_bit_exactly(monkeypatch):
    net = randomize(Block())
    x = torch.randn(1, 3, 8, 8)
    plan, _ = plan_prune(net, x, ratio=0.5)
    before = _state(net)
    params_before = {n: p for n, p in net.named_parameters()}
    attrs_before = (net.c1.out_channels, net.bn.num_features, net.fc.in_features)
    calls = {"n": 0}
    real = apply_mod._set_attr

    def flaky(module, attr, value):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fault")
        real(module, attr, value)

    monkeypatch.setattr(apply_mod, "_set_attr", flaky)
    with pytest.raises(ApplyError, match=r"injected fault.*restored"):
        apply(net, plan, x)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert all(p is params_before[n] for n, p in net.named_parameters())
    assert (net.c1.out_channels, net.bn.num_features, net.fc.in_features) == attrs_before
    assert net(x).shape == (1, 5)


def test_failed_verification_forward_rolls_back():
    class Static(nn.Module):  # reshape with a hard-coded channel count: cutting breaks the forward
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Linear(8 * 4, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)).reshape(x.shape[0], 8 * 4))

    net = randomize(Static())
    x = torch.randn(1, 3, 2, 2)
    before = _state(net)
    with pytest.raises(ApplyError, match="verification forward"):
        prune(net, x, ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.a.out_channels == 8


def test_check_leaves_the_model_untouched_and_reports_pins():
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    net = randomize(net)
    before = _state(net)
    rep = check(net, torch.randn(3, 4))
    assert rep.ok and rep.params_ratio < 1 and rep.macs_ratio < 1
    assert any("normalised over channels" in r for p in rep.pinned for r in p["reasons"])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert rep.to_dict()["ok"] is True


def test_hf_bert_prunes_heads_and_ffn_exactly():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    net = randomize(transformers.BertModel(cfg).eval())
    x = {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    rep = groups(net, x)
    heads = next(
        g
        for g in rep.groups
        if any(m.name.endswith("0.attention.self.query.weight") and m.dim == 0 for m in g.members)
    )
    assert heads.width == 4 and not heads.pinned  # whole heads
    assert_exact(net, x)
    prune(net, x, ratio=0.5)
    layer = net.encoder.layer[0]
    assert layer.attention.self.query.out_features == 16 and layer.intermediate.dense.out_features == 32
    assert net(**x).last_hidden_state.shape == (2, 8, 32)


def test_ignored_module_is_named_first_among_its_groups_reasons():
    net = randomize(Block())
    rep = groups(net, torch.randn(1, 3, 8, 8), ignore=["c1"])
    g = next(g for g in rep.groups if any(m.name == "c1.weight" and m.dim == 0 for m in g.members))
    assert g.pinned and g.reasons[0] == "ignored by user (c1)"


class HandLinear(nn.Linear):
    """``x @ self.weight.T + self.bias``: nn.Linear written by hand (Falcon's FalconLinear, LoRA wrappers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


def test_hand_written_linear_x_at_weight_t_prunes_like_linear():
    # x @ W.T with W a 2-D parameter is a linear layer, not a contraction of two activations (which would make
    # every width it touches one unit)
    model = nn.Sequential(HandLinear(6, 16), nn.ReLU(), HandLinear(16, 12), nn.ReLU(), HandLinear(12, 4))
    x = torch.randn(3, 6)
    rep = assert_exact(randomize(copy.deepcopy(model)), x, 0.5)
    assert sorted(g.width for g in rep.plan.groups) == [12, 16]
    prune(model, x, ratio=0.5, measure=False)
    assert [(m.in_features, m.out_features) for m in model[::2]] == [(6, 8), (8, 6), (6, 4)]


def test_identity_permute_of_a_square_parameter_is_not_taken_for_a_transpose():
    class Mix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 4)
            self.mix = nn.Parameter(torch.randn(16, 16) + 3 * torch.eye(16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)) @ self.mix.permute(0, 1))

    assert_exact(randomize(Mix()), torch.randn(3, 6), 0.5)


class PostProcessed(nn.Module):
    """A head, then a data-sized output (boolean mask), as detectors post-process their scores."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = self.head(torch.relu(self.body(x))).flatten(1)
        kept = scores[scores > scores.mean()]
        return scores, kept, torch.zeros(kept.shape[0], 2)  # sized through a Python int (as Mask R-CNN)


def test_outputs_sized_by_the_data_may_change_size_with_the_cut():
    # the kept scores are a boolean selection: after the cut their count changes, and that is not a broken
    # model, so apply's verification does not report "output shapes changed"
    torch.manual_seed(0)
    model, x = randomize(PostProcessed()), torch.randn(2, 3, 12, 12)
    res = prune(model, x, ratio=0.5, measure=False)
    assert res.plan.output_shapes == [None] * 3  # once sizes follow values, no output size is checked
    assert Plan.from_dict(json.loads(json.dumps(res.plan.to_dict()))).output_shapes == [None] * 3
    assert model.body[0].out_channels == 8 and model(x)[0].shape == (2, 256)


def test_check_compares_at_a_submodule_and_names_bad_ones():
    torch.manual_seed(0)
    model, x = randomize(PostProcessed()), torch.randn(2, 3, 12, 12)
    rep = check(model, x, ratio=0.5, compare_at="head")
    assert rep.ok and rep.compared_at == "head" and rep.to_dict()["compared_at"] == "head"
    with pytest.raises(ConfigError, match="no submodule 'neck'"):
        check(model, x, ratio=0.5, compare_at="neck")
    model.spare = nn.Linear(2, 2)  # registered, never called by forward
    with pytest.raises(ConfigError, match="was not called"):
        check(model, x, ratio=0.5, compare_at="spare")


def test_torchvision_detector_prunes_and_its_head_is_exact():
    # SSDlite compared at its head (its final boxes: tests/test_replay.py); prune itself must not trip over
    # the box count being data-sized
    pytest.importorskip("torchvision")
    from prunekit.models.spec import load_model

    torch.manual_seed(0)
    model, x = randomize(load_model("torchvision:ssdlite320_mobilenet_v3_large")), torch.rand(1, 3, 96, 96)
    rep = assert_exact(model, x, 0.5, compare_at="head")
    assert rep.macs_ratio < 0.5 and all(s is None for s in rep.plan.output_shapes)
    prune(model, x, ratio=0.5, measure=False)
    assert set(model(x)[0]) == {"boxes", "scores", "labels"}


def test_where_with_only_a_condition_pins_what_it_reads_without_a_rule_error():
    class Where(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.b(torch.relu(self.a(x)))
            return self.c(torch.relu(y)), torch.where(y > 0)[1]  # channel indices: they depend on the width

    rep = assert_exact(randomize(Where()), torch.randn(1, 3, 4, 4), 0.5)
    assert [g.width for g in rep.plan.groups] == [8]  # a's outputs; b's are read by where(cond)
    assert any("indices of nonzeros" in r for p in rep.pinned for r in p["reasons"])


class Recurrent(nn.Module):
    """Linear -> LSTM/GRU/RNN -> Linear on the last step."""

    def __init__(self, cell: type, **kw) -> None:
        super().__init__()
        self.emb = nn.Linear(6, 12)
        self.rnn = cell(12, 16, batch_first=True, **kw)
        self.fc = nn.Linear(16 * (2 if kw.get("bidirectional") else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(torch.relu(self.emb(x)))[0][:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True}], ids=["1-layer", "2-layer-bi"])
def test_rnn_hidden_units_are_removed_exactly(cell, kw):
    # unit j: its gate rows and recurrent column in every layer and direction, the next layer's input
    # columns; nn.RNN* has one hidden_size, so a unit goes from all layers at once
    from prunekit.measure import count_macs

    torch.manual_seed(0)
    model, x = randomize(Recurrent(cell, **kw)), torch.randn(2, 5, 6)
    rep = assert_exact(model, x, 0.5)
    assert sorted(g.width for g in rep.plan.groups) == [12, 16]
    macs = count_macs(model, x)
    prune(model, x, ratio=0.5, measure=False)
    assert (model.rnn.input_size, model.rnn.hidden_size) == (6, 8)
    assert model.fc.in_features == 8 * (2 if kw else 1) and model(x).shape == (2, 3)
    assert count_macs(model, x) < macs / 3


def test_rnn_units_stay_with_a_callers_initial_state_or_packed_input():
    class GivenState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = nn.GRU(6, 16), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h0 = torch.zeros(1, x.shape[1], 16)  # made by the caller, with a fixed 16
            return self.fc(self.rnn(x, h0)[0][-1])

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = nn.LSTM(6, 16, batch_first=True), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(x, [5, 3], batch_first=True)
            return self.fc(self.rnn(packed)[1][0][-1])

    rep = assert_exact(randomize(GivenState()), torch.randn(5, 2, 6), 0.5)
    reasons = [r for p in rep.pinned for r in p["reasons"]]
    assert rep.plan.groups == [] and any("initial state passed in" in r for r in reasons)
    assert assert_exact(randomize(Packed()), torch.randn(2, 5, 6), 0.5).plan.groups == []


def test_failed_apply_on_an_rnn_leaves_it_computing_as_before(monkeypatch):
    # nn.LSTM computes from its own list of weight references (_flat_weights, refreshed by its forward when
    # the parameters changed): after a rollback it must compute with the original tensors again
    torch.manual_seed(0)
    model, x = randomize(Recurrent(nn.LSTM, num_layers=2)), torch.randn(2, 5, 6)
    with torch.no_grad():
        before = model(x)
    apply_mod = importlib.import_module("prunekit.structured.apply")

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(apply_mod, "_verify", broken)
    with pytest.raises(ApplyError, match="injected"):
        prune(model, x, ratio=0.5, measure=False)
    with torch.no_grad():
        assert torch.equal(model(x), before) and model.rnn.hidden_size == 16


# --- bad inputs: one ConfigError line, the model untouched ------------------------------------------------


def _pair() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("c1", nn.Conv2d(3, 8, 3))
    net.add_module("act", nn.ReLU())
    net.add_module("fc", nn.Conv2d(8, 4, 3))
    return net, torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize(
    "ratio", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)]
)
def test_ratio_takes_numpy_and_0d_tensor_scalars(ratio):
    net, x = _pair()
    plan, _ = plan_prune(net, x, ratio=ratio, max_ratio=np.float32(0.9), round_to=np.int64(2))
    expected, _ = plan_prune(net, x, ratio=0.5, max_ratio=0.9, round_to=2)
    assert plan.removals == expected.removals
    assert type(plan.meta["ratio"]) is float and json.dumps(plan.to_dict())  # plain JSON values


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": True}, "ratio must be a number"),
        ({"ratio": float("nan")}, "ratio must be a finite number"),
        ({"ratio": float("inf")}, "ratio must be a finite number"),
        ({"ratio": torch.tensor([0.5])}, "ratio must be a number"),
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
        ({"max_ratio": np.float32(0.0)}, r"max_ratio must be in \(0, 1\]"),
        ({"max_ratio": torch.tensor(float("nan"))}, "max_ratio must be a finite number"),
        ({"round_to": np.float64(2.0)}, "round_to must be an integer"),
        ({"round_to": True}, "round_to must be an integer"),
    ],
)
def test_bad_numbers_are_one_config_error_and_the_model_is_untouched(kwargs, match):
    net, x = _pair()
    before = _state(net)
    with pytest.raises(ConfigError, match=match):
        prune(net, x, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_ignore_takes_one_name_as_one_module():
    net, x = _pair()
    one = plan_prune(net, x, ignore="c1")[0]
    listed = plan_prune(net, x, ignore=["c1"])[0]
    assert one.removals == listed.removals == {}  # c1 keeps its channels, so nothing is prunable
    assert [g.width for g in groups(net, x, ignore="fc").prunable_groups] == []
    with pytest.raises(ConfigError, match="no module named 'nope'"):
        check(net, x, ignore="nope")


@pytest.mark.parametrize("verb", [prune, check, plan_prune, groups])
def test_a_non_module_is_one_config_error(verb):
    with pytest.raises(ConfigError, match=r"needs a torch\.nn\.Module as model, got None"):
        verb(None, torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("verb", [prune, check, plan_prune, groups])
def test_a_torchscript_module_is_refused(verb):
    net, x = _pair()
    scripted = torch.jit.script(net)
    with pytest.raises(ConfigError, match=r"TorchScript .* the nn\.Module, then torch\.jit\.script"):
        verb(scripted, x)


def test_a_model_with_sparsify_masks_is_refused_until_remove_masks():
    from prunekit.sparse import remove_masks, sparsify

    net, x = _pair()
    sparsify(net, 0.5)
    before = _state(net)
    for verb in (prune, check, plan_prune):
        with pytest.raises(ConfigError, match=r"'c1' has parametrized weights.*remove_masks\(model\) first"):
            verb(net, x)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ConfigError, match="remove_masks"):
        apply(net, Plan())
    remove_masks(net)
    assert prune(net, x, ratio=0.5).removed_units > 0


@pytest.mark.parametrize(
    "target, shapes",
    [
        (torch.randn(2), r"output \(2, 3\) float32, target \(2,\) float32"),
        (torch.tensor([0, 1, 2]), r"output \(2, 3\) float32, target \(3,\) int64"),
    ],
)
def test_taylor_with_a_target_the_loss_refuses_is_one_line(target, shapes):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = _state(net)
    data = [(torch.randn(2, 4), target)]
    with pytest.raises(ConfigError, match=rf"criterion 'taylor': cross_entropy .* {shapes}"):
        prune(net, torch.randn(2, 4), criterion="taylor", data=data)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
