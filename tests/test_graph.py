"""Trace + grouping on hand-built architectures: which channels are coupled, what is pinned and why."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.graph import build_groups, trace


def _members(group) -> set[tuple[str, int]]:
    return {(m.name, m.dim) for m in group.members}


def _group_with(rep, name: str, dim: int):
    return next(g for g in rep.groups if (name, dim) in _members(g))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        return self.head(s + self.conv2(F.relu(self.bn1(self.conv1(s)))))


def test_residual_add_unites_both_branches_and_the_consumers():
    rep = build_groups(Residual(), torch.randn(1, 3, 8, 8))
    res = _group_with(rep, "stem.weight", 0)
    assert {("conv2.weight", 0), ("conv2.bias", 0), ("head.weight", 1), ("conv1.weight", 1)} <= _members(res)
    assert res.width == 8 and not res.pinned
    inner = _group_with(rep, "conv1.weight", 0)
    assert {("bn1.weight", 0), ("bn1.running_var", 0), ("conv2.weight", 1)} <= _members(inner)
    assert inner.width == 16
    assert _group_with(rep, "head.weight", 0).pinned
    assert "model outputs keep their shape" in _group_with(rep, "head.weight", 0).reasons[0]
    assert _group_with(rep, "stem.weight", 1).pinned  # the 3 input channels


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


def test_channel_shuffle_pairs_the_same_offset_of_both_halves():
    rep = build_groups(Shuffle(), torch.randn(1, 3, 4, 4))
    g = _group_with(rep, "a.weight", 0)
    assert _group_with(rep, "b.weight", 0) is g
    assert g.width == 8  # unit j = {a out j, b out j, head in 2j, head in 2j+1}
    head = next(m for m in g.members if m.name == "head.weight")
    assert head.units.tolist() == [u for j in range(8) for u in (j, j)]
    assert any("split" in c for c in g.constraints)


def test_unknown_op_pins_what_flows_through_with_op_and_module():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(5, 2)

        def forward(self, x):
            return self.b(torch.diff(self.a(x), dim=-1))

    rep = build_groups(Odd(), torch.randn(2, 4))
    g = _group_with(rep, "a.weight", 0)
    assert g.pinned
    assert any("diff" in r and "no propagation rule" in r for r in g.reasons)
    assert _group_with(rep, "b.weight", 1).pinned  # consumes a fixed-size tensor


def test_layernorm_over_channels_pins_with_reason():
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3))
    rep = build_groups(net, torch.randn(2, 4))
    ln = _group_with(rep, "1.weight", 0)
    assert ln.pinned and any("normalised over channels" in r for r in ln.reasons)
    assert not _group_with(rep, "2.weight", 0).pinned  # hidden MLP layer stays prunable


def test_unused_parameter_is_not_in_any_group_and_tied_weights_share_slots():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 8)
            self.c = nn.Linear(8, 8)
            self.c.weight = self.b.weight  # tied
            self.unused = nn.Linear(8, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.out(F.relu(self.c(F.relu(self.b(h)))))

    rep = build_groups(Tied(), torch.randn(2, 4))
    names = {m.name for g in rep.groups for m in g.members}
    assert not any(n.startswith("unused") for n in names)
    assert not any(n == "c.weight" for n in names)  # tied: one canonical name, b.weight
    # b is applied to the output of a and of b's tied twin c: a-out, b-in, b-out, c-in all coupled
    g = _group_with(rep, "a.weight", 0)
    assert ("b.weight", 1) in _members(g) and ("b.weight", 0) in _members(g)


def test_module_called_twice_couples_its_input_and_output():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.f = nn.Linear(8, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.f(torch.relu(self.f(self.a(x)))))

    rep = build_groups(Twice(), torch.randn(2, 4))
    g = _group_with(rep, "f.weight", 0)
    assert {("f.weight", 1), ("a.weight", 0), ("out.weight", 1)} <= _members(g)


def test_grouped_and_depthwise_conv_constraints():
    net = nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.Conv2d(16, 16, 3, groups=4, padding=1),
        nn.Conv2d(16, 16, 3, groups=16),
        nn.Conv2d(16, 2, 1),
    )
    rep = build_groups(net, torch.randn(1, 3, 6, 6))
    first = _group_with(rep, "0.weight", 0)
    assert first.width == 4  # offsets 0..3, each present in every one of the 4 groups
    assert any("grouped conv" in c for c in first.constraints)
    dw = _group_with(rep, "2.weight", 0)
    assert dw is _group_with(rep, "1.weight", 0) and dw.width == 4
    assert _group_with(rep, "1.weight", 1).width == 4  # in-per-group slots


def test_trace_handles_dict_inputs_and_tuple_outputs_and_records_output_shapes():
    class Multi(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x, scale):
            h = torch.relu(self.a(x)) * scale
            return self.b(h), {"h": h.sum(-1)}

    tr = trace(Multi(), {"x": torch.randn(2, 3), "scale": torch.tensor(2.0)})
    assert tr.output_shapes == [[2, 2], [2]]
    assert tr.rule_errors == []


def test_functional_depthwise_conv_with_a_number_for_groups_is_pinned_not_broken():
    """timm's BlurPool: ``F.conv2d(x, buffer, groups=self.channels)``. No module attribute carries that
    ``groups``, so cutting the channels would break the forward: they are pinned, with the reason, and the
    rest of the network still prunes exactly."""
    from prunekit.structured import check

    class Blur(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.c = c
            self.register_buffer("filt", torch.ones(c, 1, 3, 3) / 9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.filt, padding=1, groups=self.c)

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), Blur(16), nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
    )
    rep = check(model, torch.randn(1, 3, 16, 16), ratio=0.5)
    reasons = " ".join(r for p in rep.pinned for r in p["reasons"])
    assert rep.ok and "functional depthwise conv (groups=16" in reasons
    assert rep.macs_ratio < 0.9  # the 8 channels between the last two convs are still cut


def test_reading_a_parameters_shape_gives_its_kernel_dims_no_slots():
    """timm's Conv2dSame reads ``self.weight.shape[-2:]`` to compute its padding. Shape reads are recorded
    (for widths taken from one tensor and used for another); a parameter's own dims must not turn into
    slots there, or its kernel dims would form a prunable group and be cut."""
    from prunekit.structured import check

    class SameConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kh, kw = self.weight.shape[-2:]
            ih, iw = x.size()[-2:]
            ph, pw = max(kh - 1 - (ih - 1) % self.stride[0], 0), max(kw - 1 - (iw - 1) % self.stride[1], 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    model = nn.Sequential(SameConv(3, 8, 3, stride=2), nn.ReLU(), SameConv(8, 4, 3))
    x = torch.randn(1, 3, 15, 15)
    rep = build_groups(model, x)
    assert {m.dim for g in rep.groups for m in g.members if m.name.endswith("weight")} == {0, 1}
    assert check(model, x, ratio=0.5).ok
