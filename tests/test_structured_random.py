"""Generated architectures (hypothesis) prune exactly; a fault mid-cut rolls back; unknown ops are pinned.

Each generated network is a stem conv, 1-4 random blocks (residual add, concat, split, chunk + cat,
channel shuffle, grouped/depthwise conv, BatchNorm/GroupNorm/channels-last LayerNorm, SDPA attention over
the spatial tokens) and a pooled MLP head. The MLP's hidden layer is always prunable, so every example must
remove something.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _engine_helpers import assert_exact, randomize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.errors import ApplyError
from prunekit.structured import check, prune
from prunekit.structured import cut as cut_mod
from prunekit.structured.api import plan_prune
from prunekit.structured.cut import apply

KINDS = ("residual", "cat", "split", "chunk", "shuffle", "grouped", "depthwise", "gn", "ln", "attn")
SIZE = 6  # spatial size of the example input


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs are ~50x slower with 2 threads on a busy shared machine (OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RandomBlock(nn.Module):
    """One block of kind ``kind`` mapping ``c_in`` channels to ``self.c_out``."""

    def __init__(self, kind: str, c_in: int, width: int, g: int) -> None:
        super().__init__()
        self.kind, self.g = kind, g
        if kind == "residual":
            self.a, self.bn = nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width)
            self.b = nn.Conv2d(width, c_in, 1)
            self.c_out = c_in
        elif kind == "cat":
            self.a, self.b = nn.Conv2d(c_in, width, 1), nn.Conv2d(c_in, width // 2, 3, padding=1)
            self.c_out = width + width // 2 + c_in
        elif kind == "split":
            self.cut = c_in // 2 + 1
            self.a = nn.Conv2d(self.cut, width, 1)
            self.c_out = width + c_in - self.cut
        elif kind == "chunk":  # YOLOv8 C2f
            self.a, self.b = nn.Conv2d(c_in, 2 * width, 1), nn.Conv2d(width, width, 3, padding=1)
            self.c_out = 3 * width
        elif kind == "shuffle":
            self.a = nn.Conv2d(c_in, 2 * width, 1)
            self.c_out = 2 * width
        elif kind == "grouped":
            self.a = nn.Conv2d(c_in, g * width, 1)
            self.b = nn.Conv2d(g * width, g * width, 3, padding=1, groups=g)
            self.c_out = g * width
        elif kind == "depthwise":
            self.a = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
            self.bn = nn.BatchNorm2d(c_in)
            self.b = nn.Conv2d(c_in, width, 1)
            self.c_out = width
        elif kind == "gn":
            self.a, self.gn = nn.Conv2d(c_in, g * width, 3, padding=1), nn.GroupNorm(g, g * width)
            self.c_out = g * width
        elif kind == "ln":  # LayerNorm over channels: must pin, never be inexact
            self.a, self.ln = nn.Conv2d(c_in, width, 1), nn.LayerNorm(width)
            self.c_out = width
        elif kind == "attn":
            self.heads, self.dh = g, 4
            inner = self.heads * self.dh
            self.q, self.k, self.v = (nn.Linear(c_in, inner) for _ in range(3))
            self.o = nn.Linear(inner, c_in)
            self.c_out = c_in
        else:
            raise ValueError(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "residual":
            return x + self.b(F.relu(self.bn(self.a(x))))
        if k == "cat":
            return torch.cat([F.relu(self.a(x)), self.b(x), x], 1)
        if k == "split":
            a, b = torch.split(x, [self.cut, x.shape[1] - self.cut], 1)
            return torch.cat([self.a(a), b], 1)
        if k == "chunk":
            a, b = F.silu(self.a(x)).chunk(2, 1)
            return torch.cat([a, b, self.b(b)], 1)
        if k == "shuffle":
            y = F.relu(self.a(x))
            n, c, h, w = y.shape
            return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        if k == "grouped":
            return F.relu(self.b(F.relu(self.a(x))))
        if k == "depthwise":
            return self.b(F.relu(self.bn(self.a(x))))
        if k == "gn":
            return F.gelu(self.gn(self.a(x)))
        if k == "ln":
            return self.ln(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, kk, v = (
            p(t).view(n, h * w, self.heads, self.dh).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        a = F.scaled_dot_product_attention(q, kk, v).transpose(1, 2).reshape(n, h * w, -1)
        return (t + self.o(a)).transpose(1, 2).reshape(n, c, h, w)


class RandomNet(nn.Module):
    def __init__(self, blocks: list[tuple[str, int, int]], stem: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1)
        layers, c = [], stem
        for kind, width, g in blocks:
            layers.append(RandomBlock(kind, c, width, g))
            c = layers[-1].c_out
        self.blocks = nn.Sequential(*layers)
        self.fc1, self.fc2 = nn.Linear(c, 16), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(F.relu(self.stem(x)))
        return self.fc2(F.relu(self.fc1(y.mean((2, 3)))))


@st.composite
def nets(draw) -> tuple[RandomNet, list[tuple[str, int, int]]]:
    blocks = draw(
        st.lists(
            st.tuples(st.sampled_from(KINDS), st.sampled_from([4, 6, 8]), st.sampled_from([1, 2])),
            min_size=1,
            max_size=4,
        )
    )
    stem = draw(st.sampled_from([4, 8]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return randomize(RandomNet(blocks, stem).eval(), seed=draw(st.integers(0, 100))), blocks


RANDOM = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@RANDOM
@given(nets(), st.floats(0.1, 0.8), st.sampled_from(["local", "global"]))
def test_random_architectures_prune_exactly_and_keep_shapes(case, ratio, scope) -> None:
    net, blocks = case
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        shape = net(x).shape
    rep = assert_exact(net, x, ratio=ratio, scope=scope)  # exact vs the masked reference, no rule errors
    assert rep.removed_units > 0, blocks  # the MLP head's hidden layer is always prunable
    work = copy.deepcopy(net)
    res = prune(work, x, ratio=ratio, scope=scope)
    assert res.params_after < res.params_before
    assert work(x).shape == shape
    if scope == "local":
        assert work.fc1.out_features == 16 - min(round(ratio * 16), 14)
    if any(k == "ln" for k, _, _ in blocks):  # LayerNorm over channels pins them, with the reason
        assert any("normalised over channels" in r for p in rep.pinned for r in p["reasons"])


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(nets(), st.integers(0, 40))
def test_fault_mid_cut_leaves_the_model_bit_identical(monkeypatch, case, fail_at) -> None:
    net, _ = case
    x = torch.randn(1, 3, SIZE, SIZE)
    plan, _ = plan_prune(net, x, ratio=0.5)
    fail_at = fail_at % len(plan.removals)  # somewhere in the middle of slicing: some tensors already swapped
    before = {k: v.clone() for k, v in net.state_dict().items()}
    objects = dict(net.named_parameters())
    attrs = {n: dict(vars(m)) for n, m in net.named_modules()}
    calls = {"n": 0}
    real = cut_mod._cut

    def flaky(t, *rest):
        if calls["n"] == fail_at:
            raise RuntimeError("injected fault")
        calls["n"] += 1
        return real(t, *rest)

    with monkeypatch.context() as mp:
        mp.setattr(cut_mod, "_cut", flaky)
        with pytest.raises(ApplyError, match=r"slicing .*\(group \d+\).*injected fault.*restored"):
            apply(net, plan, x)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert all(p is objects[n] for n, p in net.named_parameters())
    plain = (int, float, str, bool, tuple)
    for n, m in net.named_modules():
        assert {k: v for k, v in vars(m).items() if isinstance(v, plain)} == {
            k: v for k, v in attrs[n].items() if isinstance(v, plain)
        }
    apply(net, plan, x)  # the same plan still applies cleanly afterwards
    assert net.fc1.out_features == 8


class Spectral(nn.Module):  # torch.fft has no propagation rule
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(3, 8, 1)
        self.b = nn.Conv1d(8, 8, 1)
        self.mid = nn.Conv1d(8, 12, 1)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.fft.rfft(self.a(x), dim=-1).abs()  # opaque op in module <model>
        return self.head(F.relu(self.mid(F.relu(self.b(y)))).mean(-1))


def test_unknown_op_is_pinned_and_reported_by_name() -> None:
    net = randomize(Spectral())
    x = torch.randn(2, 3, 10)
    rep = check(net, x, ratio=0.5)
    assert rep.ok and rep.rule_errors == []
    reasons = [r for p in rep.pinned for r in p["reasons"] if "fft_rfft" in r]
    assert reasons and all("no propagation rule" in r for r in reasons)
    pinned = {m for p in rep.pinned for m in p["members"]}
    assert "a.weight[0]" in pinned  # what flows into the unknown op keeps its width
    prune(net, x, ratio=0.5)
    assert (net.a.out_channels, net.b.in_channels) == (8, 8)
    assert (net.b.out_channels, net.mid.in_channels, net.mid.out_channels) == (4, 4, 6)
    assert net(x).shape == (2, 4)


@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_cut_equals_a_plain_gather_on_every_dim_combination(shape, data) -> None:
    """``_cut`` (row-blocked along dim 1) gives exactly what index_select along each dim gives."""
    t = torch.randn(*shape)
    dims = {}
    for d in data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)):
        if shape[d] > 1:
            dims[d] = sorted(data.draw(st.sets(st.integers(0, shape[d] - 1), max_size=shape[d] - 1)))
    want = t
    for d in sorted(dims):
        keep = [i for i in range(shape[d]) if i not in dims[d]]
        want = want.index_select(d, torch.tensor(keep, dtype=torch.long))
    kept = {d: cut_mod._kept(idx, shape[d]) for d, idx in dims.items()}
    assert torch.equal(cut_mod._cut(t, kept), want)
