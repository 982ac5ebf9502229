"""Stacks of view/transpose/permute/flatten/reshape between two layers prune exactly or stay whole.

A view of a channel dim that an earlier transpose + merge interleaved (two stacked channel shuffles) must
keep the structure the later view needs, or pin: never a silently different model.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _engine_helpers import randomize
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.errors import ApplyError
from prunekit.structured import check, groups, prune
from prunekit.structured.oracle import compare, masked_reference, run_outputs


def shuffle(x: torch.Tensor, g: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class TwoShuffles(nn.Module):
    def __init__(self, c: int, g1: int, g2: int) -> None:
        super().__init__()
        self.g1, self.g2 = g1, g2
        self.a, self.b = nn.Conv2d(3, c, 1), nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(shuffle(shuffle(torch.relu(self.a(x)), self.g1), self.g2))


@pytest.mark.parametrize("c,g1,g2", [(32, 8, 8), (32, 4, 8), (24, 4, 6), (24, 6, 4), (16, 4, 4)])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_stacked_channel_shuffles_are_exact(c: int, g1: int, g2: int, ratio: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    net = randomize(TwoShuffles(c, g1, g2))
    rep = check(net, x, ratio=ratio)
    assert rep.rule_errors == []
    assert rep.ok, f"max_abs_err {rep.max_abs_err}"


def test_second_shuffle_of_an_interleaved_dim_pins_with_a_reason() -> None:
    rep = groups(TwoShuffles(32, 8, 8), torch.randn(1, 3, 4, 4))
    (group,) = [g for g in rep.groups if any(m.name == "a.weight" and m.dim == 0 for m in g.members)]
    assert group.pinned
    assert any("after a reorder" in r for r in group.reasons), group.reasons


def test_stacked_shuffles_that_stay_block_contiguous_still_prune() -> None:
    # g1=2 then g2=4: the second view sees slots varying along both dims, equal removal per block is possible
    x = torch.randn(1, 3, 4, 4)
    rep = check(randomize(TwoShuffles(32, 2, 4)), x, ratio=0.5)
    assert rep.ok and rep.removed_units > 0


# ---------------------------------------------------------------------------------------------------------
# random stacks


class Stack(nn.Module):
    """conv -> a list of shape ops (sizes computed from the runtime shape, as real code does) -> Linear."""

    def __init__(self, c: int, hw: int, ops: list[tuple], n_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 1)
        self.ops = ops
        self.fc = nn.Linear(c * hw * hw, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x)
        for op in self.ops:
            t = _run(t, op)
        return self.fc(t.flatten(1))


def _run(t: torch.Tensor, op: tuple) -> torch.Tensor:
    kind = op[0]
    if kind == "relu":
        return torch.relu(t)
    if kind == "transpose":
        return t.transpose(op[1], op[2])
    if kind == "permute":
        return t.permute(0, *op[1])
    if kind == "merge":  # dims d, d+1 into one
        d = op[1]
        if op[2]:
            return t.flatten(d, d + 1)
        return t.reshape(*t.shape[:d], -1, *t.shape[d + 2 :])
    _, d, size, style = op  # split dim d keeping one factor `size`, the other follows the runtime width
    head, tail = t.shape[:d], t.shape[d + 1 :]
    if style == "first-1":  # (size, -1)
        return t.view(*head, size, -1, *tail)
    if style == "first":  # (size, c // size)
        return t.view(*head, size, t.shape[d] // size, *tail)
    return t.reshape(*head, -1, size, *tail)  # (-1, size)


@st.composite
def stacks(draw):
    c = draw(st.sampled_from([12, 16, 24, 32, 36]))
    hw = draw(st.sampled_from([1, 2]))
    shape = [c, hw, hw]  # without the batch dim
    ops: list[tuple] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["split", "split", "transpose", "permute", "merge", "relu", "shuffle"]))
        if kind == "relu":
            ops.append(("relu",))
        elif kind == "transpose" and len(shape) >= 2:
            i, j = draw(st.permutations(range(len(shape))))[:2]
            ops.append(("transpose", i + 1, j + 1))
            shape[i], shape[j] = shape[j], shape[i]
        elif kind == "permute" and len(shape) >= 2:
            perm = draw(st.permutations(range(len(shape))))
            ops.append(("permute", tuple(p + 1 for p in perm)))
            shape = [shape[p] for p in perm]
        elif kind == "merge" and len(shape) >= 2:
            d = draw(st.integers(0, len(shape) - 2))
            ops.append(("merge", d + 1, draw(st.booleans())))
            shape[d : d + 2] = [shape[d] * shape[d + 1]]
        elif kind in ("split", "shuffle"):
            d = draw(st.sampled_from([i for i in range(len(shape))]))
            divisors = [k for k in range(2, shape[d]) if shape[d] % k == 0]
            if not divisors:
                continue
            size = draw(st.sampled_from(divisors))
            style = draw(st.sampled_from(["first-1", "first", "last-1"]))
            ops.append(("split", d + 1, size, style))
            pair = [size, shape[d] // size] if style != "last-1" else [shape[d] // size, size]
            shape[d : d + 1] = pair
            if kind == "shuffle":  # the two new dims swapped and merged back: channels interleaved
                ops += [("transpose", d + 1, d + 2), ("merge", d + 1, draw(st.booleans()))]
                shape[d : d + 2] = [pair[0] * pair[1]]
    return c, hw, ops


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks(), st.sampled_from([0.25, 0.5]), st.integers(0, 2**16))
@example((32, 1, [("split", 1, 8, "first-1"), ("transpose", 1, 2), ("merge", 1, True)] * 2), 0.5, 0)
def test_random_reshape_stacks_are_exact_or_pinned(spec, ratio: float, seed: int) -> None:
    c, hw, ops = spec
    torch.manual_seed(seed)
    net = randomize(Stack(c, hw, ops, 3), seed)
    x = torch.randn(2, 3, hw, hw)
    rep = check(net, x, ratio=ratio)
    assert rep.rule_errors == []
    assert rep.ok, f"{ops}: max_abs_err {rep.max_abs_err}"
    model = copy.deepcopy(net)
    try:
        res = prune(model, x, ratio=ratio, measure=False)
    except ApplyError:  # refused and rolled back: never a wrong model
        after, before = model.state_dict(), net.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        return
    ref = run_outputs(masked_reference(net, res.plan), x)
    assert compare(run_outputs(model, x), ref).ok, ops
    assert math.prod(model.fc.weight.shape) <= math.prod(net.fc.weight.shape)


class OneChannelPerGroup(nn.Module):
    def __init__(self, c: int, g: int) -> None:
        super().__init__()
        self.g = g
        self.conv, self.fc = nn.Conv2d(3, c, 1), nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(shuffle(self.conv(x), self.g), 1).flatten(1))


@pytest.mark.parametrize("c,g", [(3, 3), (2, 2), (4, 4)])
def test_shuffle_with_one_channel_per_group_keeps_its_channels(c: int, g: int) -> None:
    # view(b, g, c // g, h, w) with c == g: the computed 1 would become 0 after any cut
    net = randomize(TwoShuffles(8, 2, 2))  # a normal shuffle next to it still prunes
    assert check(net, torch.randn(1, 3, 4, 4), ratio=0.5).removed_units > 0
    model = randomize(OneChannelPerGroup(c, g))
    res = prune(model, torch.randn(2, 3, 6, 6), ratio=0.5, measure=False)
    assert res.removed_units == 0 and model.conv.out_channels == c
